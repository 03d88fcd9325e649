"""evaluate() on embeddings: hand-computed tables, scikit-learn and pytorch-metric-learning."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from harness.data import Catalog
from harness.errors import HarnessError
from harness.evaluate import evaluate
from harness.evaluators import PrecisionAtK, Ranking
from harness.evaluators.distractors import DistractorRate
from harness.metrics import Cosine, Euclidean
from harness.protocols import Fold, KFold


def catalog(labels, **columns) -> Catalog:
    table = pd.DataFrame({"path": [f"/img/{i}.jpg" for i in range(len(labels))], "label": labels, **columns})
    return Catalog.from_table(table, ["label"], "test table")


# Two folds on a line. Fold 0: query row 0 (a) at 0.0; fold 1: query row 1 (b) at 10.0; both search rows 2-5.
EMB = np.array([[0.0], [10.0], [1.0], [2.0], [-2.0], [5.0]])
LABELS = ["a", "b", "a", "a", "b", "b"]
FOLDS = [Fold(np.array([0]), np.array([2, 3, 4, 5])), Fold(np.array([1]), np.array([2, 3, 4, 5]))]


def test_two_folds_hand_computed():
    # fold 0 ranks rows 2 (d 1, a), 3 (d 2, a), 4 (d 2, b: tied with 3), 5 (d 5, b); R = 2
    # fold 1 ranks rows 5 (d 5, b), 3 (d 8, a), 2 (d 9, a), 4 (d 12, b); R = 2
    res = evaluate(EMB, catalog(LABELS), FOLDS, Euclidean(), [PrecisionAtK(), Ranking()], k=2)
    f0, f1 = res.per_fold
    assert (f0["label_precision_at_2"], f1["label_precision_at_2"]) == (1.0, 0.5)
    assert (f0["label_map_at_r"], f1["label_map_at_r"]) == (1.0, 0.5)   # q1: (1/2)·P@1
    assert (f0["label_r_precision"], f1["label_r_precision"]) == (1.0, 0.5)
    assert (f0["label_mrr"], f1["label_mrr"]) == (1.0, 1.0)
    assert (f0["label_recall_at_2"], f1["label_recall_at_2"]) == (1.0, 1.0)
    # mAP: tied items share their group's precision: q0 (1 + 2/3)/2 (row 3 ties with the irrelevant row 4);
    # q1 (1 + 2/4)/2
    assert f0["label_map"] == pytest.approx(5 / 6, abs=1e-12) and f1["label_map"] == pytest.approx(0.75, abs=1e-12)
    m = res.metrics  # pooled: every query once
    assert m["label_precision_at_2"] == 0.75 and m["label_map_at_r"] == 0.75 and m["label_mrr"] == 1.0
    assert m["label_map"] == pytest.approx(19 / 24, abs=1e-12)
    # pooled curve over the 8 pairs sorted by distance: 1T 2T 2F 5F 5T 8F 9F 12T
    assert m["label_pooled_average_precision"] == pytest.approx((1 + 2 / 3 + 3 / 5 + 4 / 8) / 4, abs=1e-12)
    assert m["label_map_at_r_mean"] == 0.75 and m["label_map_at_r_std"] == pytest.approx(np.std([1, 0.5], ddof=1))
    assert m["folds"] == 2 and m["n_queries"] == 2
    assert res.indices.tolist() == [[2, 3], [5, 3]]  # tie at distance 2: catalog order


def test_map_and_pooled_ap_equal_scikit_learn_with_ties():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    emb = rng.integers(0, 4, size=(60, 3)).astype(np.float32)  # few distinct points: many exact ties
    labels = rng.choice(["a", "b", "c"], 60)
    cat = catalog(labels)
    cat, folds = KFold(folds=3).split(cat)
    res = evaluate(emb, cat, folds, Euclidean(), [Ranking()], k=3)
    aps, rel_all, score_all = [], [], []
    for f in folds:
        d = Euclidean().pairwise(emb[f.query_idx], emb[f.ref_idx])
        for qi, q in enumerate(f.query_idx):
            y = labels[f.ref_idx] == labels[q]
            aps.append(average_precision_score(y, -d[qi]))
            rel_all.append(y), score_all.append(-d[qi])
    assert res.metrics["label_map"] == pytest.approx(np.mean(aps), abs=1e-9)
    pooled = average_precision_score(np.concatenate(rel_all), np.concatenate(score_all))
    assert res.metrics["label_pooled_average_precision"] == pytest.approx(pooled, abs=1e-9)


def test_ranking_metrics_equal_pytorch_metric_learning():
    """Per fold and pooled, against AccuracyCalculator on clustered data (no exact ties)."""
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(6, 16)) * 1.5
    labels = np.repeat(np.arange(6), 20)
    emb = (centres[labels] + rng.normal(size=(120, 16))).astype(np.float32)
    cat, folds = KFold(folds=2, seed=3).split(catalog(labels.astype(str)))
    res = evaluate(emb, cat, folds, Euclidean(), [PrecisionAtK(), Ranking()], k=1)
    names = {"precision_at_1": "label_precision_at_1", "r_precision": "label_r_precision",
             "mean_average_precision_at_r": "label_map_at_r", "mean_reciprocal_rank": "label_mrr",
             "mean_average_precision": "label_map"}
    weighted = dict.fromkeys(names, 0.0)
    for f, ours in zip(folds, res.per_fold):
        calc = AccuracyCalculator(include=tuple(names), k=len(f.ref_idx), device=torch.device("cpu"))
        theirs = calc.get_accuracy(torch.from_numpy(emb[f.query_idx]), torch.from_numpy(labels[f.query_idx]),
                                   torch.from_numpy(emb[f.ref_idx]), torch.from_numpy(labels[f.ref_idx]),
                                   ref_includes_query=False)
        for pml, name in names.items():
            assert ours[name] == pytest.approx(theirs[pml], abs=1e-6), pml
            weighted[pml] += theirs[pml] * len(f.query_idx) / len(labels)
    for pml, name in names.items():  # pooled = every query once
        assert res.metrics[name] == pytest.approx(weighted[pml], abs=1e-6), pml


def test_distractor_rate_exact():
    # query row 0 at 0; products at 1 and 2; distractors at 0.5 and 10: the top 2 are the distractor at
    # 0.5 and the product at 1
    table = catalog(["a", "a", "a", "x", "x"], distractor=[False, False, False, True, True])
    emb = np.array([[0.0], [1.0], [2.0], [0.5], [10.0]])
    res = evaluate(emb, table, [Fold(np.array([0]), np.array([1, 2, 3, 4]))], Euclidean(),
                   [PrecisionAtK(), DistractorRate()], k=2)
    assert res.metrics["distractor_rate_at_2"] == 0.5 and res.metrics["label_precision_at_2"] == 0.5
    assert res.indices.tolist() == [[3, 1]]


def test_within_category_searches_the_query_category_only():
    table = catalog(["x1", "y1", "x2", "x3", "y2"], category=["x", "y", "x", "x", "y"])
    table = Catalog(table.items, ["category", "label"], "t")
    emb = np.array([[0.0], [0.1], [1.0], [3.0], [0.2]])
    fold = [Fold(np.array([0]), np.array([1, 2, 3, 4]))]
    anywhere = evaluate(emb, table, fold, Euclidean(), [PrecisionAtK()], k=2)
    within = evaluate(emb, table, fold, Euclidean(), [PrecisionAtK()], k=2, within="category")
    assert anywhere.indices.tolist() == [[1, 4]] and anywhere.metrics["category_precision_at_2"] == 0.0
    assert within.indices.tolist() == [[2, 3]] and within.metrics["category_precision_at_2"] == 1.0
    short = evaluate(emb, table, fold, Euclidean(), [PrecisionAtK()], k=3, within="category")
    assert short.indices.tolist() == [[2, 3, -1]] and short.metrics["category_precision_at_3"] == pytest.approx(2 / 3)


def test_zero_vectors_are_excluded_and_reported_for_cosine(caplog):
    emb = np.array([[1.0, 0.0], [0.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    table = catalog(["a", "a", "a", "b"])
    with caplog.at_level(logging.WARNING):
        res = evaluate(emb, table, [Fold(np.array([0]), np.array([1, 2, 3]))], Cosine(), [PrecisionAtK()], k=1)
    assert res.excluded == [(1, "feature vector are all zero: the cosine distance is undefined")]
    assert res.metrics["excluded_images"] == 1 and res.indices.tolist() == [[2]] and "left out" in caplog.text
    from harness.search import build_index
    with pytest.raises(HarnessError, match="undefined"):
        build_index(np.ones((3, 2)), Cosine()).search(np.zeros((1, 2)), 1)  # a zero query: a clear error


def test_bad_arguments_are_one_clear_error():
    table = catalog(LABELS)
    with pytest.raises(HarnessError, match="k=7 is larger than the catalog searched"):
        evaluate(EMB, table, FOLDS, Euclidean(), [PrecisionAtK()], k=7)
    with pytest.raises(HarnessError, match="k must be"):
        evaluate(EMB, table, FOLDS, Euclidean(), [PrecisionAtK()], k=0)
    with pytest.raises(HarnessError, match="emb has 5 rows"):
        evaluate(EMB[:5], table, FOLDS, Euclidean(), [PrecisionAtK()], k=1)
    with pytest.raises(HarnessError, match="NaN"):
        evaluate(np.full_like(EMB, np.nan), table, FOLDS, Euclidean(), [PrecisionAtK()], k=1)


def test_truncated_ranking_is_logged_and_counted(caplog):
    rng = np.random.default_rng(0)
    labels = np.array(["a"] * 30 + ["b"] * 10)
    emb = rng.normal(size=(40, 4))
    cat, folds = KFold(folds=2).split(catalog(labels))
    exact = evaluate(emb, cat, folds, Euclidean(), [Ranking()], k=1)
    with caplog.at_level(logging.WARNING):
        capped = evaluate(emb, cat, folds, Euclidean(), [Ranking(max_depth=8)], k=1)
    assert "truncated" in caplog.text and caplog.text.count("max_depth=8") == 1  # once per evaluation
    assert capped.metrics["label_truncated_queries"] == 30  # the 'a' queries: 15 relevant items each, > 8
    assert capped.metrics["label_map_at_r"] != exact.metrics["label_map_at_r"]
    assert "label_truncated_queries" not in exact.metrics
