"""Retrieval scores as pure functions of labels.

`relevant[q, i]` is True when the query q's i-th neighbour shares its label.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def order_key(distance: np.ndarray) -> np.ndarray:
    """uint32 keys that sort like the float32 distances (-0.0 equal to 0.0, NaN last).

    Ranked pairs are sorted as uint64 `order_key << 32 | payload`: one sort of plain integers, and the
    payload (a column, or relevance bits) rides along instead of being gathered through an argsort.
    """
    x = np.asarray(distance, dtype=np.float32) + np.float32(0.0)  # -0.0 + 0.0 is +0.0
    bits = x.view(np.uint32)
    key = np.where(bits >> 31, ~bits, bits | np.uint32(0x80000000))
    key[np.isnan(x)] = np.iinfo(np.uint32).max
    return key


def tie_ends(distance_sorted: np.ndarray) -> np.ndarray:
    """Last index of each run of equal distances (or order keys) in pairs sorted nearest first: tied
    pairs share one threshold, so one point of the precision-recall curve."""
    if len(distance_sorted) == 0:
        return np.zeros(0, np.int64)
    return np.append(np.flatnonzero(distance_sorted[1:] != distance_sorted[:-1]), len(distance_sorted) - 1)


def hits_at(relevant_sorted: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Relevant pairs up to each threshold (`tie_ends`) of pairs sorted nearest first."""
    return np.cumsum(relevant_sorted, dtype=np.int32 if len(relevant_sorted) < 2**31 else np.int64)[ends]


def curve_from_hits(hits: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) at each distance threshold (`tie_ends`) of pairs sorted nearest first, recall
    increasing: the points of scikit-learn's `precision_recall_curve(relevant, -distance)` (tested equal),
    from pairs the caller sorted once, where scikit-learn sorts on every call."""
    return hits / (ends + 1), hits / hits[-1] if len(hits) and hits[-1] else np.full(len(hits), np.nan)


def average_precision_from_hits(hits: np.ndarray, ends: np.ndarray) -> float:
    """Σ (R_n − R_{n−1}) P_n over the thresholds of the curve `hits` describes: scikit-learn's
    `average_precision_score` (no interpolation), summing only the thresholds that add a hit."""
    if not len(hits) or not hits[-1]:
        return float("nan")
    gained = np.diff(hits, prepend=0)
    new = np.flatnonzero(gained)
    return float(np.dot(gained[new], hits[new] / (ends[new] + 1)) / hits[-1])


def precision_at_k(relevant: np.ndarray) -> float:
    """Mean share of the k neighbours that share the query's label (the study's 'accuracy')."""
    return float(relevant.mean()) if relevant.size else float("nan")


def precision_per_rank(relevant: np.ndarray) -> np.ndarray:
    """For each rank i, the share of queries whose i-th neighbour is relevant."""
    return relevant.mean(axis=0)


def per_label_precision(query_labels: np.ndarray, relevant: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame({"label": np.asarray(query_labels), "precision": relevant.mean(axis=1)})
    table = frame.groupby("label").agg(queries=("precision", "size"), precision=("precision", "mean"))
    return table.reset_index().sort_values(["precision", "label"], ascending=[False, True])


# Ranking metrics over the full ranking, as pytorch-metric-learning defines them. `relevant` is
# (Q, depth) with depth >= max(n_relevant); `n_relevant[q]` is how many catalog items share the
# query's label. Queries with n_relevant == 0 are excluded (and counted by the caller).

def recall_at_k(relevant: np.ndarray, k: int) -> float:
    """Share of queries with at least one relevant item among the first k."""
    return float(relevant[:, :k].any(axis=1).mean()) if len(relevant) else float("nan")


def _within_r(relevant: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    relevant = relevant[:, : max(n_relevant.max(initial=0), 1)]  # nothing past the largest R counts
    ranks = np.arange(1, relevant.shape[1] + 1)
    return relevant & (ranks[None, :] <= n_relevant[:, None])


def r_precision(relevant: np.ndarray, n_relevant: np.ndarray) -> float:
    """Mean over queries of (relevant items among the first R) / R."""
    hits = _within_r(relevant, n_relevant).sum(axis=1)
    return float(np.mean(hits / n_relevant)) if len(relevant) else float("nan")


def map_at_r(relevant: np.ndarray, n_relevant: np.ndarray) -> float:
    """Mean over queries of (1/R) Σ_{i ≤ R} precision@i · rel(i)."""
    rel = _within_r(relevant, n_relevant)
    precision_at_i = np.cumsum(rel, axis=1) / np.arange(1, rel.shape[1] + 1)[None, :]
    ap = (precision_at_i * rel).sum(axis=1) / n_relevant
    return float(np.mean(ap)) if len(relevant) else float("nan")


def mean_average_precision(relevant: np.ndarray, distances: np.ndarray, n_relevant: np.ndarray,
                           chunk: int = 512) -> float:
    """mAP: mean over queries of the average precision of each query's ranking, (1/R) Σ_rel precision@i,
    where items tied in distance share one threshold (their group's precision at its last item).

    With the whole ranking this is the mean of scikit-learn's `average_precision_score(relevant, -distance)`
    per query (tested equal); relevant items missing from a truncated ranking count as never retrieved.
    """
    if not len(relevant):
        return float("nan")
    depth = relevant.shape[1]
    positions = np.arange(depth)
    total = 0.0
    for s in range(0, len(relevant), chunk):  # bounded temporaries: rankings can be catalog-wide
        rel, dist = relevant[s:s + chunk], distances[s:s + chunk]
        is_end = np.ones(rel.shape, bool)
        is_end[:, :-1] = dist[:, 1:] != dist[:, :-1]
        # each rank's tie group ends at the first group end at or after it
        end = np.minimum.accumulate(np.where(is_end, positions, depth)[:, ::-1], axis=1)[:, ::-1]
        hits = np.cumsum(rel, axis=1, dtype=np.int64)
        precision = np.take_along_axis(hits, end, axis=1) / (end + 1)
        total += float(((rel * precision).sum(axis=1) / n_relevant[s:s + chunk]).sum())
    return total / len(relevant)


def mrr(relevant: np.ndarray) -> float:
    """Mean reciprocal rank of the first relevant item (0 where none is ranked)."""
    has = relevant.any(axis=1)
    first = np.argmax(relevant, axis=1) + 1
    return float(np.mean(np.where(has, 1.0 / first, 0.0))) if len(relevant) else float("nan")


def bootstrap_interval(values: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, 2.5 %, 97.5 %) of `values`' mean over `n` seeded resamples of the queries."""
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.array([values[rng.integers(0, len(values), len(values))].mean() for _ in range(n)])
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))
