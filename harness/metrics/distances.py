"""The six distances of the study, one small class each. Smaller is always closer.

A subclass overrides `transform` (applied once per vector: normalising, centring) and/or
`between` (the kernel on transformed vectors). `pairwise` is the pure function tests compare
against scipy.spatial.distance; the search index calls the same two methods.
"""
from __future__ import annotations

import faiss
import numpy as np


class Distance:
    name = "base"

    def transform(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=np.float32)

    def between(self, query: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """(Q, D) × (N, D) transformed vectors → (Q, N) distances."""
        raise NotImplementedError

    def pairwise(self, query_emb: np.ndarray, ref_emb: np.ndarray) -> np.ndarray:
        return self.between(self.transform(query_emb), self.transform(ref_emb))

    def __repr__(self) -> str:
        return self.name


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.array(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1, norms)


class Euclidean(Distance):
    name = "euclidean"

    def between(self, query, ref):
        # BLAS: |q|² + |r|² − 2 q·r, the expansion scikit-learn uses too.
        sq = (query * query).sum(1)[:, None] + (ref * ref).sum(1)[None, :] - 2.0 * (query @ ref.T)
        return np.sqrt(np.maximum(sq, 0, out=sq), out=sq)


class Cosine(Distance):
    name = "cosine"

    def transform(self, x):
        return _unit(x)

    def between(self, query, ref):
        return 1.0 - query @ ref.T


class Correlation(Cosine):
    """1 − Pearson correlation: the cosine distance of mean-centred vectors."""
    name = "correlation"

    def transform(self, x):
        x = np.asarray(x, dtype=np.float32)
        return _unit(x - x.mean(axis=1, keepdims=True))


class _FaissKernel(Distance):
    """Metrics without a BLAS form use FAISS's exact, multi-threaded SIMD kernels."""
    faiss_metric: int
    metric_arg = 0.0

    def between(self, query, ref):
        d = faiss.pairwise_distances(query, ref, self.faiss_metric, self.metric_arg)
        return self.finish(d)

    def finish(self, d: np.ndarray) -> np.ndarray:
        """FAISS distance → ours (Lp reports Σ|x|^p without the root)."""
        return d


class Manhattan(_FaissKernel):
    name = "manhattan"
    faiss_metric = faiss.METRIC_L1


class Chebyshev(_FaissKernel):
    name = "chebyshev"
    faiss_metric = faiss.METRIC_Linf


class Minkowski(_FaissKernel):
    name = "minkowski"
    faiss_metric = faiss.METRIC_Lp

    def __init__(self, p: float = 2):
        if p < 1:
            raise ValueError(f"metric.p must be >= 1 for a Minkowski distance, got {p}")
        self.p = float(p)
        self.metric_arg = self.p
        # p = 1, 2, ∞ are the named metrics: same numbers, faster kernels.
        self._same_as = {1.0: Manhattan(), 2.0: Euclidean(), float("inf"): Chebyshev()}.get(self.p)

    def between(self, query, ref):
        if self._same_as is not None:
            return self._same_as.between(query, ref)
        return super().between(query, ref)

    def finish(self, d):
        return np.power(np.maximum(d, 0), 1.0 / self.p, dtype=np.float32)

    def __repr__(self) -> str:
        return f"minkowski(p={self.p:g})"
