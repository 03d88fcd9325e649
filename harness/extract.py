"""Images → features, through the feature store: only images it has not seen are decoded and embedded."""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from harness import liveness
from harness.backbones.base import Backbone, describe
from harness.data.images import BadImage, content_hash, decode_image
from harness.store import FeatureStore

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
    compile_seconds: float = 0.0    # compiling the network first (extract.compile), not in embed_seconds
    fingerprint: str = ""
    hashes: list = field(default_factory=list)  # content hash per image (None if unreadable)

    def metrics(self) -> dict[str, float]:
        """What a run logs about its feature stage; images/s excludes compiling and counts decoding."""
        out = {"feature_dim": self.emb.shape[1], "extract_seconds": self.seconds,
               "images_extracted": self.extracted, "skipped_images": len(self.skipped)}
        if self.extracted:
            out["images_per_second"] = self.extracted / self.embed_seconds
        if self.compile_seconds:
            out["compile_seconds"] = self.compile_seconds
        if self.wait_seconds:
            out["shared_wait_seconds"] = self.wait_seconds
        return out


class _Decode(Dataset):
    """Worker-side: read, decode, preprocess → uint8 CHW tensor (or the reason it failed)."""

    def __init__(self, paths: list[str], preprocess):
        self.paths, self.preprocess = paths, preprocess

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            with open(self.paths[i], "rb") as fh:
                img = decode_image(fh.read())
            arr = np.asarray(self.preprocess(img), dtype=np.uint8)
            return i, torch.from_numpy(arr.copy()).permute(2, 0, 1), ""
        except BadImage as exc:
            return i, None, str(exc)
        except OSError as exc:
            return i, None, f"unreadable ({exc})"


def _collate(batch):
    return batch


def hash_files(paths: list[str]) -> tuple[list[str | None], dict[int, str]]:
    hashes, failed = [], {}
    for i, p in enumerate(paths):
        try:
            with open(p, "rb") as fh:
                hashes.append(content_hash(fh.read()))
        except OSError as exc:
            hashes.append(None)
            failed[i] = f"unreadable ({exc.strerror})"
    return hashes, failed


class _Claiming(Sampler):
    """Yields the images to embed block by block, claiming each block in the store first and skipping
    what another run holds: a DataLoader draws from it as it goes, so claims stay close to the work."""

    def __init__(self, order: list[int], hashes: list, store: FeatureStore, fingerprint: str, owner: str,
                 block: int):
        self.order, self.hashes, self.store, self.fingerprint, self.owner = order, hashes, store, fingerprint, owner
        self.block = block

    def __iter__(self):
        for start in range(0, len(self.order), self.block):
            part = self.order[start:start + self.block]
            mine = self.store.claim(self.fingerprint, [self.hashes[i] for i in part], self.owner)
            yield from (i for i in part if self.hashes[i] in mine)

    def __len__(self):
        return len(self.order)


def extract(paths: list[str], backbone: Backbone, preprocess, store: FeatureStore,
            batch_size: int = 32, num_workers: int = 2, progress: bool = True) -> Features:
    t0 = time.perf_counter()
    fingerprint, description = describe({**backbone.fingerprint, "store_dtype": store.dtype.name},
                                         preprocess.fingerprint())
    dim = store.dim(fingerprint) or backbone.dim  # from the store when known: the network may never be built
    store.register(fingerprint, description, dim)
    hashes, failed = hash_files(paths)
    cached = store.get(fingerprint, [h for h in hashes if h])
    todo: dict[str, int] = {}  # one embedding per distinct content
    for i, h in enumerate(hashes):
        if h and h not in cached and h not in todo:
            todo[h] = i
    compile_seconds = backbone.compile_network(batch_size) if todo and backbone.compile else 0.0
    t_embed, waited, embedded = time.perf_counter(), 0.0, 0
    owner = f"{liveness.me()}:{uuid.uuid4().hex[:8]}"
    if todo:
        log.info("extracting %d images with %s (%s); %d from the feature store",
                 len(todo), backbone.arch, backbone.precision, len(paths) - len(todo) - len(failed))
    with tqdm(total=len(todo), desc=f"extract {backbone.arch}", unit="img", disable=None if progress else True,
              mininterval=2) as bar:
        try:
            pending = list(todo.values())
            while pending:
                loader = DataLoader(_Decode(paths, preprocess), batch_size=batch_size, num_workers=num_workers,
                                    collate_fn=_collate,
                                    sampler=_Claiming(pending, hashes, store, fingerprint, owner, 8 * batch_size))
                for batch in loader:
                    good = [(i, t) for i, t, _ in batch if t is not None]
                    failed.update({i: reason for i, _, reason in batch if reason})
                    if good:
                        vecs = backbone.embed(torch.stack([t for _, t in good]))
                        new = [hashes[i] for i, _ in good]
                        store.put(fingerprint, new, vecs)
                        cached.update(zip(new, vecs.astype(store.dtype).astype(np.float32)))
                        embedded += len(good)
                    bar.update(len(batch))
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
        finally:
            store.release(fingerprint, owner)
    embed_seconds = time.perf_counter() - t_embed - waited
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
    return Features(emb, valid, skipped, extracted=embedded, seconds=time.perf_counter() - t0,
                    embed_seconds=embed_seconds, wait_seconds=waited, compile_seconds=compile_seconds,
                    fingerprint=fingerprint, hashes=hashes)
