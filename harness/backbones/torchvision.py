"""Any torchvision classification model; ImageNet weights come through torchvision's weights API."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torchvision import models

from harness.backbones.base import Backbone
from harness.errors import HarnessError


class TorchvisionBackbone(Backbone):
    family = "torchvision"

    def __init__(self, arch: str, imagenet_weights: str = "DEFAULT", **kwargs):
        self.imagenet_weights = imagenet_weights
        if arch not in models.list_models(module=models):
            raise HarnessError(f"Unknown torchvision model {arch!r}.")
        super().__init__(arch, **kwargs)

    def skeleton(self):
        return models.get_model(self.arch, weights=None)

    def load_pretrained(self):
        weights = models.get_model_weights(self.arch)[self.imagenet_weights]
        target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
        try:
            return models.get_model(self.arch, weights=weights)
        except Exception as exc:
            if target.exists():
                raise
            raise HarnessError(
                f"Cannot load ImageNet weights for {self.arch}: torchvision expects the file "
                f"{target.name} in {target.parent} ($TORCH_HOME/hub/checkpoints) and could not "
                f"download it from {weights.url} ({type(exc).__name__}). Copy that file there, or "
                f"pass a local state dict with backbone.weights=PATH, or use backbone.weights=random "
                f"for speed tests."
            ) from None

    @property
    def weights_id(self) -> str:
        return f"imagenet:{self.imagenet_weights}" if self.weights == "imagenet" else super().weights_id
