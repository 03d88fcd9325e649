"""Weights files: reading a local state dict safely, matching it to an architecture, naming it by content."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from harness.errors import HarnessError


def file_digest(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def read_state_dict(path, mmap: bool = False) -> dict:
    """A local weights file as a state dict (tensors only: never unpickled objects), or one line why not."""
    path = Path(path).expanduser()
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


def match_state(model: nn.Module, state: dict, weights: str, arch: str) -> None:
    """`state` has exactly `model`'s keys and shapes, or one line saying how it differs."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        example = (missing or unexpected or wrong)[0]
        raise HarnessError(f"backbone.weights={weights}: not weights for {arch} "
                           f"({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} wrongly "
                           f"shaped keys, e.g. {example!r}).")
