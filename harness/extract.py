"""Images → features, through the feature store: only images it has not seen are decoded and embedded."""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from harness import liveness
from harness.backbones.base import Backbone, describe
from harness.data.images import BadImage, content_hash, read_bytes, region_key
from harness.engines.base import Engine, Job
from harness.errors import HarnessError
from harness.runtimes.calibration import Calibration
from harness.store import LEASE_SECONDS, FeatureStore

log = logging.getLogger(__name__)


@dataclass
class Features:
    emb: np.ndarray                 # (n, D) float32; rows of skipped images are zero
    valid: np.ndarray               # (n,) bool
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    extracted: int = 0              # images embedded in this call (the rest came from the store)
    seconds: float = 0.0            # wall time of the whole feature stage
    embed_seconds: float = 0.0      # wall time of decoding + embedding the new images
    wait_seconds: float = 0.0       # waiting for images another run was embedding (not in embed_seconds)
    compile_seconds: float = 0.0    # readying the network (OpenVINO conversion, Inductor compiling), not in embed_seconds
    fingerprint: str = ""
    hashes: list = field(default_factory=list)  # content hash per image (None if unreadable)
    engine: dict = field(default_factory=dict)  # what the engine reports (start-up seconds, nodes, workers)
    rate_images: int | None = None  # images behind images/s (an engine's start-up batch left out)
    stages: dict = field(default_factory=dict)       # this process's wall seconds per stage: they sum to `seconds`
    cpu_seconds: dict = field(default_factory=dict)  # read/decode/preprocess/embed summed over every process

    def metrics(self) -> dict[str, float]:
        """What a run logs about its feature stage; images/s excludes compiling and counts decoding."""
        out = {"feature_dim": self.emb.shape[1], "extract_seconds": self.seconds,
               "images_extracted": self.extracted, "skipped_images": len(self.skipped)}
        if self.extracted and self.embed_seconds > 0:
            rated = self.extracted if self.rate_images is None else self.rate_images
            out["images_per_second"] = rated / self.embed_seconds
        out.update(self.engine)
        if self.compile_seconds:
            out["compile_seconds"] = self.compile_seconds
        if self.wait_seconds:
            out["shared_wait_seconds"] = self.wait_seconds
        out.update({f"stage_seconds/{k}": v for k, v in self.stages.items()})
        out.update({f"cpu_seconds/{k}": v for k, v in self.cpu_seconds.items()})
        return out


class Stages:
    """Wall time split into named stages, back to back: `lap(name)` charges the time since the last lap."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.last = time.perf_counter()

    def lap(self, name: str) -> float:
        now = time.perf_counter()
        spent, self.last = now - self.last, now
        self.seconds[name] = self.seconds.get(name, 0.0) + spent
        return spent


NON_FINITE = "the network returned NaN or infinity for it"


def check_features(emb: np.ndarray, valid: np.ndarray, failed: dict[int, str], backbone: Backbone) -> None:
    """A feature stage that produced nothing usable stops here, saying what produced it (not, later,
    that k is larger than an empty catalog)."""
    weights = f"check backbone.weights={backbone.weights} ({backbone.arch}, runtime {backbone.runtime})"
    non_finite = sum(reason == NON_FINITE for reason in failed.values())
    if not valid.any() and non_finite:
        raise HarnessError(f"the network returned NaN or infinity for every image it embedded ({non_finite}): "
                           f"{weights}.")
    if valid.any() and not emb.any():  # skipped rows are zero too: no copy of a catalog's features
        raise HarnessError(f"the network returned all-zero features for every image ({int(valid.sum())}): {weights}.")


def region_keys(hashes: list, boxes: list | None) -> list:
    """Each row's key in the feature store: its content hash, with its box where `boxes` gives one."""
    if boxes is None:
        return list(hashes)
    return [region_key(h, box) if h else None for h, box in zip(hashes, boxes)]


def hash_files(paths: list[str]) -> tuple[list[str | None], dict[int, str]]:
    hashes, failed = [], {}
    for i, p in enumerate(paths):
        try:
            hashes.append(content_hash(read_bytes(p)))
        except BadImage as exc:
            hashes.append(None)
            failed[i] = str(exc)
    return hashes, failed


