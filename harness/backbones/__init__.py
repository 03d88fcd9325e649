from harness.backbones.base import Backbone
from harness.backbones.efficientnet_lite import EfficientNetLite
from harness.backbones.fused import Fused
from harness.backbones.open_clip import OpenCLIPBackbone
from harness.backbones.timm import TimmBackbone
from harness.backbones.torchvision import TorchvisionBackbone

__all__ = ["Backbone", "EfficientNetLite", "Fused", "OpenCLIPBackbone", "TimmBackbone", "TorchvisionBackbone", "build_backbone"]


def build_backbone(cfg, **overrides) -> Backbone:
    """The configured backbone (its layer comes by interpolation from the `layer` group) with its runtime.
    `cfg` has `backbone` and optionally `runtime` (default torch eager): a run's config, or a served
    model's settings."""
    from harness.config import instantiate

    kwargs = {}
    if cfg.get("runtime") is not None and "runtime" not in overrides:
        kwargs["runtime"] = instantiate(cfg["runtime"])
    return instantiate(cfg["backbone"], **{**kwargs, **overrides})
