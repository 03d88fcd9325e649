"""What every extraction engine shares: the job it is given, decoding a file, embedding a decoded batch."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from harness.backbones.base import Backbone
from harness.data.images import BadImage, Box, content_hash, decode_image, read_bytes, region_key

# Rows are claimed in the store (and, on Ray, shipped per call) eight batches at a time: claims stay
# close to the work, and Ray's per-call overhead stays small (one batch per call: 0.76x the local engine).
CLAIM_BATCHES = 8


DECODE_STAGES = ("read", "decode", "preprocess")


def load(path: str, preprocess, box: Box | None = None
         ) -> tuple[torch.Tensor | None, str, str | None, tuple[float, float, float]]:
    """Read, decode, [crop to `box`,] preprocess one file → (uint8 CHW tensor or None, why not, the
    region's key (its content hash without a box), seconds of each of DECODE_STAGES). The same robust
    decoder wherever it runs: a broken file comes back as a reason, never as an exception."""
    t0 = time.perf_counter()
    t1 = t2 = None
    try:
        data = read_bytes(path)
        digest = region_key(content_hash(data), box)
        t1 = time.perf_counter()
        img = decode_image(data, preprocess.decode_scale, box)
        t2 = time.perf_counter()
        arr = np.asarray(preprocess(img), dtype=np.uint8)
        tensor = torch.from_numpy(arr.copy()).permute(2, 0, 1)
        t3 = time.perf_counter()
        return tensor, "", digest, (t1 - t0, t2 - t1, t3 - t2)
    except (BadImage, OSError) as exc:
        reason = str(exc) if isinstance(exc, BadImage) else f"unreadable ({exc})"
        now = time.perf_counter()
        t1, t2 = t1 or now, t2 or now
        return None, reason, None, (t1 - t0, t2 - t1, now - t2)


@dataclass
class Decoded:
    """A decoded batch: per row (row, why not, content hash), the good images as one uint8 tensor, and
    the seconds each of DECODE_STAGES took for the batch (in the process that decoded it)."""
    rows: list[tuple[int, str, str | None]]
    images: torch.Tensor | None  # (good rows, 3, H, W), in row order; None when no row decoded
    seconds: dict = field(default_factory=dict)


def decode_batch(loaded: list) -> Decoded:
    """Collate `(row, tensor or None, why not, hash, stage seconds)` where they were decoded: one tensor
    leaves a decoding process per batch instead of one per image (per-image transfers cost make run's
    feature stage 4 s of 29)."""
    good = [t for _, t, _, _, _ in loaded if t is not None]
    seconds = {stage: float(sum(s[n] for *_, s in loaded)) for n, stage in enumerate(DECODE_STAGES)}
    return Decoded([(i, reason, digest) for i, _, reason, digest, _ in loaded],
                   torch.stack(good) if good else None, seconds)


def embed_batch(backbone: Backbone, batch: Decoded) -> list[Result]:
    """(row, hash, vector or None, why not) per row of a decoded batch."""
    vecs = iter(backbone.embed(batch.images) if batch.images is not None else [])
    return [(i, digest, None if reason else next(vecs), reason) for i, reason, digest in batch.rows]


@dataclass
class Job:
    """What an engine embeds: `pending` rows of `paths` (each cropped to its box where `boxes` is given),
    through `claim` (which rows this run may embed: another run on the same store may hold some)."""
    paths: list[str]
    pending: list[int]
    hashes: list
    backbone: Backbone
    preprocess: object
    batch_size: int
    claim: Callable[..., set[int]]
    boxes: list | None = None

    def box(self, row: int) -> Box | None:
        return self.boxes[row] if self.boxes is not None else None

    @property
    def claim_block(self) -> int:
        """Rows claimed at once, and (Ray) rows per call: CLAIM_BATCHES batches."""
        return CLAIM_BATCHES * self.batch_size


Result = tuple[int, "str | None", "np.ndarray | None", str]  # (row, content hash, vector, why not)


class Engine:
    """Where images are decoded and embedded. `extract` drives it and is the only writer of the feature
    store; an engine yields results batch by batch. A new engine is one subclass in its own module and
    one `conf/engine/<name>.yaml` (`_target_`, `_partial_: true`, its settings): the pipeline calls the
    partial with `config`, the run's resolved backbone/preprocess config (`worker_config`), which an
    engine that embeds elsewhere rebuilds the backbone from."""

    def __init__(self, config: dict | None = None):
        self.config = config
        self.metrics: dict[str, float] = {}  # logged with the run (start-up, nodes, workers, ...)
        self.startup_images = 0  # images embedded during start-up, left out of images/s
        # Where the time went: summed over every process that decoded or embedded (so on several
        # processes more than the wall time), and how much of the driver's own wall time was embedding.
        self.cpu_seconds: dict[str, float] = {}
        self.driver_embed_seconds = 0.0

    def count(self, seconds: dict) -> None:
        for stage, value in seconds.items():
            self.cpu_seconds[stage] = self.cpu_seconds.get(stage, 0.0) + float(value)

    def batches(self, job: Job) -> Iterator[list[Result]]:
        raise NotImplementedError


def worker_config(cfg, **backbone) -> dict:
    """The part of a run's config that builds its backbone and preprocessing, resolved to plain values:
    what an engine sends to workers elsewhere; `backbone`: settings that replace the config's (a
    downloaded or fine-tuned weights file)."""
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(OmegaConf.masked_copy(cfg, ["backbone", "layer", "tta", "preprocess", "runtime",
                                                                "extract", "paths"]), resolve=True)
    config["backbone"].update(backbone)
    return config