def extract(paths: list[str], backbone: Backbone, preprocess, store: FeatureStore,
            batch_size: int = 8, num_workers: int = 2, progress: bool = True, engine: Engine | None = None,
            calibration: dict | None = None, boxes: list | None = None) -> Features:
    """Features for `paths` from the store, embedding (with `engine`, default this process) what it lacks.
    `calibration` (size, seed): an int8 backbone not yet calibrated draws its sample from `paths`.
    `boxes`: per path a box to crop to, or None (`harness.data.catalog.boxes`); the features are then
    those of the regions, stored under the region's key."""
    if engine is None:
        from harness.engines.local import LocalEngine

        engine = LocalEngine(num_workers=num_workers)
    t0 = time.perf_counter()
    stages = Stages()
    contents, failed = hash_files(paths)
    hashes = region_keys(contents, boxes)
    stages.lap("hash")  # reading every file once, for its content hash
    if backbone.precision == "int8" and backbone.calibration is None:
        settings = calibration or {}  # whole photos, recorded by their content hash, checked when re-read
        backbone.calibrate(Calibration.choose(paths, contents, settings.get("size", 300), settings.get("seed", 0)),
                           preprocess)
    prepare_seconds = 0.0
    while True:
        fingerprint, description = describe({**backbone.fingerprint, "store_dtype": store.dtype.name},
                                             preprocess.fingerprint())
        cached = store.get(fingerprint, [h for h in hashes if h])
        todo: dict[str, int] = {}  # one embedding per distinct content
        for i, h in enumerate(hashes):
            if h and h not in cached and h not in todo:
                todo[h] = i
        before = backbone.fingerprint
        stages.lap("store")
        # Compile or convert the network only when there is something to embed; a network that does not
        # convert runs with another runtime, whose features are another fingerprint's: look again.
        prepare_seconds += backbone.prepare(batch_size) if todo else 0.0
        stages.lap("prepare")
        if backbone.fingerprint == before:
            break
    dim = store.dim(fingerprint) or backbone.dim  # from the store when known: the network may never be built
    stages.lap("prepare")
    store.register(fingerprint, description, dim)
    stages.lap("store")
    t_embed, waited, embedded, duplicates = time.perf_counter(), 0.0, 0, 0
    engine_embed = engine.driver_embed_seconds
    owner = f"{liveness.me()}:{uuid.uuid4().hex[:8]}"
    if todo:
        log.info("extracting %d images with %s (%s, %s); %d from the feature store", len(todo), backbone.arch,
                 backbone.runtime, backbone.precision, len(paths) - len(todo) - len(failed))
    with tqdm(total=len(todo), desc=f"extract {backbone.arch}", unit="img", disable=None if progress else True,
              mininterval=2) as bar:
        try:
            pending = list(todo.values())
            while pending:
                def claim(rows, lease=LEASE_SECONDS):
                    mine = store.claim(fingerprint, [hashes[i] for i in rows], owner, lease)
                    return {i for i in rows if hashes[i] in mine}

                job = Job(paths, pending, hashes, backbone, preprocess, batch_size, claim, boxes)
                stages.lap("store")
                for results in engine.batches(job):
                    stages.lap("batches")  # waiting for decoded batches (or for the cluster), embedding here
                    new, vecs = [], []
                    for i, digest, vec, reason in results:
                        if not reason and not np.isfinite(vec).all():
                            reason = NON_FINITE
                        if reason or digest != hashes[i]:
                            failed[i] = reason or "changed while extracting (embed it in a later run)"
                        elif digest in cached or digest in new:
                            duplicates += 1  # a batch that ran twice (a retried task): stored once
                        else:
                            new.append(digest)
                            vecs.append(vec)
                    if new:
                        vecs = np.stack(vecs)
                        store.put(fingerprint, new, vecs)
                        cached.update(zip(new, vecs.astype(store.dtype).astype(np.float32)))
                        embedded += len(new)
                    bar.update(len(results))
                    stages.lap("store")
                stages.lap("batches")
                # What other runs held: read it as it lands; claim it if its owner died or its lease ran out.
                t_wait = time.perf_counter()
                pending = [i for i in pending if hashes[i] not in cached and i not in failed]
                while pending:
                    arrived = store.get(fingerprint, [hashes[i] for i in pending])
                    cached.update(arrived)
                    bar.update(len(arrived))
                    pending = [i for i in pending if hashes[i] not in cached]
                    if not pending or store.claim(fingerprint, [hashes[i] for i in pending], owner):
                        break
                    time.sleep(0.5)
                waited += time.perf_counter() - t_wait
                stages.lap("shared_wait")
        finally:
            store.release(fingerprint, owner)
            stages.lap("store")
    startup = engine.metrics.get("engine_startup_seconds", 0.0)
    embed_seconds = time.perf_counter() - t_embed - waited - startup
    if duplicates:
        log.info("%d images came back twice (retried batches); each is stored once", duplicates)
    for i, reason in sorted(failed.items()):
        log.warning("skipped %s: %s", paths[i], reason)
    emb = np.zeros((len(paths), dim), dtype=np.float32)
    valid = np.zeros(len(paths), dtype=bool)
    for i, h in enumerate(hashes):
        if h in cached and i not in failed:
            emb[i], valid[i] = cached[h], True
    # A duplicate of a broken file is just as broken.
    bad_hashes = {hashes[i] for i in failed if hashes[i]}
    for i, h in enumerate(hashes):
        if h in bad_hashes and i not in failed:
            failed[i] = "duplicate of a skipped file"
    skipped = [(paths[i], failed[i]) for i in sorted(failed)]
    check_features(emb, valid, failed, backbone)
    stages.lap("assemble")
    # Embedding in this process happened while the engine's batches were awaited: split it out.
    embed_here = engine.driver_embed_seconds - engine_embed
    seconds = {k: v for k, v in stages.seconds.items() if v > 0}
    if embed_here and "batches" in seconds:
        seconds["embed"] = embed_here
        seconds["batches"] = max(0.0, seconds["batches"] - embed_here)
    return Features(emb, valid, skipped, extracted=embedded, seconds=time.perf_counter() - t0,
                    embed_seconds=embed_seconds, wait_seconds=waited, compile_seconds=prepare_seconds,
                    fingerprint=fingerprint, hashes=hashes, engine=engine.metrics,
                    rate_images=embedded - min(engine.startup_images, embedded),
                    stages=seconds, cpu_seconds=dict(engine.cpu_seconds))
