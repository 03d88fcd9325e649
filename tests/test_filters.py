"""Filters: hand-checked masks, and a filtered search equal to brute force on the matching items."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import cdist

from harness.metrics import Cosine, Euclidean
from harness.search import GroupedIndex
from harness.serving.filters import MAX_CONDITIONS, MAX_VALUES, CatalogFilter
from harness.serving.requests import BadQuery

CATALOG = pd.DataFrame({
    "item_id": ["a", "b", "c", "d", "e", "f"],
    "path": ["/x/a.jpg"] * 6,
    "category": ["Footwear", "Apparel", "Footwear", "Apparel", "Bags", "Footwear"],
    "colour": ["Red", "Blue", "Blue", "Green", "Red", "Black"],
    "price": ["49.5", "50", "12", "", "80", "50.0"],   # read from CSV: strings, one missing
    "in_stock": ["True", "false", "TRUE", "False", "true", "0"],
})


@pytest.mark.parametrize("filters,expected", [
    ({"category": "Footwear"}, "acf"),
    ({"colour": ["Red", "Blue"]}, "abce"),
    ({"price": {"lt": 50}}, "ac"),                       # "" is no price: never in a range
    ({"price": {"ge": 50, "le": 80}}, "bef"),
    ({"price": 50}, "bf"),                               # a number equals "50" and "50.0"
    ({"in_stock": True}, "ace"),
    ({"in_stock": False}, "bdf"),
    ({"category": "Footwear", "colour": ["Red", "Blue"], "price": {"lt": 50}, "in_stock": True}, "ac"),
    ({"category": "Hats"}, ""),
    ({}, "abcdef"),
])
def test_masks_by_hand(filters, expected):
    f = CatalogFilter(CATALOG)
    for given in (filters, json.dumps(filters)):  # a dict in-process, its JSON over REST
        mask = f.mask(given)
        found = "abcdef" if mask is None else "".join(CATALOG["item_id"][mask])
        assert found == expected, given


@pytest.mark.parametrize("filters,message", [
    ({"size": "M"}, "not a catalog column"),
    ({"path": "/x/a.jpg"}, "not a catalog column"),      # the server's paths are not searchable
    ("[1, 2]", "must be an object"),
    ("{not json", "must be a JSON object"),
    ({"price": {"between": [1, 2]}}, "a range takes lt, le, gt, ge"),
    ({"price": {"lt": "50"}}, "needs a finite number"),
    ({"price": {"lt": float("nan")}}, "needs a finite number"),
    ({"colour": []}, "not empty"),
    ({"colour": [{"a": 1}]}, "a list of strings"),
    ({"colour": None}, "a value, a list of values or a range"),
    ({"colour": True}, "not true/false"),
    ({f"c{i}": "x" for i in range(MAX_CONDITIONS + 1)}, f"at most {MAX_CONDITIONS}"),
    ({"colour": ["x"] * (MAX_VALUES + 1)}, f"at most {MAX_VALUES}"),
    ("x" * 20_000, "longer than"),
])
def test_bad_filters_are_one_line(filters, message):
    with pytest.raises(BadQuery, match=message) as err:
        CatalogFilter(CATALOG).mask(filters)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("metric", [Cosine(), Euclidean()])
@pytest.mark.parametrize("keep", [0.3, 0.002])  # the second keeps fewer items than k
@pytest.mark.parametrize("kind", ["exact", "ivf"])  # an approximate structure (one cell of 16 scanned) changes nothing
def test_filtered_search_equals_brute_force_on_the_matching_items(metric, keep, kind):
    from functools import partial

    from harness.search.ivf import IVFIndex

    rng = np.random.default_rng(0)
    ref, query = rng.normal(size=(2000, 32)).astype(np.float32), rng.normal(size=(7, 32)).astype(np.float32)
    allowed = rng.random(2000) < keep
    groups = rng.choice(["x", "y"], 2000)
    k = 10
    index = GroupedIndex(ref, metric, groups=groups, index=None if kind == "exact" else partial(IVFIndex, nlist=16, nprobe=1))
    for query_groups in (None, ["x"] * 7):
        dist, idx = index.search(query, k, query_groups, allowed=allowed)
        subset = np.flatnonzero(allowed & (groups == "x") if query_groups else allowed)
        full = cdist(query, ref[subset], "cosine" if isinstance(metric, Cosine) else "euclidean")  # brute force
        order = np.argsort(full, axis=1, kind="stable")[:, :k]
        n = min(k, len(subset))
        np.testing.assert_array_equal(idx[:, :n], subset[order[:, :n]])
        assert (idx[:, n:] == -1).all() and np.isinf(dist[:, n:]).all()
        np.testing.assert_allclose(dist[:, :n], np.take_along_axis(full, order[:, :n], 1), rtol=1e-4, atol=1e-5)
