"""Near-duplicate groups of a catalog, found through the index: every item's k nearest, never N × N.

    dups = find_pairs(ref_emb, metric, k=10, radius=0.2)    # candidate pairs (i < j) within radius
    labels = dups.groups(threshold=0.05)                     # (N,) group per item, -1: no duplicate
    table = dups.table(item_ids, threshold=0.05)             # item_id, group, distance to its first item
    pair_scores(labels, truth)                               # pair precision / recall against known groups

Two items are duplicates when their distance is at most the threshold; a group is a connected set of
such pairs (so a group may be larger than k + 1). Each item's k nearest come from `build_index`
(exact, or an approximate index for large catalogs), searched in blocks: memory is the index plus
N × k candidates.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from harness.errors import HarnessError
from harness.metrics.distances import Distance
from harness.search import build_index

QUERY_BLOCK = 4096


@dataclass
class Duplicates:
    """Candidate duplicate pairs of an N-item catalog: `pairs` (P, 2) with i < j, their `distances`."""
    n: int
    pairs: np.ndarray
    distances: np.ndarray
    ref_emb: np.ndarray
    metric: Distance

    def groups(self, threshold: float) -> np.ndarray:
        """(N,) group of each item (numbered by their first item, in catalog order), -1 when it has no
        duplicate within `threshold`."""
        keep = self.distances <= threshold
        a, b = self.pairs[keep, 0], self.pairs[keep, 1]
        graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(self.n, self.n))
        _, component = connected_components(graph, directed=False)
        sizes = np.bincount(component, minlength=self.n)
        first = pd.Series(np.arange(self.n)).groupby(component).transform("min").to_numpy()
        ranked = pd.Series(first[sizes[component] > 1]).rank(method="dense").astype(int).to_numpy() - 1
        labels = np.full(self.n, -1, np.int64)
        labels[sizes[component] > 1] = ranked
        return labels

    def table(self, item_ids, threshold: float) -> pd.DataFrame:
        """One row per item that has a duplicate: item_id, group, its distance to the group's first item
        (the first in catalog order: the one a shop would keep)."""
        labels = self.groups(threshold)
        rows = np.flatnonzero(labels >= 0)
        out = pd.DataFrame({"item_id": np.asarray(item_ids)[rows], "group": labels[rows], "row": rows})
        firsts = out.groupby("group")["row"].transform("min").to_numpy()
        distance = np.empty(len(out), np.float64)
        for s in range(0, len(out), QUERY_BLOCK):  # each row against its own group's first: a diagonal
            block = slice(s, s + QUERY_BLOCK)
            a, b = self.ref_emb[out["row"].to_numpy()[block]], self.ref_emb[firsts[block]]
            distance[block] = [self.metric.pairwise(x[None], y[None])[0, 0] for x, y in zip(a, b)]
        out["distance"] = np.where(out["row"].to_numpy() == firsts, 0.0, np.maximum(distance, 0.0))
        return out.drop(columns="row").sort_values(["group", "distance", "item_id"], kind="stable").reset_index(drop=True)


def find_pairs(ref_emb, metric: Distance, k: int = 10, radius: float | None = None, index=None) -> Duplicates:
    """Each item's `k` nearest other items through the index (`index`: a class or partial, default
    exact), kept as pairs when within `radius` (None: all of them)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise HarnessError(f"dedup.k must be a whole number >= 1, got {k!r}.")
    ref = np.ascontiguousarray(ref_emb, dtype=np.float32)
    n = len(ref)
    if n < 2:
        return Duplicates(n, np.zeros((0, 2), np.int64), np.zeros(0, np.float32), ref, metric)
    searched = build_index(ref, metric, index)
    codes, dist = [], []
    for s in range(0, n, QUERY_BLOCK):
        d, i = searched.search(ref[s:s + QUERY_BLOCK], min(k + 1, n))
        q = np.arange(s, s + len(i))[:, None].repeat(i.shape[1], axis=1)
        keep = (i >= 0) & (i != q) & (np.isfinite(d))
        if radius is not None:
            keep &= d <= radius
        a, b = np.minimum(q[keep], i[keep]), np.maximum(q[keep], i[keep])
        codes.append(a * n + b)
        dist.append(d[keep])
    codes, dist = np.concatenate(codes), np.concatenate(dist)
    codes, first = np.unique(codes, return_index=True)  # a pair found from both ends counts once
    pairs = np.stack([codes // n, codes % n], axis=1).astype(np.int64)
    return Duplicates(n, pairs, dist[first].astype(np.float32), ref, metric)


def _pairs_within(labels: np.ndarray) -> int:
    sizes = pd.Series(labels[labels >= 0]).value_counts().to_numpy() if np.any(labels >= 0) else np.zeros(0)
    return int((sizes * (sizes - 1) // 2).sum())


def truth_labels(column: pd.Series) -> np.ndarray:
    """A manifest's duplicate-group column (empty: no known duplicate) as group numbers, -1 for none."""
    values = column.fillna("").astype(str).str.strip()
    codes, _ = pd.factorize(values.where(values != "", None), use_na_sentinel=True)
    return codes.astype(np.int64)


def pair_scores(found: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Pair precision and recall of `found` groups against `truth` groups (both (N,) labels, -1: none):
    a pair is two items in one group; precision = found pairs that are true / found pairs."""
    found, truth = np.asarray(found), np.asarray(truth)
    both = (found >= 0) & (truth >= 0)
    joint = found[both].astype(np.int64) * (int(truth.max()) + 1 if truth.size else 1) + truth[both]
    true_positive = _pairs_within(joint) if joint.size else 0
    n_found, n_true = _pairs_within(found), _pairs_within(truth)
    return {"pair_precision": true_positive / n_found if n_found else float("nan"),
            "pair_recall": true_positive / n_true if n_true else float("nan"),
            "true_pairs": n_true, "found_pairs": n_found, "correct_pairs": true_positive}
