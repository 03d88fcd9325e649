"""The runtime contract: an embedding module in, readied for a batch shape, uint8 batches in, vectors out.

A runtime is built from `conf/runtime/<name>.yaml` (`_target_`) and knows nothing of backbones: the
backbone hands it its `Embedder` (the tapped network with its normalisation and pooling) when there is
something to embed. A new runtime is one `Runtime` subclass in its own module + one YAML.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from harness.errors import HarnessError

log = logging.getLogger(__name__)


class Embedder(nn.Module):
    """uint8 (N, 3, H, W) → float32 (N, D): normalisation, the tapped fp32 network, pooling. `flip`:
    the mean of the pooled features of each image and its mirror image (test-time augmentation), inside
    the module, so every runtime converts it with the network and catalog and uploads get it alike."""

    def __init__(self, network: nn.Module, mean, std, pool, flip: bool = False):
        super().__init__()
        self.network, self.pool, self.flip = network, pool, flip
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, images):
        x = (images.float() / 255.0 - self.mean) / self.std
        if not self.flip:
            return self.pool(self.network(x).float())
        n = x.shape[0]  # one pass over the batch and its mirror: twice the batch, not two calls
        both = self.pool(self.network(torch.cat([x, x.flip(3)])).float())
        return (both[:n] + both[n:]) / 2


class Runtime:
    """`name`: what logs and messages call it. `fingerprint`: what it adds to the feature store's key
    (a runtime that sums in another order gives close, not equal, features: stored apart).
    `readies_early`: extraction readies it before timing (it compiles); others ready on first use.
    `precisions`: the backbone.precision values it runs."""
    name = "base"
    fingerprint: dict = {}
    readies_early = False
    precisions: tuple[str, ...] = ("bf16", "fp32")

    def __init__(self):
        self.ready = False
        self.fixed_batch = 0  # > 0 once ready: the one batch size a compiled network takes
        self.seconds = 0.0    # readying took this long

    def resolve(self, device: torch.device) -> "Runtime":
        """The runtime that will run on `device` (itself, or one line why it cannot)."""
        return self

    def prepare(self, embedder: Embedder, batch_size: int, precision: str, device: torch.device,
                key: dict, calibration=None) -> "Runtime":
        """Ready `embedder` for batches of `batch_size`; returns the runtime that runs it (itself, or a
        fallback when it cannot). `key` names the network (for caches); `calibration` (int8 only): a
        callable returning the uint8 images to quantize with."""
        raise NotImplementedError

    def run(self, images: torch.Tensor, n: int) -> np.ndarray:
        """A batch of uint8 images (padded to the fixed batch) → float32 vectors of its first `n` rows."""
        raise NotImplementedError

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        if not self.ready:
            raise HarnessError(f"runtime {self.name} used before it was prepared")
        n = len(images)
        if n < self.fixed_batch:  # smaller batches are padded, larger ones split: built once
            images = torch.cat([images, images.new_zeros(self.fixed_batch - n, *images.shape[1:])])
        elif n > self.fixed_batch > 0:
            return np.concatenate([self(chunk) for chunk in images.split(self.fixed_batch)])
        return self.run(images, n)

    def __getstate__(self):
        """What crosses to another process (a Ray worker) is the runtime's settings, never its network."""
        state = {k: v for k, v in self.__dict__.items() if k in self.settings()}
        return state

    def __setstate__(self, state):
        self.__init__(**state)

    def settings(self) -> tuple[str, ...]:
        """The constructor's keyword arguments (what `__getstate__` keeps)."""
        return ()

    def __repr__(self) -> str:
        return self.name
