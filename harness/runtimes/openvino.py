"""runtime=openvino: the CPU runtime for every backbone family (runtime=auto picks it on a CPU).

The whole embedding path (uint8 images → normalisation → the tapped network → pooling) is converted
once with `openvino.convert_model` for one fixed batch shape (the caller pads short batches), saved as
IR under the cache folder with a digest of each file, and compiled for `CPU`; a later run checks the
digests and a probe against torch, then reads the IR instead of converting again.

int8 (backbone.precision=int8): the network is quantized once by NNCF's post-training quantization on
the catalog's calibration sample (harness.runtimes.calibration) and cached under a key naming that
sample; convert_model leaves the batch dimension free, so one quantized IR serves every batch size.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from torch import nn

from harness.errors import HarnessError
from harness.runtimes.base import Runtime
from harness.runtimes.torch_eager import TorchRuntime

log = logging.getLogger(__name__)


def openvino_installed() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fashion-retrieval-harness" / "openvino"


PROBE_IMAGES = 2
# Lowest cosine between OpenVINO's and torch fp32's features on the probe: bf16 measured 0.996-0.99999
# (efficientnet_lite0 imagenet, resnet50/vgg16 random), fp32 1.0, int8 (its probe: calibration photos)
# min 0.89 over 64 products photos (lite0 imagenet, 300 to calibrate); altered weights gave 0.43.
PROBE_COSINE = {"bf16": 0.98, "fp32": 0.999, "int8": 0.8}


class UnusableNetwork(RuntimeError):
    """A network OpenVINO converted but whose output differs from torch's: never used."""


