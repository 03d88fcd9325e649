"""Answers as products: k distinct products by the best-photo and mean rules, near-duplicates collapsed,
queries of several weighted terms; each against a table worked out by hand."""
from __future__ import annotations

import base64
import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from harness.serving.products import AnswerKeys, combine, fuse, parse_terms
from harness.serving.requests import BadQuery, decode_upload
from harness.serving.searcher import Searcher

# Six photos of four products on a line (euclidean distance to the query at x = 0 is x):
#   A: x=1, x=9   B: x=2, x=3   C: x=4   D: x=6
CATALOG = pd.DataFrame({
    "item_id": ["a1", "a2", "b1", "b2", "c1", "d1"],
    "product_id": ["A", "A", "B", "B", "C", "D"],
    "path": [f"/catalog/{i}.jpg" for i in ["a1", "a2", "b1", "b2", "c1", "d1"]],
    "category": ["Apparel"] * 6,
    "subcategory": ["Topwear"] * 6,
    "colour": ["Red", "Blue", "Red", "Red", "Red", "Red"],
})
X = np.array([1, 9, 2, 3, 4, 6], dtype=np.float32)
FEATURES = np.stack([X, np.zeros_like(X)], axis=1)
QUERY = np.array([[0.0, 0.0]], dtype=np.float32)


@pytest.fixture(scope="module")
def hand_searcher(served):
    """The served model's extractor over the hand catalog, euclidean: `make(**products)`."""
    def make(distance="best", query="mean", duplicates=None, candidates=50):
        settings = dataclasses.replace(served["searcher"].settings, metric={"_target_": "harness.metrics.Euclidean"},
                                       index=None, search=None, products={"distance": distance, "query": query},
                                       rerank_candidates=candidates, root="/catalog")
        return Searcher(settings, CATALOG, FEATURES, duplicates=duplicates)
    return make


def answers(searcher, k=3, **options):
    table = searcher.search_embeddings(QUERY, k, **options)[0]
    return list(zip(table["product_id"], table["item_id"], np.round(table["distance"], 6)))


def test_best_photo_rule_by_hand(hand_searcher):
    # A's best photo 1, B's 2, C 4, D 6: the photo shown is the one that matched
    assert answers(hand_searcher("best")) == [("A", "a1", 1.0), ("B", "b1", 2.0), ("C", "c1", 4.0)]
    assert answers(hand_searcher("best"), k=6) == [("A", "a1", 1), ("B", "b1", 2), ("C", "c1", 4), ("D", "d1", 6)]


def test_mean_rule_by_hand(hand_searcher):
    # means: A (1 + 9) / 2 = 5, B (2 + 3) / 2 = 2.5, C 4, D 6; each shown by its best photo
    assert answers(hand_searcher("mean")) == [("B", "b1", 2.5), ("C", "c1", 4.0), ("A", "a1", 5.0)]
    # only the photos a filter keeps count: without the blue a2, A's mean is 1
    assert answers(hand_searcher("mean"), filters={"colour": "Red"}) == [("A", "a1", 1.0), ("B", "b1", 2.5), ("C", "c1", 4.0)]
    # the candidates are the rerank_candidates nearest products by their best photo
    assert answers(hand_searcher("mean", candidates=2), k=2) == [("B", "b1", 2.5), ("A", "a1", 5.0)]


def test_without_a_product_column_each_item_is_a_product(hand_searcher, served):
    keys = AnswerKeys.of(CATALOG.drop(columns="product_id"))
    assert keys.one_per_product and len(set(keys.product)) == 6
    searcher = hand_searcher("mean")
    plain = Searcher(searcher.settings, CATALOG.drop(columns="product_id"), FEATURES)
    table = plain.search_embeddings(QUERY, 6)[0]
    assert list(table["item_id"]) == ["a1", "b1", "b2", "c1", "d1", "a2"]


def test_collapsed_answers_hold_one_item_per_group(hand_searcher):
    groups = pd.DataFrame({"item_id": ["b1", "c1", "a2", "d1"], "group": [0, 0, 1, 1]})
    searcher = hand_searcher("best", duplicates=groups)
    # c1 is a near-duplicate of b1 (answered above it): left out; a2 shares a product with a1 already
    assert answers(searcher, k=6, collapse_duplicates=True) == [("A", "a1", 1.0), ("B", "b1", 2.0), ("D", "d1", 6.0)]
    table = searcher.search_embeddings(QUERY, 6, collapse_duplicates=True)[0]
    group_of = dict(zip(groups["item_id"], groups["group"]))
    assert len({group_of.get(i, i) for i in table["item_id"]}) == len(table)
    assert answers(searcher, k=4) == [("A", "a1", 1), ("B", "b1", 2), ("C", "c1", 4), ("D", "d1", 6)]  # not asked
    with pytest.raises(BadQuery, match="no near-duplicate groups"):
        hand_searcher("best").search_embeddings(QUERY, 3, collapse_duplicates=True)


