import numpy as np
import pandas as pd

from harness.evaluators import EvalContext, PrecisionAtK
from harness.metrics import retrieval


def test_precision_hand_computed():
    query = np.array(["a", "b"])
    neighbours = np.array([["a", "a", "b"], ["a", "b", "b"]])
    rel = retrieval.relevance(query, neighbours)
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
    ctx = EvalContext(query, ref, np.array([[0, 1, -1]]), np.zeros((1, 3)), ["category", "subcategory"], 3)
    out = PrecisionAtK().evaluate(ctx)
    assert out["category_precision_at_3"] == 2 / 3
    assert out["subcategory_precision_at_3"] == 1 / 3
    assert [out[f"subcategory_precision_rank_{i}"] for i in (1, 2, 3)] == [1.0, 0.0, 0.0]
