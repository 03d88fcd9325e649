"""Retrieval scores as pure functions of labels.

`relevant[q, i]` is True when the query q's i-th neighbour shares its label.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def relevance(query_labels: np.ndarray, neighbour_labels: np.ndarray) -> np.ndarray:
    return np.asarray(neighbour_labels) == np.asarray(query_labels)[:, None]


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
