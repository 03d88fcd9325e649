"""Which run to serve: the champion policy (pure), apart from logging and from the registry."""
from __future__ import annotations

import math

from harness.errors import HarnessError


def select_champion(children: list[dict], metric: str) -> dict:
    """Best child by `metric` (its cross-validated mean when present); ties → the faster extractor.
    `children`: dicts with `params` and `metrics` (what `sweeps.sweep_children` returns)."""
    speed = {}
    for c in children:
        arch = c["params"].get("backbone.arch")
        speed[arch] = max(speed.get(arch, 0.0), c["metrics"].get("images_per_second", 0.0))

    def score(c):
        m = c["metrics"]
        return m.get(f"{metric}_mean", m.get(metric))

    scored = [c for c in children if score(c) is not None and math.isfinite(score(c))]
    if not scored:
        raise HarnessError(f"No run of the sweep logged a finite {metric}.")

    def key(c):
        return (score(c), speed.get(c["params"].get("backbone.arch"), 0.0))
    return max(scored, key=key)
