"""Evaluators turn one search result into flat metrics (and, optionally, artifact files)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass
class EvalContext:
    query: pd.DataFrame     # one row per query: path, item_id, label columns
    ref: pd.DataFrame       # the searched catalog; `indices` point at its rows
    indices: np.ndarray     # (Q, k) nearest first
    distances: np.ndarray   # (Q, k)
    levels: list[str]
    k: int

    def query_labels(self, level: str) -> np.ndarray:
        return self.query[level].to_numpy()

    def neighbour_labels(self, level: str) -> np.ndarray:
        labels = self.ref[level].to_numpy(dtype=object)[self.indices]
        return np.where(self.indices >= 0, labels, None)  # -1: fewer than k candidates


class Evaluator:
    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        raise NotImplementedError

    def write_artifacts(self, ctx: EvalContext, out_dir: Path) -> list[Path]:
        """Files worth keeping with the run (tables, plots); none by default."""
        return []
