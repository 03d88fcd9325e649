"""Evaluators turn one search result into flat metrics and, optionally, artifacts.

An evaluator is one small class: `evaluate(ctx) -> {name: value}`, and where it has something to keep,
`artifacts(ctx) -> {file name: DataFrame | matplotlib Figure | PIL image}`; the caller decides where
files go (tracking writes them for MLflow). Class attributes declare how deep a ranking it reads
(`depth`) and which of its metrics are lower-is-better (`lower_is_better`, name prefixes): the search
reads `depth`, and the sweep report finds each run's evaluator classes in its logged params
(`evaluator.<name>._target_`) and reads their `lower_is_better`, with no list of evaluators anywhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd


@dataclass
class EvalContext:
    items: pd.DataFrame        # the whole catalog; rankings and fold rows point at its rows
    levels: list[str]
    k: int
    query_rows: np.ndarray     # (Q,) catalog rows of the queries
    ranked_rows: np.ndarray    # (Q, depth) catalog rows, nearest first; -1 where a fold had fewer
    ranked_dist: np.ndarray    # (Q, depth)
    # Each fold: (its id, its queries as positions into query_rows, the catalog rows they searched).
    folds: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)
    store: Any = None          # optional per-image cache (the feature store) for costly descriptors
    text_prompts: list = field(default_factory=list)    # text queries (evaluators that need_text)
    text_rows: dict = field(default_factory=dict)       # fold id → (T, k) catalog rows nearest to each prompt
    # Shared by every context of one evaluation (pooled and per fold), dropped with it.
    cache: dict = field(default_factory=dict)
    # (Q,) the query's own row is among its fold's references (all-versus-all), never an answer
    in_catalog: np.ndarray | None = None

    def own(self, positions: np.ndarray) -> np.ndarray:
        """1 for each query (at `positions`) whose fold's catalog holds the query itself, else 0."""
        return np.zeros(len(positions), np.int64) if self.in_catalog is None else self.in_catalog[positions].astype(np.int64)

    @property
    def indices(self) -> np.ndarray:
        """(Q, k) catalog rows of the k nearest; -1 where fewer than k candidates existed."""
        return self.ranked_rows[:, : self.k]

    @property
    def distances(self) -> np.ndarray:
        return self.ranked_dist[:, : self.k]

    @property
    def key(self) -> tuple:
        """Identifies the context within its evaluation: the folds it pools."""
        return tuple(fold_id for fold_id, _, _ in self.folds)

    def cached(self, key, compute: Callable[[], Any]):
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]

    def labels(self, level: str, rows: np.ndarray) -> np.ndarray:
        values = self.items[level].to_numpy(dtype=object)[rows]
        return np.where(rows >= 0, values, None)  # -1: no candidate, never relevant

    def query_labels(self, level: str) -> np.ndarray:
        return self.items[level].to_numpy(dtype=object)[self.query_rows]

    def neighbour_labels(self, level: str) -> np.ndarray:
        return self.labels(level, self.indices)

    def codes(self, level: str) -> np.ndarray:
        """Integer label codes per catalog row (-1 for a missing label): rankings are millions of pairs."""
        return self.cached(("codes", level), lambda: pd.factorize(self.items[level])[0])

    def relevant(self, level: str, rows: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
        """(Q, n) bool: does catalog row rows[q, i] share query q's label? `positions` selects queries
        (rows then has one line per position)."""
        codes = self.codes(level)
        query_rows = self.query_rows if positions is None else self.query_rows[positions]
        query = codes[query_rows][:, None]
        return (codes[rows] == query) & (rows >= 0) & (query >= 0)

    def n_relevant(self, level: str) -> np.ndarray:
        """For each query, how many items of its fold's catalog share its label."""
        codes = self.codes(level)
        out = np.zeros(len(self.query_rows), dtype=np.int64)
        for _, positions, ref_rows in self.folds:
            ref_codes = codes[ref_rows]
            counts = np.bincount(ref_codes[ref_codes >= 0], minlength=codes.max(initial=-1) + 1)
            query_codes = codes[self.query_rows[positions]]
            out[positions] = np.where(query_codes >= 0, counts[query_codes] - self.own(positions), 0)
        return out


class Evaluator:
    depth: int | None = 0  # ranks read beyond the top k: 0 none, None the whole ranking, n at most n
    lower_is_better: tuple[str, ...] = ()  # metric-name prefixes where smaller is better
    needs_text = False     # asks text queries (text_queries): only for backbones with a text tower

    def text_queries(self, items: pd.DataFrame, levels: list[str]) -> list[str]:
        """Texts this evaluator wants searched in every fold (the results arrive as ctx.text_rows)."""
        return []

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        raise NotImplementedError

    def artifacts(self, ctx: EvalContext) -> dict[str, Any]:
        """Files worth keeping with the run: {name: DataFrame | Figure | PIL image}; none by default."""
        return {}
