"""One feature API for every backbone: `embed(images) -> (N, D) float32`, `.dim`, `.fingerprint`.

A family (torchvision, EfficientNet-Lite, timm, OpenCLIP) is one subclass that says how to make its
network (`skeleton`, `load_pretrained`) and, where torchvision's FX graph tap does not fit, how its
features are taken (`tap`) and what input it expects (`data_config`). Pooling, normalisation,
precision and the store fingerprint live here, so every family gets them the same way; what runs the
network is the `runtime` (harness.runtimes), handed the embedding module, never the backbone; local
weights files are read and checked by `harness.backbones.weights`. A family with a text tower also
implements `embed_text`.
"""
from __future__ import annotations

import functools
import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.fx.experimental.optimization import fuse
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from harness.backbones.weights import file_digest, match_state, read_state_dict
from harness.errors import HarnessError
from harness.runtimes.base import Embedder, Runtime
from harness.runtimes.calibration import Calibration
from harness.runtimes.torch_eager import TorchRuntime

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
    """`auto` never picks int8: its top-5 lists differ from fp32's far more than bf16's (README "int8")."""
    if precision not in ("auto", "bf16", "fp32", "int8"):
        raise HarnessError(f"backbone.precision must be auto, bf16, fp32 or int8, got {precision!r}.")
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
TTAS = ("none", "flip")  # test-time augmentation: none, or the mean with the mirror image's features


