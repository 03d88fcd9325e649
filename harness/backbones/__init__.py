from harness.backbones.base import Backbone
from harness.backbones.efficientnet_lite import EfficientNetLite
from harness.backbones.open_clip import OpenCLIPBackbone
from harness.backbones.timm import TimmBackbone
from harness.backbones.torchvision import TorchvisionBackbone

__all__ = ["Backbone", "EfficientNetLite", "OpenCLIPBackbone", "TimmBackbone", "TorchvisionBackbone", "build_backbone"]


def build_backbone(cfg, **overrides) -> Backbone:
    """The configured backbone with its layer tap. `cfg` has `backbone` and `layer` (and optionally
    `extract.compile`): a run's config, or a served model's settings."""
    from harness.config import instantiate

    kwargs = {"layer": cfg["layer"]["name"], "pooling": cfg["layer"]["pooling"]}
    extract = cfg.get("extract") or {}
    if "compile" in extract:
        kwargs["compile"] = extract["compile"]
    if (cfg.get("paths") or {}).get("openvino"):
        kwargs["cache_dir"] = cfg["paths"]["openvino"]
    return instantiate(cfg["backbone"], **{**kwargs, **overrides})
