"""A fused backbone: several backbones, each with its own input size, pooling and flip averaging, as one.

Each member is an ordinary backbone config (`members`: a list of them, each with its `_target_`). The
catalog is decoded and preprocessed once, at the largest member's input size; inside the embedding
module each member resizes that batch to its own size (bilinear, antialiased), embeds it, and its
vector is L2-normalised, so no member outweighs another by its scale; the parts are concatenated.
It is one embedding module, so every runtime converts it whole, the feature store keeps its vectors
under one fingerprint (naming every member's), and a served model embeds uploads the same way.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from harness.backbones.base import Backbone
from harness.errors import HarnessError


class _Member(nn.Module):
    def __init__(self, embedder: nn.Module, size: int):
        super().__init__()
        self.embedder, self.size = embedder, size

    def forward(self, images):  # float (N, 3, S, S) in [0, 255], S the largest member's size
        if images.shape[-1] != self.size or images.shape[-2] != self.size:
            images = F.interpolate(images, size=(self.size, self.size), mode="bilinear", antialias=True,
                                   align_corners=False)
        return F.normalize(self.embedder(images), dim=1)


class FusedEmbedder(nn.Module):
    """uint8 (N, 3, S, S) → float32 (N, ΣD): the members' unit vectors side by side."""

    def __init__(self, members: list[_Member], flip: bool = False):
        super().__init__()
        self.members, self.flip = nn.ModuleList(members), flip

    def _embed(self, x):
        return torch.cat([m(x) for m in self.members], dim=1)

    def forward(self, images):
        x = images.float()
        return (self._embed(x) + self._embed(x.flip(3))) / 2 if self.flip else self._embed(x)


class Fused(Backbone):
    family = "fused"
    weight_tags = ("members",)  # each member names its own weights
    can_train = False

    def __init__(self, members, arch: str = "fused", weights: str = "members", **kwargs):
        from harness.config import instantiate

        specs = list(members or [])
        if len(specs) < 2:
            raise HarnessError(f"backbone=fused needs at least two members (backbone.members), got {len(specs)}.")
        self.members = []
        for n, spec in enumerate(specs):
            if not hasattr(spec, "get") or not spec.get("_target_"):
                raise HarnessError(f"backbone.members[{n}] must be a backbone config with its _target_.")
            # backbone.weights=random: every member random (tests, speed checks), each from the run's seed
            member = instantiate(spec, **({"weights": "random", "seed": kwargs.get("seed", 0)} if weights == "random" else {}))
            if not isinstance(member, Backbone) or isinstance(member, Fused):
                raise HarnessError(f"backbone.members[{n}] ({spec.get('_target_')}) is not a single backbone.")
            self.members.append(member)
        super().__init__(arch, weights=weights, **kwargs)

    def data_config(self) -> dict:
        # Members normalise their own inputs; the shared preprocessing makes the largest one's size.
        return {**super().data_config(), "input_size": max(m.input_size for m in self.members)}

    @functools.cached_property
    def embedder(self) -> nn.Module:
        with torch.inference_mode(False):
            return FusedEmbedder([_Member(m.embedder, m.input_size) for m in self.members],
                                 flip=self.tta == "flip").eval()

    def check_weights(self) -> None:
        for member in self.members:
            member.check_weights()

    @property
    def base_fingerprint(self) -> dict:
        members = [{k: v for k, v in m.base_fingerprint.items() if k != "precision"} for m in self.members]
        return {**super().base_fingerprint, "members": members}
