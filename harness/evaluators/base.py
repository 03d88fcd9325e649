"""Evaluators turn one search result into flat metrics (and, optionally, artifact files)."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd


@dataclass
class EvalContext:
    items: pd.DataFrame        # the whole catalog; `indices` and fold rows point at its rows
    query_rows: np.ndarray     # (Q,) catalog rows of the queries
    indices: np.ndarray        # (Q, k) nearest first; -1 where fewer than k candidates existed
    distances: np.ndarray      # (Q, k)
    levels: list[str]
    k: int
    # Each fold's queries (positions into query_rows) and the catalog rows they searched.
    folds: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    # rank(query_rows, ref_rows, depth) → (distances, catalog rows), each (Q, depth): the same search, deeper.
    rank: Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]] | None = None
    store: object | None = None  # the feature store, for per-image caches

    @property
    def query(self) -> pd.DataFrame:
        return self.items.iloc[self.query_rows].reset_index(drop=True)

    def labels(self, level: str, rows: np.ndarray) -> np.ndarray:
        values = self.items[level].to_numpy(dtype=object)[rows]
        return np.where(rows >= 0, values, None)  # -1: no candidate, never relevant

    def query_labels(self, level: str) -> np.ndarray:
        return self.items[level].to_numpy(dtype=object)[self.query_rows]

    def neighbour_labels(self, level: str) -> np.ndarray:
        return self.labels(level, self.indices)

    @functools.lru_cache(maxsize=8)
    def _codes(self, level: str) -> np.ndarray:
        return pd.factorize(self.items[level])[0]  # -1 for a missing label

    def relevant(self, level: str, rows: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
        """(Q, n) bool: does catalog row rows[q, i] share query q's label? `positions` selects queries
        (rows then has one line per position). Integer codes, not objects: rankings are millions of pairs."""
        codes = self._codes(level)
        query_rows = self.query_rows if positions is None else self.query_rows[positions]
        query = codes[query_rows][:, None]
        return (codes[rows] == query) & (rows >= 0) & (query >= 0)

    @functools.lru_cache(maxsize=4)
    def ranking(self, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, catalog rows), each (Q, depth), nearest first; each query within its own fold."""
        rows = np.full((len(self.query_rows), depth), -1, dtype=np.int64)
        dist = np.full((len(self.query_rows), depth), np.inf, dtype=np.float32)
        for positions, ref_rows in self.folds:
            d, i = self.rank(self.query_rows[positions], ref_rows, depth)
            rows[positions, : i.shape[1]], dist[positions, : d.shape[1]] = i, d
        return dist, rows

    def n_relevant(self, level: str) -> np.ndarray:
        """For each query, how many items of its fold's catalog share its label."""
        codes = self._codes(level)
        out = np.zeros(len(self.query_rows), dtype=np.int64)
        for positions, ref_rows in self.folds:
            ref_codes = codes[ref_rows]
            counts = np.bincount(ref_codes[ref_codes >= 0], minlength=codes.max(initial=-1) + 1)
            query_codes = codes[self.query_rows[positions]]
            out[positions] = np.where(query_codes >= 0, counts[query_codes], 0)
        return out

    def __hash__(self):  # for lru_cache: one context is one evaluation
        return id(self)


class Evaluator:
    depth = 0  # how deep a ranking evaluate() reads beyond the top k; run() searches that deep once

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        raise NotImplementedError

    def write_artifacts(self, ctx: EvalContext, out_dir: Path) -> list[Path]:
        """Files worth keeping with the run (tables, plots); none by default."""
        return []
