"""The six distances of the study, one small class each. Smaller is always closer.

A subclass overrides at most four methods, all on whole blocks of vectors:
- `transform`: applied once per vector (normalising, centring);
- `prepare_ref`: the catalog side, once per index (default: `transform`);
- `scores`: a (Q, N) block that orders neighbours exactly as the distance does, as cheaply as
  possible (BLAS for euclidean, cosine and correlation; the SIMD kernels of
  `harness.metrics.kernels` for manhattan, chebyshev and minkowski);
- `to_distance`: turns scores into the distance itself; search applies it to the k winners only.
`pairwise` is the pure function the tests compare with scipy.spatial.distance.
"""
from __future__ import annotations

import faiss
import numpy as np

from harness.metrics import kernels


class Distance:
    name = "base"
    faiss_metric: int = faiss.METRIC_L2  # what FAISS's approximate indexes compute on transformed vectors

    def transform(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=np.float32)

    def prepare_ref(self, ref_emb: np.ndarray) -> np.ndarray:
        return self.transform(ref_emb)

    def scores(self, query: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """query: transformed; ref: prepared."""
        raise NotImplementedError

    def to_distance(self, scores: np.ndarray, query: np.ndarray) -> np.ndarray:
        return scores

    def from_faiss(self, raw: np.ndarray) -> np.ndarray:
        """FAISS index output → this distance."""
        return raw

    def pairwise(self, query_emb: np.ndarray, ref_emb: np.ndarray) -> np.ndarray:
        query = self.transform(query_emb)
        return self.to_distance(self.scores(query, self.prepare_ref(ref_emb)), query)

    def __repr__(self) -> str:
        return self.name


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.array(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1, norms)


class Euclidean(Distance):
    name = "euclidean"

    def prepare_ref(self, ref_emb):
        # |q − r|² = |q|² + |r|² − 2 q·r. Ranking skips |q|² (constant per row); the rest is one GEMM
        # of [q, 1] with [−2r, |r|²].
        ref = self.transform(ref_emb)
        return np.hstack([-2.0 * ref, (ref * ref).sum(1, keepdims=True)])

    def scores(self, query, ref):
        return np.hstack([query, np.ones((len(query), 1), np.float32)]) @ ref.T

    def to_distance(self, scores, query):
        return np.sqrt(np.maximum(scores + (query * query).sum(1)[:, None], 0))

    def from_faiss(self, raw):  # squared L2
        return np.sqrt(np.maximum(raw, 0))


class Cosine(Distance):
    name = "cosine"
    faiss_metric = faiss.METRIC_INNER_PRODUCT

    def transform(self, x):
        return _unit(x)

    def prepare_ref(self, ref_emb):
        return -self.transform(ref_emb)  # so that one GEMM yields −similarity: smaller is closer

    def scores(self, query, ref):
        return query @ ref.T

    def to_distance(self, scores, query):
        return 1.0 + scores

    def from_faiss(self, raw):  # similarity
        return 1.0 - raw


class Correlation(Cosine):
    """1 − Pearson correlation: the cosine distance of mean-centred vectors."""
    name = "correlation"

    def transform(self, x):
        x = np.asarray(x, dtype=np.float32)
        return _unit(x - x.mean(axis=1, keepdims=True))


class Manhattan(Distance):
    name = "manhattan"
    faiss_metric = faiss.METRIC_L1

    def scores(self, query, ref):
        return kernels.pairwise(query, ref, kernels.L1)


class Chebyshev(Distance):
    name = "chebyshev"
    faiss_metric = faiss.METRIC_Linf

    def scores(self, query, ref):
        return kernels.pairwise(query, ref, kernels.LINF)


class Minkowski(Distance):
    name = "minkowski"
    faiss_metric = faiss.METRIC_Lp

    def __init__(self, p: float = 2):
        if p < 1:
            raise ValueError(f"metric.p must be >= 1 for a Minkowski distance, got {p}")
        self.p = float(p)
        # p = 1, 2, ∞ are the named metrics: the same numbers from faster kernels.
        same = {1.0: Manhattan(), 2.0: Euclidean(), float("inf"): Chebyshev()}.get(self.p)
        if same is not None:
            for attr in ("faiss_metric", "prepare_ref", "scores", "to_distance", "from_faiss"):
                setattr(self, attr, getattr(same, attr))

    def scores(self, query, ref):  # Σ|d|^p, ranked before taking the root
        return kernels.pairwise(query, ref, kernels.LP, self.p)

    def to_distance(self, scores, query):
        return np.power(np.maximum(scores, 0), 1.0 / self.p, dtype=np.float32)

    def __repr__(self) -> str:
        return f"minkowski(p={self.p:g})"
