"""Any timm model (`timm.create_model` name, with its pretrained tag or an hf-hub id), tapped with
timm's own feature API; input size, mean, std and interpolation from the model's pretrained config."""
from __future__ import annotations

import torch
from torch import nn

from harness.backbones.base import Backbone
from harness.backbones.hub import offline_message, use_hub
from harness.errors import HarnessError

LAYERS = ("penultimate", "logits", "features")


class _TimmTap(nn.Module):
    """penultimate: the pooled pre-logits embedding (`forward_head(pre_logits=True)`); logits; features:
    the last feature map or token sequence (`forward_features`), pooled by layer.pooling."""

    def __init__(self, model: nn.Module, layer: str):
        super().__init__()
        self.model, self.layer = model, layer

    def forward(self, x):
        if self.layer == "logits":
            return self.model(x)
        features = self.model.forward_features(x)
        return self.model.forward_head(features, pre_logits=True) if self.layer == "penultimate" else features


class TimmBackbone(Backbone):
    family = "timm"
    weight_tags = ("pretrained",)
    hub_weights = True

    def __init__(self, arch: str, weights: str = "pretrained", **kwargs):
        self.arch = arch
        if arch.startswith("hf-hub:"):
            use_hub()
        try:
            with torch.device("meta"):  # the architecture only, to read its data config: no memory, no download
                self._meta = self._create(pretrained=False)
        except HarnessError:
            raise
        except Exception as exc:  # an hf-hub model's configuration comes from the hub too
            raise HarnessError(offline_message(f"timm model {arch}", exc, f"python -c \"import timm; "
                                               f"timm.create_model('{arch}', pretrained=True)\"")) from None
        self.prefix_tokens = int(getattr(self._meta, "num_prefix_tokens", 0) or 0)
        super().__init__(arch, weights=weights, **kwargs)
        if self.node not in LAYERS:
            raise HarnessError(f"Unknown layer {self.layer!r} for timm backbone {arch}: use one of {', '.join(LAYERS)} "
                               f"(layer.name=...).")

    def _create(self, pretrained: bool) -> nn.Module:
        import timm

        try:
            return timm.create_model(self.arch, pretrained=pretrained)
        except RuntimeError as exc:
            if "Unknown model" in str(exc) or "Invalid pretrained tag" in str(exc):
                raise HarnessError(f"Unknown timm model {self.arch!r} (timm.list_models() lists them).") from None
            raise

    def data_config(self):
        from timm.data import resolve_model_data_config

        config = resolve_model_data_config(self._meta)
        return {"input_size": config["input_size"][-1], "mean": tuple(config["mean"]), "std": tuple(config["std"]),
                "interpolation": config["interpolation"]}

    def skeleton(self):
        return self._create(pretrained=False)

    def load_pretrained(self):
        use_hub()
        try:
            return self._create(pretrained=True)
        except HarnessError:
            raise
        except Exception as exc:  # offline: huggingface_hub or urllib errors, whichever the weights' host is
            raise HarnessError(offline_message(
                f"timm model {self.arch}", exc, f"python -c \"import timm; timm.create_model('{self.arch}', pretrained=True)\"")) from None

    def tap(self, model, train: bool = False):
        return _TimmTap(model, self.node)

    @property
    def weights_id(self) -> str:
        return f"pretrained:{self.arch}" if self.weights == "pretrained" else super().weights_id
