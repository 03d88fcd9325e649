"""Query expansion: a query searched again as the weighted sum of itself and its nearest catalog vectors.

Alpha query expansion (Radenović, Tolias and Chum, "Fine-tuning CNN image retrieval with no human
annotation", 2018): with q and the n nearest catalog vectors r_i L2-normalised, the new query is
q + Σ max(cos(q, r_i), 0)^alpha · r_i, rescaled to the query's own length (so a metric that is not
scale-free, euclidean, sees a vector of the query's size). The evaluation and the served searcher
both call `expand` between a first search of depth n and the search that is answered.
"""
from __future__ import annotations

import numpy as np

from harness.errors import HarnessError


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1)


class AlphaExpansion:
    name = "alpha"

    def __init__(self, n: int = 5, alpha: float = 3.0):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise HarnessError(f"query_expansion.n must be a whole number >= 1, got {n!r}.")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not np.isfinite(alpha) or alpha < 0:
            raise HarnessError(f"query_expansion.alpha must be a number >= 0, got {alpha!r}.")
        self.n, self.alpha = n, float(alpha)

    def expand(self, query_emb: np.ndarray, ref_emb: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """query_emb (Q, D); idx (Q, >= n): each query's nearest rows of ref_emb, nearest first, -1 where
        none (a query's own row, in an all-versus-all search, is left out by the caller) → (Q, D)."""
        query = np.asarray(query_emb, dtype=np.float64)
        idx = np.asarray(idx)[:, : self.n]
        q = _unit(query)
        r = _unit(np.asarray(ref_emb, dtype=np.float64)[np.maximum(idx, 0)])        # (Q, n, D)
        weight = np.clip(np.einsum("qd,qnd->qn", q, r), 0, None) ** self.alpha
        weight[idx < 0] = 0
        new = q + np.einsum("qn,qnd->qd", weight, r)
        return (_unit(new) * np.linalg.norm(query, axis=1, keepdims=True)).astype(np.float32)