def test_fusion_of_several_photos_by_hand(hand_searcher):
    # two query photos at x = 0 and x = 10: rankings A B C D and A D C B (A's best 1 then 9 → 1;
    # by x = 10: a2 1, d1 4, c1 6, b2 7). Weighted RRF (k = 60), weights 1 and 1:
    rrf = fuse([[0, 1, 2, 3], [0, 3, 2, 1]], [1.0, 1.0])
    assert rrf[0] == pytest.approx(2 / 61) and rrf[1] == pytest.approx(1 / 62 + 1 / 64)
    assert rrf[3] == pytest.approx(1 / 64 + 1 / 62) and rrf[2] == pytest.approx(2 / 63)
    searcher = hand_searcher("best", "fuse")
    queries = np.array([[0.0, 0.0], [10.0, 0.0]], dtype=np.float32)
    table = searcher._query_table(searcher.served, queries, [1.0, 1.0], 4, False, None, 0.0, None, False)
    # A 2/61 > B = D 1/62 + 1/64 (0.031754) > C 2/63 (0.031746)
    assert list(table["product_id"]) == ["A", "B", "D", "C"]  # B and D tie: the nearer photo first (b1 2 < d1 4)
    np.testing.assert_allclose(table["fused_score"], [2 / 61, 1 / 62 + 1 / 64, 1 / 64 + 1 / 62, 2 / 63])
    np.testing.assert_allclose(table["distance"], [1, 2, 4, 4], atol=1e-5)  # each product's nearest photo to any query photo


def test_terms_are_checked_with_one_line():
    image = base64.b64encode(b"x").decode()
    assert [t.weight for t in parse_terms(json.dumps([{"image": image}, {"text": "no stripes", "weight": -0.3}]), 16)] == [1.0, -0.3]
    for bad, message in [("[", "JSON list"), ([], "non-empty list"), ([{"text": "x", "weight": 0}], "non-zero"),
                         ([{"text": "x", "weight": float("inf")}], "finite"), ([{"image": image, "text": "x"}], "exactly one"),
                         ([{"text": "x", "weight": -1}], "positive weight"), ([{"text": "x", "colour": 1}], "exactly one"),
                         ([{"text": "x"}] * 17, "at most 16"), (["x"], "an object")]:
        with pytest.raises(BadQuery, match=message) as err:
            parse_terms(bad, 16)
        assert "\n" not in str(err.value)


def test_combination_by_hand():
    vectors = np.array([[3.0, 4.0], [0.0, 2.0]])
    # (1·(0.6, 0.8) − 0.5·(0, 1)) = (0.6, 0.3), unit length then |(3, 4)| = 5 long
    np.testing.assert_allclose(combine(vectors, [1.0, -0.5]), np.array([0.6, 0.3]) / np.hypot(0.6, 0.3) * 5, rtol=1e-6)
    with pytest.raises(BadQuery, match="cancel out"):
        combine(np.array([[1.0, 0.0], [2.0, 0.0]]), [1.0, -1.0])


def b64(path) -> str:
    return base64.b64encode(open(path, "rb").read()).decode()


def test_weighted_query_equals_the_hand_combined_vectors_neighbours(served_clip):
    model, searcher = served_clip["model"], served_clip["searcher"]
    photo = served_clip["catalog"] / "images" / "circle_red_0.jpg"
    terms = [{"image": b64(photo), "weight": 1.0}, {"text": "no stripes", "weight": -0.3}]
    out = model.predict(pd.DataFrame({"terms": [json.dumps(terms)]}), params={"k": 5})
    image_emb = searcher.embed([decode_upload(photo, searcher.preprocess.decode_scale)])[0]
    text_emb = searcher.embed_texts(["no stripes"])[0]
    by_hand = image_emb / np.linalg.norm(image_emb) - 0.3 * text_emb / np.linalg.norm(text_emb)
    by_hand = by_hand / np.linalg.norm(by_hand) * np.linalg.norm(image_emb)
    expected = searcher.search_embeddings(by_hand[None], 5)[0]
    assert list(out["item_id"]) == list(expected["item_id"]) and (out["query"] == 0).all()
    np.testing.assert_allclose(out["distance"], expected["distance"], atol=1e-5)


