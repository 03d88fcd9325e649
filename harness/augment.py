"""Label-aware database augmentation: catalog vectors moved toward their label's catalog mean.

Plain database-side augmentation (each vector averaged with its nearest neighbours) does not help on
a shop's catalog; moving each vector toward the mean of the catalog vectors that share its label does
(README "Frozen-feature recipes"). It is fitted like a projection, on one fold's catalog rows only,
and applied after the projection to those catalog rows; queries are never moved (a shopper's photo
has no label). The fitted form is plain arrays (label names and their means), so a served model
carries it without a pickle and moves catalog items added later by their label.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from harness.errors import HarnessError


@dataclass
class FittedAugmentation:
    labels: np.ndarray   # (L,) label names, unicode
    means: np.ndarray    # (L, d) the mean catalog vector of each label
    beta: float

    def apply(self, emb: np.ndarray, labels) -> np.ndarray:
        """Catalog rows (x + beta * mean(label)) / (1 + beta); a row whose label was not fitted is kept."""
        emb = np.asarray(emb, dtype=np.float32)
        if emb.shape[1:] != self.means.shape[1:]:
            raise HarnessError(f"the catalog augmentation was fitted on {self.means.shape[1]}-D vectors, "
                               f"not {emb.shape[1]}-D ones.")
        labels = np.asarray(labels).astype(str)
        pos = np.searchsorted(self.labels, labels)
        pos = np.minimum(pos, len(self.labels) - 1)
        known = self.labels[pos] == labels
        out = emb.copy()
        out[known] = (emb[known] + self.beta * self.means[pos[known]]) / (1 + self.beta)
        return out

    @property
    def digest(self) -> str:
        h = hashlib.sha256(np.float64(self.beta).tobytes())
        h.update("\0".join(self.labels.tolist()).encode())
        h.update(np.ascontiguousarray(self.means, dtype=np.float32).tobytes())
        return h.hexdigest()

    def save(self, path) -> None:
        np.savez(path, labels=self.labels, means=self.means, beta=np.float64(self.beta))

    @classmethod
    def load(cls, path) -> "FittedAugmentation":
        with np.load(path, allow_pickle=False) as arrays:  # unicode labels load without pickle
            return cls(arrays["labels"], arrays["means"], float(arrays["beta"]))


class ClassMean:
    """`beta`: how far each catalog vector moves toward its label's mean (0: not at all; 1: halfway).
    `level`: the label column (null: the projection's, else the finest evaluated level)."""
    name = "class_mean"

    def __init__(self, beta: float = 1.0, level: str | None = None):
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not np.isfinite(beta) or beta < 0:
            raise HarnessError(f"augment.beta must be a number >= 0, got {beta!r}.")
        self.beta, self.level = float(beta), level

    def fit(self, ref_emb: np.ndarray, labels) -> FittedAugmentation:
        ref_emb, labels = np.asarray(ref_emb, dtype=np.float64), np.asarray(labels).astype(str)
        if len(ref_emb) != len(labels) or not len(labels):
            raise HarnessError(f"augment={self.name}: needs one label per catalog vector ({len(ref_emb)} vectors, "
                               f"{len(labels)} labels).")
        names, inverse = np.unique(labels, return_inverse=True)  # sorted: apply() finds them by bisection
        sums = np.zeros((len(names), ref_emb.shape[1]))
        np.add.at(sums, inverse, ref_emb)
        means = sums / np.bincount(inverse, minlength=len(names))[:, None]
        return FittedAugmentation(names, means.astype(np.float32), self.beta)
