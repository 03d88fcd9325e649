"""search=hnsw: FAISS's hierarchical navigable small-world graph."""
from __future__ import annotations

import faiss
import numpy as np

from harness.search.base import Index


class HNSWIndex(Index):
    """Hierarchical navigable small-world graph."""
    name = "hnsw"
    faiss_metrics = (faiss.METRIC_L2, faiss.METRIC_INNER_PRODUCT)

    def __init__(self, ref_emb, metric, hnsw_m: int = 32, ef_construction: int = 80, ef_search: int = 64):
        super().__init__(ref_emb, metric)
        self.faiss = faiss.IndexHNSWFlat(self.dim, hnsw_m, metric.faiss_metric)
        self.faiss.hnsw.efConstruction = ef_construction
        self.faiss.add(metric.transform(self._centre(np.asarray(ref_emb, dtype=np.float32))))
        self.faiss.hnsw.efSearch = ef_search

    def _search(self, query, k):
        raw, idx = self.faiss.search(query, k)
        return np.where(idx >= 0, self.metric.from_faiss(raw), np.inf), idx  # FAISS pads with -1 and a sentinel