def _digest(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def probe_images(batch: int, input_size: int) -> torch.Tensor:
    """A fixed input, the same for every run: seeded noise (a network's output on it is its signature)."""
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.integers(0, 256, (batch, 3, input_size, input_size), dtype=np.uint8))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine; 0 where either row is zero or not finite (a broken runtime's output)."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (a * b).sum(1) / norms
    return np.where(np.isfinite(cos) & (norms > 0), cos, 0.0)


class OpenVINONetwork:
    """A compiled OpenVINO model for batches of exactly `batch` images; thread-safe calls.

    The IR is cached with a digest of each file, recorded when it is written and checked whenever it is
    read; a cached network that fails the check, fails to load, or answers a fixed probe input unlike
    torch is converted again once, with one line naming the file. A freshly converted network that still
    answers unlike torch is refused (`UnusableNetwork`). No compiled blob is cached: compiling the IR
    takes 0.07-0.14 s (lite0, resnet50, vgg16), and a blob is one more file that could be silently wrong.
    """

    def __init__(self, embedder: nn.Module, key: dict, batch: int, input_size: int, precision: str,
                 cache_dir: Path, calibration=None):
        import openvino as ov

        t0 = time.perf_counter()
        cache_dir.mkdir(parents=True, exist_ok=True)
        key = {**key, "openvino": ov.__version__, "torch": torch.__version__}
        if precision == "int8":  # one quantized network for every batch size (the IR's batch is free): quantizing costs seconds
            import nncf

            key.update(precision="int8", nncf=nncf.__version__)
        else:
            key["batch"] = batch
        self.calibration = calibration
        name = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        self.xml, self.manifest = cache_dir / f"{name}.xml", cache_dir / f"{name}.json"
        self.batch, self.precision, self.converted, self.rebuilt = batch, precision, False, False
        core = ov.Core()
        # LATENCY: one stream with every thread for one request at a time, which is how the harness calls it
        # (a batch, then the next). THROUGHPUT splits the cores into streams that only concurrent requests
        # fill: with one request it ran at half the speed (lite0 fp32 88 vs 177 img/s, batch 8, 2 cores).
        # As many threads as torch may use: a Ray worker given one CPU (OMP_NUM_THREADS=1) uses one.
        # No pinning: the cores are shared with decoding processes (and other Ray workers, which would
        # each pin to the first cores); pinned threads wait on a preempted one (make run's feature
        # stage: 27-29 s unpinned vs 32-34 s pinned, same run).
        # int8: the layers left unquantized run in fp32, so a quantized network answers alike on every CPU.
        config = {"PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                  "INFERENCE_NUM_THREADS": torch.get_num_threads(), "ENABLE_CPU_PINNING": False}
        probe = probe_images(batch, input_size)
        if precision == "int8":
            # Quantized ranges fit the catalog, not noise (noise scored 0.58 on a network that scores 0.98 on
            # photos): its probe is the first calibration photos.
            first = torch.from_numpy(calibration(limit=min(PROBE_IMAGES, batch)))
            probe[:len(first)] = first
        with torch.no_grad():
            expected = embedder.eval()(probe[:PROBE_IMAGES]).numpy()
        # One process at a time per network: a second one converting meanwhile would replace the files
        # under the first, and waiting saves converting the network twice.
        with FileLock(cache_dir / f"{name}.lock"):
            problem = self._check_cached(key)
            for attempt in range(2):
                if problem:
                    log.warning("cached OpenVINO network %s %s: converting it again", self.xml, problem)
                    self.rebuilt = True
                    for path in (self.xml, self.xml.with_suffix(".bin"), self.manifest):
                        path.unlink(missing_ok=True)
                fresh = not self.xml.exists()
                if fresh:
                    self._convert(ov, embedder, key, probe)
                    self.converted = True
                try:
                    self.compiled = core.compile_model(core.read_model(self.xml), "CPU", config)
                except Exception as exc:
                    if fresh:
                        raise
                    problem = f"does not load ({first_line(exc)})"
                    continue
                self.request = self.compiled.create_infer_request()
                self._lock = threading.Lock()
                worst = float(cosines(self(probe.numpy())[:PROBE_IMAGES], expected).min())
                if worst >= PROBE_COSINE[precision]:
                    break
                problem = f"answers a probe unlike torch (cosine {worst:.3f} < {PROBE_COSINE[precision]})"
                if fresh or attempt:
                    raise UnusableNetwork(f"OpenVINO's {key['arch']} {problem}; not using it")
        self.seconds = time.perf_counter() - t0

    def _check_cached(self, key: dict) -> str | None:
        """None if there is nothing cached, or the cached IR is what was written; else what is wrong."""
        if not self.xml.exists():
            return None
        try:
            recorded = json.loads(self.manifest.read_text())
            digests = recorded["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            return "has no readable digest record"
        for path in (self.xml, self.xml.with_suffix(".bin")):
            if not path.exists() or _digest(path) != digests.get(path.name):
                return f"does not match the digest recorded when it was written ({path.name})"
        if recorded.get("key") != key:
            return "was written for another network"
        return None

    def _convert(self, ov, embedder: nn.Module, key: dict, probe: torch.Tensor) -> None:
        int8 = key.get("precision") == "int8"
        with torch.no_grad(), warnings.catch_warnings():
            # convert_model traces with torch.jit, which torch announces as deprecated on every call
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            model = ov.convert_model(embedder.eval(), example_input=torch.zeros_like(probe))
        if int8:
            model = quantize(model, self.calibration())
        partial = self.xml.with_name(f"{self.xml.stem}.{os.getpid()}.xml")
        ov.save_model(model, partial, compress_to_fp16=False)  # fp32 weights, exactly torch's
        digests = {self.xml.name: _digest(partial), self.xml.with_suffix(".bin").name: _digest(partial.with_suffix(".bin"))}
        record = self.manifest.with_name(f"{self.manifest.stem}.{os.getpid()}.json")
        record.write_text(json.dumps({"key": key, "sha256": digests}, indent=1, sort_keys=True))
        partial.with_suffix(".bin").replace(self.xml.with_suffix(".bin"))
        record.replace(self.manifest)
        partial.replace(self.xml)  # the .xml last: a reader never finds it without its weights and digests

    def __call__(self, images: np.ndarray) -> np.ndarray:
        with self._lock:  # one infer request: the page serves several visitors at once
            out = self.request.infer([np.ascontiguousarray(images)])
            return np.array(out[self.compiled.output(0)], dtype=np.float32)


def quantize(model, images: np.ndarray):
    """NNCF's post-training quantization (its defaults: 8-bit weights per channel, activations per tensor,
    fast bias correction), statistics over every calibration image, fed one at a time."""
    import nncf

    nncf.set_log_level(logging.ERROR)
    t0 = time.perf_counter()
    dataset = nncf.Dataset([images[i:i + 1] for i in range(len(images))])
    quantized = nncf.quantize(model, dataset, subset_size=len(images))
    log.info("quantized to int8 on %d calibration images in %.1f s", len(images), time.perf_counter() - t0)
    return quantized


def first_line(exc: Exception) -> str:
    """An exception's message in one line (OpenVINO's open with the C++ file that raised them)."""
    lines = [line for line in str(exc).splitlines() if line.strip() and not line.startswith("Exception from ")]
    return lines[0].strip()[:200] if lines else type(exc).__name__


class OpenVINORuntime(Runtime):
    """`cache_dir`: where converted networks are kept (default: the user's cache). A network that does not
    convert, or answers unlike torch, runs with torch eager instead, with one warning."""
    name = "openvino"
    fingerprint = {"runtime": "openvino"}
    readies_early = True
    precisions = ("bf16", "fp32", "int8")

    def __init__(self, cache_dir: str | None = None):
        super().__init__()
        self.cache_dir = cache_dir
        self.network: OpenVINONetwork | None = None

    def settings(self):
        return ("cache_dir",)

    def resolve(self, device):
        if device.type != "cpu":
            raise HarnessError(f"runtime=openvino runs on the CPU; this backbone is on {device}.")
        if not openvino_installed():
            raise HarnessError("runtime=openvino: the openvino package is not installed (pip install openvino).")
        return self

    def prepare(self, embedder, batch_size, precision, device, key, calibration=None):
        cache = Path(self.cache_dir) if self.cache_dir else default_cache()
        try:
            self.network = OpenVINONetwork(embedder, key, batch_size, int(key["input_size"]), precision, cache,
                                           calibration)
        except HarnessError:
            raise
        except Exception as exc:
            if precision == "int8":  # torch has no int8 path here: no fallback, never fp32 features named int8
                raise HarnessError(f"runtime=openvino: {key.get('arch')} could not be quantized to int8 "
                                   f"({first_line(exc)}); use backbone.precision=bf16 or fp32.") from None
            return self._fallback(exc, embedder, batch_size, precision, device, key)
        self.fixed_batch, self.seconds, self.ready = batch_size, self.network.seconds, True
        return self

    @staticmethod
    def _fallback(exc, embedder, batch_size, precision, device, key):
        if isinstance(exc, UnusableNetwork):  # converted, but answers unlike torch: never its features
            log.warning("runtime=openvino: %s; running %s with torch instead", exc, key.get("arch"))
        else:  # a network OpenVINO cannot convert runs with torch, and says so
            log.warning("runtime=openvino: %s does not convert (%s); running it with torch instead",
                        key.get("arch"), first_line(exc))
        return TorchRuntime().prepare(embedder, batch_size, precision, device, key)

    def run(self, images, n):
        return self.network(images.numpy())[:n]
