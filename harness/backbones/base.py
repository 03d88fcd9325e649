"""One feature API for every backbone: `embed(images) -> (N, D) float32`, `.dim`, `.fingerprint`.

A family (torchvision, EfficientNet-Lite, timm, OpenCLIP) is one subclass that says how to make its
network (`skeleton`, `load_pretrained`) and, where torchvision's FX graph tap does not fit, how its
features are taken (`tap`) and what input it expects (`data_config`). Pooling, normalisation,
precision, memory layout, compilation and the store fingerprint live here, so every family gets
them the same way. A family with a text tower also implements `embed_text`.
"""
from __future__ import annotations

import functools
import logging
import hashlib
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.fx.experimental.optimization import fuse
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from harness.backbones.runtime import (Embedder, OpenVINONetwork, UnusableNetwork, first_line, default_cache,
                                      openvino_installed)
from harness.errors import HarnessError

log = logging.getLogger(__name__)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@functools.lru_cache(maxsize=None)
def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in ("auto", "bf16", "fp32"):
        raise HarnessError(f"backbone.precision must be auto, bf16 or fp32, got {precision!r}.")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def pool(x: torch.Tensor, how: str, prefix_tokens: int = 0, gem_p: float = 3.0) -> torch.Tensor:
    """A layer's output → (N, D): vectors pass through; convolutional maps (N, C, H, W) by gap, max or
    gem; token sequences (N, L, C) by cls (the first token) or mean (of the patch tokens, after the
    `prefix_tokens` class/register tokens). Anything else is an error, never a silent flatten."""
    if x.ndim == 2:
        return x
    if x.ndim == 4:
        if how == "gap":
            return x.mean(dim=(2, 3))
        if how == "max":
            return x.amax(dim=(2, 3))
        if how == "gem":
            return x.clamp(min=1e-6).pow(gem_p).mean(dim=(2, 3)).pow(1.0 / gem_p)
        raise HarnessError(f"layer.pooling={how!r} does not pool a convolutional map (N, C, H, W): use gap, max or gem.")
    if x.ndim == 3:
        if how == "cls":
            return x[:, 0]
        if how == "mean":
            return x[:, prefix_tokens:].mean(dim=1)
        raise HarnessError(f"layer.pooling={how!r} does not pool tokens (N, L, C): use cls or mean.")
    raise HarnessError(f"the tapped layer gives {x.ndim}-D outputs {tuple(x.shape)}; choose a layer with vectors, "
                       "maps or tokens.")


POOLINGS = ("gap", "max", "gem", "cls", "mean")


