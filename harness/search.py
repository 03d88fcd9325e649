"""Exact k-nearest-neighbour search for every Distance, chunked to bounded memory.

    index = build_index(ref_emb, metric)
    distances, indices = index.search(query_emb, k)   # (Q, k) each, nearest first

Ties are broken by catalog position, so results are deterministic.
"""
from __future__ import annotations

import numpy as np

from harness.metrics.distances import Distance

CHUNK_BYTES = 256 << 20  # distance block held at once


def top_k(distances: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise k smallest of a (Q, N) block, sorted by (distance, column)."""
    k = min(k, distances.shape[1])
    if k < distances.shape[1]:
        part = np.argpartition(distances, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(distances.shape[1]), distances.shape).copy()
    dist = np.take_along_axis(distances, part, axis=1)
    order = np.lexsort((part, dist), axis=1)
    return np.take_along_axis(dist, order, axis=1), np.take_along_axis(part, order, axis=1)


class ExactIndex:
    def __init__(self, ref_emb: np.ndarray, metric: Distance):
        self.metric = metric
        self.ref = metric.transform(ref_emb)

    def __len__(self) -> int:
        return len(self.ref)

    def search(self, query_emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        query = self.metric.transform(query_emb)
        step = max(1, CHUNK_BYTES // (4 * max(len(self.ref), 1)))
        out_d, out_i = [], []
        for start in range(0, len(query), step):
            d, i = top_k(self.metric.between(query[start:start + step], self.ref), k)
            out_d.append(d)
            out_i.append(i)
        if not out_d:
            return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
        return np.concatenate(out_d).astype(np.float32), np.concatenate(out_i).astype(np.int64)


def build_index(ref_emb: np.ndarray, metric: Distance, **params) -> ExactIndex:
    if params.get("index", "exact") != "exact":
        raise ValueError(f"search.index={params['index']!r}: only 'exact' is available")
    return ExactIndex(ref_emb, metric)
