"""The sweep report's paired comparisons against hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest

from harness.report import paired_bootstrap, paired_permutation


def test_paired_permutation_by_hand():
    # three queries, each +1: of the 8 sign assignments, means ±1 (2 of them) are as extreme → p = 2/8
    assert paired_permutation(np.array([1.0, 1.0, 1.0])) == (1.0, 0.25)
    # +2, -1: assignments (+2,-1) 0.5, (-2,-1) -1.5, (+2,+1) 1.5, (-2,+1) -0.5 → |mean| >= 0.5 always
    assert paired_permutation(np.array([2.0, -1.0])) == (0.5, 1.0)
    assert paired_permutation(np.zeros(5)) == (0.0, 1.0)      # identical runs: nothing to see
    # ten queries: all 1024 assignments (against itertools' own), and 900 random ones (within noise)
    import itertools

    diff = np.array([0.2, 0.4, 0.0, 0.2, 0.2, -0.2, 0.4, 0.2, 0.0, 0.2])
    brute = np.mean([abs(np.mean(np.array(s) * diff)) >= 0.16 - 1e-12 for s in itertools.product((1, -1), repeat=10)])
    mean, exact = paired_permutation(diff)
    assert mean == pytest.approx(0.16) and exact == pytest.approx(brute)
    assert paired_permutation(diff, n=900, seed=1)[1] == pytest.approx(exact, abs=0.03)

def test_permutation_and_bootstrap_agree_on_a_large_gap_and_on_none():
    rng = np.random.default_rng(0)
    gap = rng.normal(0.1, 0.2, 400)
    assert paired_permutation(gap)[1] < 0.01 and paired_bootstrap(gap)[1] > 0
    same = rng.normal(0.0, 0.2, 400)
    assert paired_permutation(same)[1] > 0.05


def test_pareto_front_by_hand():
    from harness.leaderboard import pareto_front

    quality = np.array([0.9, 0.8, 0.7, 0.85, 0.9])
    speed = np.array([10, 50, 100, 40, 5])
    # (0.9, 10) beats (0.9, 5); (0.8, 50) beats (0.85, 40)? no: 0.85 > 0.8. Nothing beats 0, 1, 2, 3.
    assert pareto_front(quality, speed).tolist() == [True, True, True, True, False]


def card(backbone, digest, value, speed, metric="Cosine"):
    return {"model": {"backbone": backbone, "weights": "imagenet", "layer": "penultimate", "preprocess": "Resize",
                      "projection": "none", "metric": metric},
            "dataset": {"catalog": {"name": "products", "digest": digest}},
            "scores": {"category_precision_at_5": {"value": 0.9}, "subcategory_precision_at_5": {"value": value, "low": value - 0.01, "high": value + 0.01}},
            "cost": {"parameters": 1, "feature_dim": 8, "bytes_per_item": 32, "images_per_second": speed,
                     "query_p50_ms": 1.0, "machine": {"cpu": "x", "cores": 2, "isa": {"avx2": True}}}}


def test_leaderboard_rows_columns_and_catalog_versions():
    from harness.leaderboard import build

    table, columns = build([card("a", "d1", 0.80, 100), card("b", "d1", 0.85, 10), card("a", "d2", 0.70, 90),
                            card("a", "d1", 0.81, 120)])                      # a newer run of a on d1 replaces it
    assert columns == ["products [d1] subcategory_precision_at_5", "products [d2] subcategory_precision_at_5"]
    assert table["backbone"].tolist() == ["b", "a"]                           # sorted by the first column
    a = table[table["backbone"] == "a"].iloc[0]
    assert a[columns[0]] == 0.81 and a[columns[1]] == 0.70 and a["images_per_second"] == 120
    assert np.isnan(table[table["backbone"] == "b"].iloc[0][columns[1]])    # b never ran on d2
    cached = card("a", "d1", 0.75, None, metric="Euclidean")                 # features from the store
    table, _ = build([card("a", "d1", 0.80, 100), cached])
    assert table.set_index("metric").loc["Euclidean", "images_per_second"] == 100   # the extractor's rate
