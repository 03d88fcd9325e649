from harness.backbones.base import Backbone
from harness.backbones.efficientnet_lite import EfficientNetLite
from harness.backbones.torchvision import TorchvisionBackbone

__all__ = ["Backbone", "EfficientNetLite", "TorchvisionBackbone"]