def test_a_negative_weight_moves_results_away_from_the_text(served_clip):
    searcher = served_clip["searcher"]
    photo = b64(served_clip["catalog"] / "images" / "square_blue_1.jpg")
    text = searcher.embed_texts(["a red circle"])[0]
    catalog = searcher.served.catalog.set_index("item_id")
    features = searcher.served.features
    position = {item: n for n, item in enumerate(catalog.index)}

    def text_similarity(weight):
        terms = [{"image": photo}] + ([{"text": "a red circle", "weight": weight}] if weight else [])
        items = searcher.search_terms(terms, k=8)["item_id"]
        rows = features[[position[i] for i in items]]
        return float(np.mean(rows @ text / np.linalg.norm(rows, axis=1) / np.linalg.norm(text))), set(items)

    alone, plain = text_similarity(0)
    away, avoided = text_similarity(-1.0)
    toward, _ = text_similarity(1.0)
    assert avoided != plain and away < alone < toward


def test_a_backbone_without_a_text_tower_names_the_term_it_cannot_embed(served):
    photo = b64(served["catalog"] / "images" / "circle_red_0.jpg")
    terms = json.dumps([{"image": photo}, {"text": "no stripes", "weight": -0.3}])
    with pytest.raises(MlflowException, match=r"term 2 \(text 'no stripes'\): backbone .* has no text tower") as err:
        served["model"].predict(pd.DataFrame({"terms": [terms]}))
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"  # the REST API's 400
    # photos alone: several photos of one product, their vectors averaged
    out = served["model"].predict(pd.DataFrame({"terms": [json.dumps([{"image": photo}, {"image": photo}])]}), params={"k": 3})
    single = served["model"].predict(pd.DataFrame({"image": [photo]}), params={"k": 3})
    assert list(out["item_id"]) == list(single["item_id"])
    with pytest.raises(MlflowException, match="18 queries in one request; at most 16"):
        served["model"].predict(pd.DataFrame({"terms": [json.dumps([{"image": photo}] * 9)] * 2}))


# -- the product evaluator ------------------------------------------------------------------------
def test_product_recall_against_a_hand_table():
    """Six photos on a line, two folds (euclidean distance = the gap):
    rows  0 P x=0 · 1 P x=10 · 2 Q x=2 · 3 Q x=3 · 4 R x=20 · 5 R x=21
    fold 0: queries 0, 2 among 1 3 4 5 — row 0 ranks 3 (Q, 3), 1 (P, 10): its product at rank 2;
            row 2 ranks 3 (Q, 1) first: rank 1.
    fold 1: queries 4, 1 among 2 3 5 — row 4 ranks 5 (R, 1) first: rank 1; row 1's P is not there."""
    from harness.data.catalog import Catalog
    from harness.evaluate import evaluate
    from harness.evaluators.product import ProductRecall
    from harness.metrics import Euclidean
    from harness.protocols import Fold

    items = pd.DataFrame({"path": [f"/x/{i}.jpg" for i in range(6)], "item_id": [str(i) for i in range(6)],
                          "product_id": list("PPQQRR"), "category": ["c"] * 6})
    emb = np.array([[0, 0], [10, 0], [2, 0], [3, 0], [20, 0], [21, 0]], dtype=np.float32)
    folds = [Fold(np.array([0, 2]), np.array([1, 3, 4, 5])), Fold(np.array([4, 1]), np.array([2, 3, 5]))]
    result = evaluate(emb, Catalog(items, ["category"]), folds, Euclidean(), {"product": ProductRecall([1, 2, 3])}, 2)
    f0, f1 = result.per_fold
    assert (f0["product_recall_at_1"], f0["product_recall_at_2"], f0["product_queries"]) == (0.5, 1.0, 2)
    assert (f1["product_recall_at_1"], f1["product_queries"], f1["product_queries_not_findable"]) == (1.0, 1, 1)
    assert result.metrics["product_recall_at_1"] == pytest.approx(2 / 3)   # pooled over the 3 findable queries
    assert result.metrics["product_recall_at_1_mean"] == pytest.approx(0.75)  # and per fold
    assert result.metrics["product_recall_at_3"] == 1.0
    with pytest.raises(Exception, match="no query has another photo of its product"):
        evaluate(emb, Catalog(items.drop(columns="product_id"), ["category"]), folds, Euclidean(),
                 [ProductRecall()], 2)


def test_the_product_evaluator_composes_from_the_config(cfg_factory):
    from harness.config import instantiate

    cfg = cfg_factory("evaluator=product")
    evaluators = {name: instantiate(node) for name, node in cfg.evaluator.items()}
    assert evaluators["product"].ks == [1, 5, 10, 20] and "precision" in evaluators
