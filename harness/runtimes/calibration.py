"""The catalog images an int8 network is calibrated on (backbone.precision=int8).

Post-training quantization fixes each activation's int8 range from a sample of real inputs, so the
sample is part of what the network computes: it is drawn once from the catalog (`extract.calibration`:
size and seed), recorded as (path, content hash) pairs, and its digest joins the feature fingerprint and
the quantized network's cache key. Whoever quantizes the network again (a Ray worker, the served model
on another machine) reads the recorded files and checks each against its hash first: a catalog that
changed since would quantize another network under the same name.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from harness.errors import HarnessError


@dataclass(frozen=True)
class Calibration:
    items: tuple[tuple[str, str], ...]  # (path, content hash), in the order they are fed to the quantizer
    size: int
    seed: int

    @classmethod
    def choose(cls, paths: list[str], hashes: list, size: int, seed: int) -> "Calibration":
        """`size` distinct contents among the readable `paths`, drawn with `seed`. Drawn from the contents
        sorted by hash, so the sample does not depend on the catalog's row order."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise HarnessError(f"extract.calibration.size must be a whole number >= 1, got {size!r}.")
        first: dict[str, str] = {}
        for path, digest in zip(paths, hashes):
            if digest and digest not in first:
                first[digest] = path
        if not first:
            raise HarnessError("backbone.precision=int8: no readable catalog image to calibrate on.")
        contents = sorted(first)
        chosen = np.random.default_rng(seed).permutation(len(contents))[:size]
        return cls(tuple((first[contents[i]], contents[i]) for i in chosen), size, int(seed))

    @property
    def digest(self) -> str:
        return hashlib.sha1("\n".join(h for _, h in self.items).encode()).hexdigest()[:16]

    def key(self, preprocess_fingerprint: dict) -> str:
        """What names the quantized network: the sample and how its images were preprocessed."""
        blob = json.dumps({"sample": self.digest, "preprocess": preprocess_fingerprint}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    def images(self, preprocess, limit: int | None = None) -> np.ndarray:
        """The sample (its first `limit` images) as the network sees it: uint8 (N, 3, H, W), every file
        checked against its hash."""
        from harness.engines.base import load

        out = []
        for path, digest in self.items[:limit]:
            tensor, reason, found, _ = load(path, preprocess)
            if tensor is None or found != digest:
                why = reason or "its content changed since it was chosen"
                raise HarnessError(f"int8 calibration image {path}: {why}; the recorded sample cannot be "
                                   "rebuilt (run again to draw a new one from the catalog as it is).")
            out.append(tensor.numpy())
        return np.stack(out)

    def record(self) -> dict:
        return {"size": self.size, "seed": self.seed, "digest": self.digest,
                "items": [[path, digest] for path, digest in self.items]}

    @classmethod
    def from_record(cls, record: dict) -> "Calibration":
        calibration = cls(tuple((str(p), str(h)) for p, h in record["items"]), int(record["size"]), int(record["seed"]))
        if record.get("digest") not in (None, calibration.digest):
            raise HarnessError("the recorded int8 calibration sample does not match its digest.")
        return calibration