class Backbone:
    """Base class. `layers` maps backbone-neutral names (penultimate, logits, fc1) to graph nodes."""

    family = "base"
    weight_tags = ("imagenet",)  # backbone.weights values naming the family's published weights
    can_embed_text = False
    hub_weights = False          # published weights come from a model hub (downloaded on first use)
    prefix_tokens = 0            # class/register tokens before the patch tokens (token outputs)
    can_train = True             # train=metric can fine-tune it (`trainable`)

    def __init__(self, arch: str, weights: str = "imagenet", precision: str = "auto",
                 layer: str = "penultimate", pooling: str = "gap", layers: dict | None = None,
                 input_size: int | None = None, device: str | None = None, seed: int = 0,
                 runtime: Runtime | None = None, tta: str = "none"):
        self.arch, self.weights, self.seed = arch, str(weights), seed
        if tta not in TTAS:
            raise HarnessError(f"tta must be one of {', '.join(TTAS)}, got {tta!r}.")
        self.tta = tta
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
        self.runtime = (runtime or TorchRuntime()).resolve(self.device)
        if self.precision not in self.runtime.precisions:
            raise HarnessError(f"backbone.precision={self.precision} does not run on runtime={self.runtime.name} "
                               f"({', '.join(self.runtime.precisions)}); int8 needs runtime=openvino (or auto on a CPU "
                               "with openvino installed).")
        self.calibration: Calibration | None = None  # int8: the catalog sample it is quantized with
        self._calibration_key: str | None = None
        self._calibration_images = None

    def data_config(self) -> dict:
        """The input the network was trained on: input_size, mean, std, interpolation (a family whose
        models carry their own, timm and OpenCLIP, reads them from there)."""
        return {"input_size": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bilinear"}

    @functools.cached_property
    def embedder(self) -> Embedder:
        """The fp32 network up to the tapped layer, with normalisation and pooling: what a runtime runs.
        Built on first use: a sweep job whose features are all in the store never needs it (VGG16 takes
        seconds to build)."""
        with torch.inference_mode(False):  # tracing and conversion need ordinary tensors, whoever calls
            if self.weights == "random":
                torch.manual_seed(self.seed)  # random weights are reproducible, so their features can be cached
            network = self.tap(self.build().eval())
            return Embedder(network, self.mean, self.std,
                            functools.partial(pool, how=self.pooling, prefix_tokens=self.prefix_tokens),
                            flip=self.tta == "flip")

    def trainable(self) -> tuple[nn.Module, Embedder]:
        """(the whole network, an Embedder over its tapped layer that shares its parameters) for
        fine-tuning (harness.train): not fused, so BatchNorm trains; the network's state_dict is a
        weights file this backbone loads (`backbone.weights=PATH`)."""
        with torch.inference_mode(False):
            if self.weights == "random":
                torch.manual_seed(self.seed)
            model = self.build().train()
            network = self.tap(model, train=True)
        return model, Embedder(network, self.mean, self.std,
                               functools.partial(pool, how=self.pooling, prefix_tokens=self.prefix_tokens))

    def tap(self, model: nn.Module, train: bool = False) -> nn.Module:
        """The network cut at the configured layer, as a module from normalised images to that layer's
        output. This default traces the graph (torchvision's FX feature extraction) and, for inference
        (`train` false), folds BatchNorm into the convolutions; families with their own feature API
        override it."""
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
        if train:  # the parameters stay the network's own, so its state_dict is what trained
            return _Output(extractor, "features")
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
        model, state = self.skeleton(), read_state_dict(self.weights)
        match_state(model, state, self.weights, self.arch)
        model.load_state_dict(state)
        return model

    def check_weights(self) -> None:
        """A local weights file is read and matched against the architecture before a run starts, so a
        wrong file fails in one line before the feature store or the tracking run exist."""
        if self.weights in self.weight_tags and self.hub_weights:
            from harness.backbones.hub import use_hub

            if not use_hub():  # offline: build now, so a missing download fails before the run writes anything
                self.embedder  # (online it is built on first use: a job whose features are all stored never downloads)
            return
        if self.weights in ("random", *self.weight_tags):
            return
        with torch.device("meta"):
            model = self.skeleton()
        match_state(model, read_state_dict(self.weights, mmap=True), self.weights, self.arch)

    def prepare(self, batch_size: int) -> float:
        """Ready the runtime for batches of `batch_size` (smaller ones are padded, larger ones split, so a
        compiled network is built once): OpenVINO converts and compiles, Inductor compiles, eager torch
        waits for its first batch. Returns the seconds it took; a runtime that cannot run this network
        hands over to its fallback (the fingerprint then says so)."""
        if self.runtime.ready or not self.runtime.readies_early:
            return 0.0
        return self._ready(batch_size)

    def calibrate(self, calibration: Calibration, preprocess) -> None:
        """int8: quantize with this catalog sample, preprocessed by `preprocess` (read only if the
        quantized network is not cached). Its key joins the fingerprint, so features never mix."""
        self.calibration, self._calibration_key = calibration, calibration.key(preprocess.fingerprint())
        self._calibration_images = functools.partial(calibration.images, preprocess)

    def _ready(self, batch_size: int) -> float:
        if self.precision == "int8" and self.calibration is None:
            raise HarnessError("backbone.precision=int8 needs a calibration sample of the catalog "
                               "(extract draws it; Backbone.calibrate sets it).")
        key = {k: v for k, v in self.base_fingerprint.items() if k != "precision"}
        self.runtime = self.runtime.prepare(self.embedder, batch_size, self.precision, self.device, key,
                                            calibration=self._calibration_images)
        return self.runtime.seconds

    @property
    def weights_id(self) -> str:
        if self.weights in ("random", *self.weight_tags):
            return f"{self.weights}:{self.seed}" if self.weights == "random" else self.weights
        return f"file:{file_digest(str(Path(self.weights).expanduser()))}"

    @property
    def base_fingerprint(self) -> dict:
        out = {"family": self.family, "arch": self.arch, "weights": self._weights_id, "node": self.node,
               "pooling": self.pooling, "precision": self.precision, "input_size": self.input_size}
        if self.precision == "int8":
            out["calibration"] = self._calibration_key
        if self.tta != "none":  # (absent otherwise: features stored before tta existed keep their key)
            out["tta"] = self.tta
        return out

    @property
    def fingerprint(self) -> dict:
        """Everything that changes a feature vector, the runtime included (another runtime sums in another
        order: close features, not equal, so they are stored apart)."""
        return {**self.base_fingerprint, **self.runtime.fingerprint}

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
        if not self.runtime.ready:
            self._ready(len(images))
        return self.runtime(images)


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