def file_digest(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


class Backbone:
    """Base class. `layers` maps backbone-neutral names (penultimate, logits, fc1) to graph nodes."""

    family = "base"
    weight_tags = ("imagenet",)  # backbone.weights values naming the family's published weights
    can_embed_text = False
    hub_weights = False          # published weights come from a model hub (downloaded on first use)
    prefix_tokens = 0            # class/register tokens before the patch tokens (token outputs)

    def __init__(self, arch: str, weights: str = "imagenet", precision: str = "auto",
                 layer: str = "penultimate", pooling: str = "gap", layers: dict | None = None,
                 input_size: int | None = None, device: str | None = None, seed: int = 0, compile: bool = False,
                 runtime: str = "auto", cache_dir: str | None = None):
        self.arch, self.weights, self.seed = arch, str(weights), seed
        self.layer_aliases = dict(layers or {})
        self.layer, self.pooling = layer, pooling
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.precision = resolve_precision(precision, self.device)
        if pooling not in POOLINGS:
            raise HarnessError(f"layer.pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}.")
        if self.weights not in ("random", *self.weight_tags) and not Path(self.weights).expanduser().is_file():
            raise HarnessError(f"backbone.weights={self.weights!r}: not {', '.join(self.weight_tags)}, random or an "
                               "existing weights file.")
        self.node = self.layer_aliases.get(layer, layer)
        config = self.data_config()
        self.input_size = int(input_size or config["input_size"])
        self.mean, self.std, self.interpolation = config["mean"], config["std"], config["interpolation"]
        self._mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        self.compile = bool(compile)  # extract.compile: TorchInductor before a long extraction (`prepare`)
        self.runtime = self._resolve_runtime(runtime)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache()
        self.fixed_batch = 0  # > 0 once prepared: the one batch size the compiled network takes
        self.openvino: OpenVINONetwork | None = None

    def _resolve_runtime(self, runtime: str) -> str:
        """torch | openvino; auto: OpenVINO on a CPU when it is installed (the network must still convert:
        `prepare` falls back to torch with a log line if it does not)."""
        if runtime not in ("auto", "torch", "openvino"):
            raise HarnessError(f"backbone.runtime must be auto, torch or openvino, got {runtime!r}.")
        if runtime == "openvino":
            if self.compile:
                raise HarnessError("extract.compile=true compiles for backbone.runtime=torch; OpenVINO compiles itself.")
            if self.device.type != "cpu":
                raise HarnessError(f"backbone.runtime=openvino runs on the CPU; this backbone is on {self.device}.")
            if not openvino_installed():
                raise HarnessError("backbone.runtime=openvino: the openvino package is not installed (pip install openvino).")
            return "openvino"
        if runtime == "auto" and not self.compile and self.device.type == "cpu" and openvino_installed():
            return "openvino"
        return "torch"

    def data_config(self) -> dict:
        """The input the network was trained on: input_size, mean, std, interpolation (a family whose
        models carry their own, timm and OpenCLIP, reads them from there)."""
        return {"input_size": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bilinear"}

    @functools.cached_property
    def model(self) -> nn.Module:
        """The network up to the tapped layer, built on first use: a sweep job whose features are all in
        the store never needs it (VGG16 takes seconds to build)."""
        if self.weights == "random":
            torch.manual_seed(self.seed)  # random weights are reproducible, so their features can be cached
        model = self.tap(self.build().eval()).to(self.device, memory_format=torch.channels_last)
        if self.precision == "bf16":
            # Autocast casts every conv/linear weight to bf16 again for each batch (its cast cache lasts
            # one autocast region). Casting them once gives the same bf16 values, so the same features,
            # without the copy. Other layers stay as autocast runs them.
            # nn.MultiheadAttention (OpenCLIP) keeps its input projection as a bare parameter: cast it whole,
            # or its fp32 in-projection meets a bf16 out-projection and every call pays for copies.
            for module in model.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear, nn.MultiheadAttention)):
                    module.to(torch.bfloat16)
        return model

    def tap(self, model: nn.Module) -> nn.Module:
        """The network cut at the configured layer, as a module from normalised images to that layer's
        output. This default traces the graph (torchvision's FX feature extraction) and folds BatchNorm
        into the convolutions; families with their own feature API override it."""
        with warnings.catch_warnings():
            # torchvision notes that train-mode graphs may differ; we only ever trace eval mode.
            warnings.filterwarnings("ignore", message="NOTE: The nodes obtained by tracing")
            nodes = get_graph_node_names(model)[1]
            if not any(n == self.node or n.startswith(self.node + ".") for n in nodes):
                aliases = ", ".join(self.layer_aliases) or "none"
                raise HarnessError(
                    f"Unknown layer {self.layer!r} for backbone {self.arch}. Names: {aliases}; "
                    f"or a graph node such as {', '.join(nodes[-8:])}."
                )
            extractor = create_feature_extractor(model, return_nodes={self.node: "features"})
        # Inference only: fold BatchNorm into the preceding convolutions (fewer passes over memory).
        return _Output(fuse(extractor.eval(), inplace=True), "features")

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """Texts → float32 (N, D) in the image embedding's space, for backbones with a text tower."""
        raise HarnessError(f"backbone {self.arch} ({self.family}) has no text tower: it cannot search by words "
                           "(an OpenCLIP backbone can).")

    # -- the network and its weights: a family overrides `skeleton` and `load_pretrained` ----------
    def skeleton(self) -> nn.Module:
        """The architecture with fresh (random) weights."""
        raise NotImplementedError

    def load_pretrained(self) -> nn.Module:
        """The network with the family's published weights (`backbone.weights=<one of weight_tags>`)."""
        raise NotImplementedError

    def build(self) -> nn.Module:
        if self.weights == "random":
            return self.skeleton()
        if self.weights in self.weight_tags:
            return self.load_pretrained()
        model, state = self.skeleton(), self._read_weights()
        self._match_state(model, state)
        model.load_state_dict(state)
        return model

    def _read_weights(self, mmap: bool = False) -> dict:
        path = Path(self.weights).expanduser()
        try:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError:
                if not mmap:
                    raise
                state = torch.load(path, map_location="cpu", weights_only=True)  # the legacy format cannot be mapped
        except Exception:  # truncated, corrupt, pickled objects, not a torch file at all
            with open(path, "rb") as fh:
                zipped = fh.read(2) == b"PK"  # torch.save writes a zip archive
            reason = "a truncated or corrupt archive" if zipped else "not a PyTorch checkpoint file"
            raise HarnessError(f"backbone.weights={path}: not a readable PyTorch state dict ({reason}).") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise HarnessError(f"backbone.weights={path}: not a state dict (a mapping of parameter names to tensors).")
        return state

    def _match_state(self, model: nn.Module, state: dict) -> None:
        expected = model.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
        if missing or unexpected or wrong:
            example = (missing or unexpected or wrong)[0]
            raise HarnessError(f"backbone.weights={self.weights}: not weights for {self.arch} "
                               f"({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} wrongly "
                               f"shaped keys, e.g. {example!r}).")

    def check_weights(self) -> None:
        """A local weights file is read and matched against the architecture before a run starts, so a
        wrong file fails in one line before the feature store or the tracking run exist."""
        if self.weights in self.weight_tags and self.hub_weights:
            from harness.backbones.hub import use_hub

            if not use_hub():  # offline: build now, so a missing download fails before the run writes anything
                self.model     # (online it is built on first use: a job whose features are all stored never downloads)
            return
        if self.weights in ("random", *self.weight_tags):
            return
        with torch.device("meta"):
            model = self.skeleton()
        self._match_state(model, self._read_weights(mmap=True))

    def prepare(self, batch_size: int) -> float:
        """Ready the network for batches of `batch_size` (smaller ones are padded, larger ones split, so it
        is built once): OpenVINO converts and compiles it, extract.compile compiles it with TorchInductor, eager torch
        needs nothing. Returns the seconds it took."""
        if self.fixed_batch:
            return 0.0
        if self.runtime == "openvino":
            return self._prepare_openvino(batch_size)
        return self.compile_network(batch_size) if self.compile else 0.0

    def _prepare_openvino(self, batch_size: int) -> float:
        key = {k: v for k, v in self.fingerprint.items() if k not in ("precision", "runtime")}
        try:
            with torch.inference_mode(False):  # tracing needs ordinary tensors, whoever calls
                if self.weights == "random":
                    torch.manual_seed(self.seed)
                network = self.tap(self.build().eval())  # fp32: the precision is OpenVINO's inference hint
                embedder = Embedder(network, self.mean, self.std,
                                    functools.partial(pool, how=self.pooling, prefix_tokens=self.prefix_tokens))
                self.openvino = OpenVINONetwork(embedder, key, batch_size, self.input_size, self.precision,
                                                self.cache_dir)
        except HarnessError:
            raise
        except UnusableNetwork as exc:  # converted, but answers unlike torch: never its features
            log.warning("backbone.runtime=openvino: %s; running %s with torch instead", exc, self.arch)
            self.runtime = "torch"
            return self.prepare(batch_size)
        except Exception as exc:  # a network OpenVINO cannot convert runs with torch, and says so
            log.warning("backbone.runtime=openvino: %s does not convert (%s); running it with torch instead",
                        self.arch, first_line(exc))
            self.runtime = "torch"
            return self.prepare(batch_size)
        self.fixed_batch = batch_size
        return self.openvino.seconds

    def compile_network(self, batch_size: int) -> float:
        """Compile the network with TorchInductor for batches of `batch_size`. Returns the seconds the
        compilation took.

        Inductor's freezing folds BatchNorm and pre-packs the weights for oneDNN. Compiling takes seconds
        (the most for the first network with a cold Inductor cache), so it pays for catalogs of thousands
        of images, not for a few hundred (`python -m harness.bench extract --compile` measures it).
        """
        import torch._inductor.config

        # Inductor's own switch; only compiled graphs read it, and only ours are compiled.
        torch._inductor.config.freezing = True
        model = self.model
        self.__dict__["model"] = torch.compile(model, dynamic=False)
        self.fixed_batch = batch_size
        t0 = time.perf_counter()
        try:
            self.embed(torch.zeros(1, 3, self.input_size, self.input_size, dtype=torch.uint8))
        except Exception as exc:  # a missing C++ compiler surfaces here, on the first call
            self.__dict__["model"], self.fixed_batch = model, 0
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise HarnessError(f"extract.compile=true: TorchInductor could not compile {self.arch} "
                               f"({first}). It needs a C++ compiler (g++); extract.compile=false runs "
                               f"the network as it is.") from None
        return time.perf_counter() - t0

    @property
    def weights_id(self) -> str:
        if self.weights in ("random", *self.weight_tags):
            return f"{self.weights}:{self.seed}" if self.weights == "random" else self.weights
        return f"file:{file_digest(str(Path(self.weights).expanduser()))}"

    @property
    def fingerprint(self) -> dict:
        # A compiled network, or another runtime, sums in another order: close to the eager torch features,
        # not equal, so they are stored apart. (torch eager has no runtime key: its features were stored
        # before there were runtimes.)
        compiled = {"compiled": True} if self.compile else {}
        runtime = {"runtime": self.runtime} if self.runtime != "torch" else {}
        return {"family": self.family, "arch": self.arch, "weights": self._weights_id, "node": self.node,
                "pooling": self.pooling, "precision": self.precision, "input_size": self.input_size, **compiled,
                **runtime}

    @functools.cached_property
    def _weights_id(self) -> str:
        return self.weights_id  # a local file is hashed once

    @functools.cached_property
    def dim(self) -> int:
        probe = torch.zeros(1, 3, self.input_size, self.input_size, dtype=torch.uint8)
        return int(self.embed(probe).shape[1])

    @torch.inference_mode()
    def embed(self, images: torch.Tensor) -> np.ndarray:
        """uint8 (N, 3, H, W) RGB images → float32 (N, D) features."""
        if self.runtime == "openvino" and self.openvino is None:
            self.prepare(len(images))
        n = len(images)
        if n < self.fixed_batch:
            images = torch.cat([images, images.new_zeros(self.fixed_batch - n, *images.shape[1:])])
        elif n > self.fixed_batch > 0:
            return np.concatenate([self.embed(chunk) for chunk in images.split(self.fixed_batch)])
        if self.openvino is not None:
            return self.openvino(images.numpy())[:n]
        x = images.to(self.device, non_blocking=True).float().div_(255.0)
        x = ((x - self._mean) / self._std).contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = self.model(x)
        return pool(out[:n].float(), self.pooling, self.prefix_tokens).cpu().numpy().astype(np.float32, copy=False)


class _Output(nn.Module):
    """One entry of a module's dict output (FX feature extractors return {name: tensor})."""

    def __init__(self, module: nn.Module, key: str):
        super().__init__()
        self.module, self.key = module, key

    def forward(self, x):
        return self.module(x)[self.key]


def describe(fingerprint: dict, preprocess: dict) -> tuple[str, str]:
    """(short id, canonical JSON) of everything that changes a feature vector."""
    blob = json.dumps({**fingerprint, **preprocess}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16], blob
