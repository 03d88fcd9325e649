"""Linear projections learnt from the catalog: PCA, PCA-whitening, LDA (and PCA then LDA).

A projection is fitted on one fold's reference (catalog) rows only, never on a query and never on a
distractor, with scikit-learn's estimators, and then applied to that fold's queries and references
before the search. Labels with fewer than 2 reference images are left out of the fit (a class of one
has no within-class scatter to learn from); their images are still projected and searched.

Every fitted projection is linear, so it is kept as plain arrays, `x @ weight + bias`, read off the
fitted estimator by transforming the origin and the unit vectors: the served model carries two
arrays, not a pickle.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline

from harness.errors import HarnessError
from harness.search import build_index


@dataclass
class FittedProjection:
    weight: np.ndarray          # (D, d)
    bias: np.ndarray            # (d,)
    info: dict = field(default_factory=dict)  # what to log: dim, explained variance, chosen shrinkage, seconds

    def transform(self, emb: np.ndarray) -> np.ndarray:
        return (np.asarray(emb, dtype=np.float64) @ self.weight + self.bias).astype(np.float32)

    def save(self, path) -> None:
        np.savez(path, weight=self.weight, bias=self.bias)

    @classmethod
    def load(cls, path) -> "FittedProjection":
        with np.load(path) as arrays:
            return cls(arrays["weight"], arrays["bias"])


def linear_map(estimator, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias) with estimator.transform(x) == x @ weight + bias, for a fitted linear transformer."""
    bias = estimator.transform(np.zeros((1, dim)))[0]
    return estimator.transform(np.eye(dim)) - bias, bias


class Projection:
    """Base class: a subclass builds its scikit-learn estimator (`estimator`); the base class owns the
    checks, the fit on reference rows, and the linear form."""
    name = "base"

    def __init__(self, dim: int | None = None, level: str | None = None):
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise HarnessError(f"projection.dim must be a whole number >= 1 or null, got {dim!r}.")
        self.dim, self.level = dim, level

    def estimator(self, n_samples: int, n_features: int, n_classes: int):
        raise NotImplementedError

    def fit(self, ref_emb: np.ndarray, labels: np.ndarray, metric=None, k: int = 5) -> FittedProjection:
        t0 = time.perf_counter()
        ref_emb, labels = np.asarray(ref_emb, dtype=np.float64), np.asarray(labels)
        keep = _with_two(labels)
        if len(np.unique(labels[keep])) < 2:
            raise HarnessError(f"projection={self.name}: needs at least two labels with two or more catalog images "
                               "each to learn from.")
        est, info = self._fit(ref_emb[keep], labels[keep], metric, k)
        weight, bias = linear_map(est, ref_emb.shape[1])
        info.update(dim=weight.shape[1], fit_seconds=time.perf_counter() - t0, fit_images=int(keep.sum()))
        return FittedProjection(weight, bias, info)

    def _fit(self, x, y, metric, k):
        est = self.estimator(*x.shape, len(np.unique(y))).fit(x, y)
        return est, self.describe(est)

    def describe(self, est) -> dict:
        ratio = getattr(est[-1] if hasattr(est, "steps") else est, "explained_variance_ratio_", None)
        return {} if ratio is None else {"explained_variance": float(np.sum(ratio))}


def _with_two(labels: np.ndarray) -> np.ndarray:
    values, counts = np.unique(labels, return_counts=True)
    return np.isin(labels, values[counts >= 2])


class PCAProjection(Projection):
    """Principal components (`whiten`: scaled to unit variance), `dim` of them (default: all)."""

    def __init__(self, dim: int | None = None, whiten: bool = False, level: str | None = None, seed: int = 0):
        super().__init__(dim, level)
        self.whiten, self.seed = whiten, seed
        self.name = "pca_whiten" if whiten else "pca"

    def estimator(self, n_samples, n_features, n_classes):
        dim = min(self.dim or n_features, n_samples, n_features)
        return PCA(n_components=dim, whiten=self.whiten, random_state=self.seed)


class LDAProjection(Projection):
    """Linear discriminant analysis (eigen solver) on the labels of `level` (default: the finest
    evaluated level), `dim` components (at most labels − 1).

    `shrinkage`: a number in [0, 1], `auto` (Ledoit-Wolf), or `cv`: chosen per fold from `grid` by an
    inner stratified cross-validation on that fold's reference rows only, scored by precision@k of
    the level with the run's metric. `pca_dim` puts a PCA in front (for features far wider than the
    catalog is large).
    """
    name = "lda"

    def __init__(self, dim: int | None = None, level: str | None = None, shrinkage=0.1,
                 grid=(0.01, 0.03, 0.1, 0.3, "auto"), inner_folds: int = 3, pca_dim: int | None = None,
                 seed: int = 0):
        super().__init__(dim, level)
        for value in [shrinkage, *grid]:
            if not (value in ("auto", "cv") or (isinstance(value, (int, float)) and 0 <= value <= 1)):
                raise HarnessError(f"projection.shrinkage must be a number in [0, 1], auto or cv; got {value!r}.")
        self.shrinkage, self.grid, self.inner_folds, self.pca_dim, self.seed = shrinkage, list(grid), inner_folds, pca_dim, seed
        if pca_dim:
            self.name = "lda_pca"

    def estimator(self, n_samples, n_features, n_classes, shrinkage=None):
        shrinkage = self.shrinkage if shrinkage is None else shrinkage
        lda_input = min(self.pca_dim, n_samples, n_features) if self.pca_dim else n_features
        dim = min(self.dim or n_classes - 1, n_classes - 1, lda_input)
        lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage=shrinkage, n_components=dim)
        return make_pipeline(PCA(n_components=lda_input, random_state=self.seed), lda) if self.pca_dim else lda

    def _fit(self, x, y, metric, k):
        shrinkage, info = self.shrinkage, {}
        if shrinkage == "cv":
            scores = {str(s): self._inner_score(x, y, s, metric, k) for s in self.grid}
            shrinkage = max(self.grid, key=lambda s: scores[str(s)])  # ties: the first in the grid
            info["inner_scores"] = scores
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "variables are collinear": shrinkage is the answer
            est = self.estimator(*x.shape, len(np.unique(y)), shrinkage).fit(x, y)
        info.update(self.describe(est))
        info["shrinkage"] = -1.0 if shrinkage == "auto" else float(shrinkage)  # -1: Ledoit-Wolf
        return est, info

    def _inner_score(self, x, y, shrinkage, metric, k) -> float:
        """Mean precision@k of the inner validation rows, searched among the inner training rows."""
        folds = StratifiedKFold(self.inner_folds, shuffle=True, random_state=self.seed)
        scores = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # classes smaller than the number of inner folds
            for train, val in folds.split(x, y):
                fit_rows = train[_with_two(y[train])]
                if len(np.unique(y[fit_rows])) < 2:
                    continue
                est = self.estimator(len(fit_rows), x.shape[1], len(np.unique(y[fit_rows])), shrinkage)
                est.fit(x[fit_rows], y[fit_rows])
                ref, query = est.transform(x[train]).astype(np.float32), est.transform(x[val]).astype(np.float32)
                _, idx = build_index(ref, metric).search(query, min(k, len(train)))
                scores.append(float((y[train][idx] == y[val][:, None]).mean()))
        return float(np.mean(scores)) if scores else float("-inf")
