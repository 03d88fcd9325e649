"""search=exact: every catalog vector compared with each query (BLAS / SIMD kernels)."""
from __future__ import annotations

from harness.search.base import Index


class ExactIndex(Index):
    """Every catalog vector compared with each query."""
    name = "exact"

    def __init__(self, ref_emb, metric):
        super().__init__(ref_emb, metric)

    def _search(self, query, k):
        return self._exact(query, k)
