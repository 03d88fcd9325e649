"""runtime=inductor: the eager network compiled by TorchInductor for one batch shape.

Inductor's freezing folds BatchNorm and pre-packs the weights for oneDNN. Compiling takes seconds (the
most for the first network with a cold Inductor cache), so it pays for catalogs of thousands of images,
not for a few hundred (`python experiments/bench.py extract --compile` measures it).
"""
from __future__ import annotations

import time

import torch

from harness.errors import HarnessError
from harness.runtimes.torch_eager import TorchRuntime


class InductorRuntime(TorchRuntime):
    name = "inductor"
    fingerprint = {"compiled": True}
    readies_early = True

    def prepare(self, embedder, batch_size, precision, device, key, calibration=None):
        super().prepare(embedder, batch_size, precision, device, key)
        eager = self.network
        # freezing for this compilation only (options patch Inductor's config while it compiles)
        self.network = torch.compile(eager, dynamic=False, options={"freezing": True})
        self.fixed_batch = batch_size
        t0 = time.perf_counter()
        size = int(key["input_size"])
        try:
            with torch.inference_mode():
                self(torch.zeros(1, 3, size, size, dtype=torch.uint8))
        except Exception as exc:  # a missing C++ compiler surfaces here, on the first call
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise HarnessError(f"runtime=inductor: TorchInductor could not compile {key.get('arch')} ({first}). "
                               "It needs a C++ compiler (g++); runtime=torch runs the network as it is.") from None
        self.seconds = time.perf_counter() - t0
        return self

