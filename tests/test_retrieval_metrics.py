import numpy as np
import pytest
import pandas as pd

from harness.evaluators import EvalContext, PrecisionAtK
from harness.metrics import retrieval


def test_precision_hand_computed():
    query = np.array(["a", "b"])
    neighbours = np.array([["a", "a", "b"], ["a", "b", "b"]])
    rel = neighbours == query[:, None]
    assert rel.tolist() == [[True, True, False], [False, True, True]]
    assert retrieval.precision_at_k(rel) == 4 / 6
    assert retrieval.precision_per_rank(rel).tolist() == [0.5, 1.0, 0.5]
    table = retrieval.per_label_precision(query, rel)
    assert table.to_dict("records") == [{"label": "a", "queries": 1, "precision": 2 / 3},
                                        {"label": "b", "queries": 1, "precision": 2 / 3}]


def test_evaluator_names_and_missing_neighbours():
    ref = pd.DataFrame({"category": ["x", "x", "y"], "subcategory": ["x1", "x2", "y1"]})
    query = pd.DataFrame({"category": ["x"], "subcategory": ["x1"]})
    # -1: the query's category had fewer than k candidates; such a slot never counts as relevant
    items = pd.concat([ref, query], ignore_index=True)
    ctx = EvalContext(items, ["category", "subcategory"], 3, np.array([3]), np.array([[0, 1, -1]]), np.zeros((1, 3)),
                      [(0, np.array([0]), np.array([0, 1, 2]))])
    out = PrecisionAtK().evaluate(ctx)
    assert out["category_precision_at_3"] == 2 / 3
    assert out["subcategory_precision_at_3"] == 1 / 3
    assert [out[f"subcategory_precision_rank_{i}"] for i in (1, 2, 3)] == [1.0, 0.0, 0.0]


def test_ranking_metrics_hand_computed():
    # query 0: R = 2, relevant at ranks 1 and 3; query 1: R = 1, relevant at rank 2
    rel = np.array([[1, 0, 1, 0], [0, 1, 0, 0]], dtype=bool)
    n_rel = np.array([2, 1])
    assert retrieval.recall_at_k(rel, 1) == 0.5 and retrieval.recall_at_k(rel, 2) == 1.0
    # R-precision: q0 1/2 (only rank 1 within R=2), q1 0/1
    assert retrieval.r_precision(rel, n_rel) == 0.25
    # MAP@R: q0 (1/2)(1/1) = 0.5 (rank 3 lies beyond R), q1 0
    assert retrieval.map_at_r(rel, n_rel) == 0.25
    assert retrieval.mrr(rel) == (1 + 1 / 2) / 2


def test_map_at_r_perfect_and_ties_in_labels():
    rel = np.array([[1, 1, 1, 0]], dtype=bool)
    assert retrieval.map_at_r(rel, np.array([3])) == 1.0
    # same ranking, but R = 4: the 4th relevant item is missing → (1+1+1+0)/4
    assert retrieval.map_at_r(np.array([[1, 1, 1, 0, 1]], dtype=bool), np.array([4])) == 0.75


def test_histogram_comparisons_match_opencv():
    import cv2

    from harness.evaluators.color_texture import chi2, correlation
    rng = np.random.default_rng(0)
    a, b = rng.random(64).astype(np.float32), rng.random(64).astype(np.float32)
    assert correlation(a, b) == pytest.approx(cv2.compareHist(a, b, cv2.HISTCMP_CORREL), rel=1e-5)
    assert chi2(a, b) == pytest.approx(cv2.compareHist(a, b, cv2.HISTCMP_CHISQR_ALT) / 2, rel=1e-5)
    assert correlation(a, a) == pytest.approx(1.0) and chi2(a, a) == 0


def test_pr_curve_and_average_precision_hand_computed():
    # pairs nearest first; the 2nd and 3rd are tied, so they form one threshold
    rel = np.array([1, 0, 1, 0, 1], dtype=bool)
    dist = np.array([0.1, 0.2, 0.2, 0.3, 0.4])
    ends = retrieval.tie_ends(dist)
    hits = retrieval.hits_at(rel, ends)
    precision, recall = retrieval.curve_from_hits(hits, ends)
    assert precision.tolist() == [1.0, 2 / 3, 2 / 4, 3 / 5]
    assert recall.tolist() == [1 / 3, 2 / 3, 2 / 3, 1.0]
    assert retrieval.average_precision_from_hits(hits, ends) == pytest.approx(1 / 3 + (1 / 3) * (2 / 3) + (1 / 3) * (3 / 5))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pr_curve_and_average_precision_match_scikit_learn(seed):
    from sklearn.metrics import average_precision_score, precision_recall_curve

    rng = np.random.default_rng(seed)
    dist = rng.integers(0, 40, 500).astype(np.float32) / 8  # many exact ties
    rel = rng.random(500) < 0.3
    order = np.argsort(dist, kind="stable")
    ends = retrieval.tie_ends(dist[order])
    hits = retrieval.hits_at(rel[order], ends)
    precision, recall = retrieval.curve_from_hits(hits, ends)
    assert retrieval.average_precision_from_hits(hits, ends) == pytest.approx(average_precision_score(rel, -dist), abs=1e-12)
    sk_precision, sk_recall, _ = precision_recall_curve(rel, -dist)
    # scikit-learn: recall decreasing, a final (precision 1, recall 0) point, thresholds past full recall dropped
    sk_precision, sk_recall = sk_precision[-2::-1], sk_recall[-2::-1]
    np.testing.assert_allclose(precision[: len(sk_precision)], sk_precision)
    np.testing.assert_allclose(recall[: len(sk_recall)], sk_recall)
    assert np.all(recall[len(sk_recall):] == 1.0)


def test_order_key_sorts_like_the_floats():
    dist = np.array([0.5, -0.0, 0.0, -1e-7, np.inf, np.nan, -np.inf, 0.5, 1e-30, -np.nan, 2.0], dtype=np.float32)
    key = retrieval.order_key(dist)
    assert key.dtype == np.uint32
    np.testing.assert_array_equal(np.argsort(key, kind="stable"), np.argsort(dist, kind="stable"))
    assert key[1] == key[2] and key[0] == key[7]  # -0.0 ties with 0.0, equal values stay tied
    assert key[5] == key[9] == key.max()  # NaN of either sign sorts last


def test_average_precision_from_hits_hand_computed():
    rel = np.array([1, 0, 1, 0, 1], dtype=bool)
    ends = retrieval.tie_ends(np.array([0.1, 0.2, 0.2, 0.3, 0.4]))
    hits = retrieval.hits_at(rel, ends)
    assert hits.tolist() == [1, 2, 2, 3]
    assert retrieval.average_precision_from_hits(hits, ends) == pytest.approx(1 / 3 + (1 / 3) * (2 / 3) + (1 / 3) * (3 / 5))
    assert np.isnan(retrieval.average_precision_from_hits(retrieval.hits_at(~np.ones(3, bool), np.arange(3)), np.arange(3)))
