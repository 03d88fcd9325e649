"""The six distances of the study, one small class each. Smaller is always closer.

A subclass declares two facts and overrides at most four methods, all on whole blocks of vectors:
- `faiss_metric`: what FAISS's approximate indexes compute for it on transformed vectors, or None
  (then `search.index=ivf|hnsw` refuses it instead of silently computing another distance);
- `translation_invariant`: the distance ignores a shared offset, so search centres both sides on the
  catalog mean first (float32 GEMM expansions of |q − r|² cancel badly on offset data);
- `transform`: applied once per vector (normalising, centring);
- `prepare_ref`: the catalog side, once per index (default: `transform`);
- `scores`: a (Q, N) block that orders neighbours exactly as the distance does, as cheaply as
  possible (BLAS for euclidean, cosine and correlation; the SIMD kernels of
  `harness.metrics.kernels` for manhattan, chebyshev and minkowski);
- `to_distance`: turns scores into the distance itself; search applies it to the k winners only.
`pairwise` is the pure function the tests compare with scipy.spatial.distance.

Vectors a distance is undefined for (`degenerate`: all-zero for cosine, constant for correlation)
are refused at the public entry points; an evaluation reports and excludes such catalog images.
"""
from __future__ import annotations

import faiss
import numpy as np

from harness.errors import HarnessError
import harness.metrics.kernels as kernels


def as_matrix(x, name: str, dim: int | None = None) -> np.ndarray:
    """x as a C-contiguous float32 (n, D) matrix of finite numbers, or one clear HarnessError."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise HarnessError(f"{name} must be a 2-D array (n, D), got shape {arr.shape}.")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise HarnessError(f"{name} must hold numbers, got dtype {arr.dtype}.")
    if dim is not None and arr.shape[1] != dim:
        raise HarnessError(f"{name} has {arr.shape[1]} dimensions; the catalog has {dim}.")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise HarnessError(f"{name} holds NaN or infinite values (in {int((~np.isfinite(arr)).any(1).sum())} rows).")
    return arr


class Distance:
    name = "base"
    faiss_metric: int | None = None
    translation_invariant = False
    undefined_for = ""  # what a degenerate vector is, for messages

    def degenerate(self, x: np.ndarray) -> np.ndarray:
        """(n,) bool: rows the distance is undefined for."""
        return np.zeros(len(x), dtype=bool)

    def offset(self, ref: np.ndarray) -> np.ndarray | None:
        """What search subtracts from both sides first: the catalog mean for a translation-invariant
        distance (so the float32 arithmetic works on small numbers), else nothing."""
        return ref.mean(axis=0, dtype=np.float64).astype(np.float32) if self.translation_invariant else None

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

    def check(self, x: np.ndarray, role: str) -> None:
        bad = self.degenerate(x)
        if bad.any():
            raise HarnessError(f"{role}: {int(bad.sum())} vector(s) {self.undefined_for} (row {int(np.flatnonzero(bad)[0])}); "
                               f"the {self!r} distance is undefined for them.")

    def pairwise(self, query_emb, ref_emb) -> np.ndarray:
        """The (Q, N) distance matrix."""
        ref = as_matrix(ref_emb, "ref_emb")
        query = as_matrix(query_emb, "query_emb", ref.shape[1])
        self.check(ref, "ref_emb")
        self.check(query, "query_emb")
        shift = self.offset(ref)
        if shift is not None:
            query, ref = query - shift, ref - shift
        query = self.transform(query)
        return self.to_distance(self.scores(query, self.prepare_ref(ref)), query)

    def __repr__(self) -> str:
        return self.name


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.array(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1, norms)


class Euclidean(Distance):
    name = "euclidean"
    faiss_metric = faiss.METRIC_L2
    translation_invariant = True

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
    undefined_for = "are all zero"

    def degenerate(self, x):
        return ~np.any(np.asarray(x) != 0, axis=1)

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
    undefined_for = "are constant"

    def degenerate(self, x):
        x = np.asarray(x)
        return np.all(x == x[:, :1], axis=1) if x.shape[1] else np.ones(len(x), bool)

    def transform(self, x):
        x = np.asarray(x, dtype=np.float32)
        return _unit(x - x.mean(axis=1, keepdims=True))


class Manhattan(Distance):
    name = "manhattan"
    translation_invariant = True

    def scores(self, query, ref):
        return kernels.pairwise(query, ref, kernels.L1)


class Chebyshev(Distance):
    name = "chebyshev"
    translation_invariant = True

    def scores(self, query, ref):
        return kernels.pairwise(query, ref, kernels.LINF)


class _Lp(Distance):
    """Σ|d|^p ranks like the Minkowski distance; the root is taken for the k winners only."""
    translation_invariant = True

    def __init__(self, p: float):
        self.p = p

    def scores(self, query, ref):
        return kernels.pairwise(query, ref, kernels.LP, self.p)

    def to_distance(self, scores, query):
        return np.power(np.maximum(scores, 0), 1.0 / self.p, dtype=np.float32)


class Minkowski(Distance):
    """(Σ|q − r|^p)^(1/p), p ≥ 1. p = 1, 2 and ∞ are the named metrics: the same numbers from their
    faster kernels, so every step is handed to the distance that computes it (`self.via`)."""
    name = "minkowski"

    def __init__(self, p: float = 2):
        try:
            p = float(p)
        except (TypeError, ValueError):
            p = float("nan")
        if not p >= 1:  # also refuses NaN
            raise HarnessError(f"metric.p must be a number >= 1 for a Minkowski distance (1 manhattan, "
                               f"2 euclidean, inf chebyshev); got {p:g}.")
        self.p = p
        self.via: Distance = {1.0: Manhattan, 2.0: Euclidean, float("inf"): Chebyshev}.get(p, lambda: _Lp(p))()
        self.faiss_metric = self.via.faiss_metric
        self.translation_invariant = self.via.translation_invariant

    def transform(self, x):
        return self.via.transform(x)

    def prepare_ref(self, ref_emb):
        return self.via.prepare_ref(ref_emb)

    def scores(self, query, ref):
        return self.via.scores(query, ref)

    def to_distance(self, scores, query):
        return self.via.to_distance(scores, query)

    def from_faiss(self, raw):
        return self.via.from_faiss(raw)

    def __repr__(self) -> str:
        return f"minkowski(p={self.p:g})"
