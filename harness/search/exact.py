"""search=exact: every catalog vector compared with each query (BLAS / SIMD kernels)."""
from __future__ import annotations

import numpy as np

from harness.search.base import Index, top_k


class ExactIndex(Index):
    """Every catalog vector compared with each query."""
    name = "exact"

    def __init__(self, ref_emb, metric):
        super().__init__(ref_emb, metric)

    def prepare(self, ref_emb):
        return self.metric.prepare_ref(ref_emb)

    def _search(self, query, k):
        step = max(1, self.chunk_bytes // (4 * len(self.ref)))
        out_d, out_i = [], []
        for s in range(0, len(query), step):
            q = query[s:s + step]
            scores, idx = top_k(self.metric.scores(q, self.ref), k)
            out_d.append(self.metric.to_distance(scores, q))
            out_i.append(idx)
        return np.concatenate(out_d), np.concatenate(out_i)
