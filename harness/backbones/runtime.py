"""OpenVINO: the CPU runtime for every backbone family.

The whole embedding path (uint8 images → normalisation → the tapped network → pooling) is converted
once with `openvino.convert_model` for one fixed batch shape (the caller pads short batches), saved as
IR under the cache folder and compiled for `CPU` with OpenVINO's own compiled-model cache (`CACHE_DIR`)
beside it, so a later run reads the IR and the compiled blob instead of converting again.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from torch import nn


def openvino_installed() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fashion-retrieval-harness" / "openvino"


class Embedder(nn.Module):
    """uint8 (N, 3, H, W) → float32 (N, D): what Backbone.embed computes, as one module to convert."""

    def __init__(self, network: nn.Module, mean, std, pool):
        super().__init__()
        self.network, self.pool = network, pool
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, images):
        return self.pool(self.network((images.float() / 255.0 - self.mean) / self.std).float())


class OpenVINONetwork:
    """A compiled OpenVINO model for batches of exactly `batch` images; thread-safe calls."""

    def __init__(self, embedder: nn.Module, key: dict, batch: int, input_size: int, precision: str,
                 cache_dir: Path):
        import openvino as ov

        t0 = time.perf_counter()
        cache_dir.mkdir(parents=True, exist_ok=True)
        key = {**key, "batch": batch, "openvino": ov.__version__, "torch": torch.__version__}
        name = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        xml = cache_dir / f"{name}.xml"
        core = ov.Core()
        core.set_property({"CACHE_DIR": str(cache_dir / "compiled")})
        # LATENCY: one stream with every thread for one request at a time, which is how the harness calls it
        # (a batch, then the next). THROUGHPUT splits the cores into streams that only concurrent requests
        # fill: with one request it ran at half the speed (lite0 fp32 88 vs 177 img/s, batch 8, 2 cores).
        # As many threads as torch may use: a Ray worker given one CPU (OMP_NUM_THREADS=1) uses one.
        # No pinning: the cores are shared with decoding processes (and other Ray workers, which would
        # each pin to the first cores); pinned threads wait on a preempted one (make run's feature
        # stage: 27-29 s unpinned vs 32-34 s pinned, same run).
        config = {"PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                  "INFERENCE_NUM_THREADS": torch.get_num_threads(), "ENABLE_CPU_PINNING": False}
        # One process at a time per network: OpenVINO writes its compiled blob in place, and a second
        # process compiling meanwhile failed ("cannot set permissions: No such file" on the blob), which
        # sent that run to torch with other features. Waiting also saves converting the network twice.
        with FileLock(cache_dir / f"{name}.lock"):
            self.converted = not xml.exists()
            if self.converted:
                example = torch.zeros(batch, 3, input_size, input_size, dtype=torch.uint8)
                with torch.no_grad(), warnings.catch_warnings():
                    # convert_model traces with torch.jit, which torch announces as deprecated on every call
                    warnings.simplefilter("ignore", FutureWarning)
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)
                    model = ov.convert_model(embedder.eval(), example_input=example)
                partial = cache_dir / f"{name}.{os.getpid()}.xml"
                ov.save_model(model, partial, compress_to_fp16=False)  # fp32 weights, exactly torch's
                partial.with_suffix(".bin").replace(xml.with_suffix(".bin"))
                partial.replace(xml)  # the .xml last: a reader never finds it without its weights
                (cache_dir / f"{name}.json").write_text(json.dumps(key, indent=1, sort_keys=True))
            # Every run compiles the IR on disk, the first one too: the same graph, the same numbers.
            model = core.read_model(xml)
            self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.batch, self.seconds = batch, time.perf_counter() - t0
        self._lock = threading.Lock()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        with self._lock:  # one infer request: the page serves several visitors at once
            out = self.request.infer([np.ascontiguousarray(images)])
            return np.array(out[self.compiled.output(0)], dtype=np.float32)
