"""Answers as products, not photos: k distinct products, near-duplicates collapsed, queries of several terms.

    keys = AnswerKeys.of(catalog, duplicates)        # product per row; near-duplicate group per row
    keep = keys.distinct(rows, want, collapse=True)  # positions of the first `want` distinct answers
    d = product_distance(rows, dist, keys.product, "mean")   # a product's distance from its photos'

A catalog's `product_id` column groups its photos (default: each item its own product). An answer's
distance is its best photo's (`best`) or the mean over all its photos that may be answers (`mean`);
the photo shown is the best one either way. With duplicates collapsed, an answer whose photo is in
the near-duplicate group (`python -m harness.dedup`) of an answer above it is left out: one per group.

A query of several terms (`[{"image": …, "weight": 1.0}, {"text": "no stripes", "weight": -0.3}]`)
is combined in the embedding space as Marqo does: the weighted sum of the unit-length term vectors,
(rescaled to the positive terms' length, so a distance keeps its scale), or, for several photos of one
product, `fuse`d: each term answered on its own, the answers merged by weighted reciprocal-rank fusion.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.data.catalog import product_ids
from harness.serving.requests import BadQuery, json_text

DISTANCES = ("best", "mean")
COMBINES = ("mean", "fuse")
RRF_K = 60  # reciprocal-rank fusion's constant (Cormack et al., 2009), as Elasticsearch and MongoDB use
MAX_TERM_CHARS = 20 << 20  # one request's terms as JSON: MAX_ROWS photos of 10 MB in base64, about


@dataclass(frozen=True)
class AnswerKeys:
    """Per catalog row: its product's code, and its near-duplicate group's (its own row when it has none)."""
    product: np.ndarray
    group: np.ndarray | None  # None: the model carries no near-duplicate groups
    most_photos: int          # the most photos one product has
    largest_group: int

    @classmethod
    def of(cls, catalog: pd.DataFrame, duplicates: pd.DataFrame | None = None) -> "AnswerKeys":
        product = pd.factorize(product_ids(catalog))[0]
        group, largest = None, 1
        if duplicates is not None:
            by_item = dict(zip(duplicates["item_id"].astype(str), duplicates["group"].astype(int)))
            known = catalog["item_id"].astype(str).map(by_item)
            # items the groups do not name (added since dedup ran) are their own group
            group = np.where(known.notna(), known.fillna(-1).astype(np.int64), -1)
            singles = group < 0
            group[singles] = group.max(initial=-1) + 1 + np.arange(int(singles.sum()))
            group = pd.factorize(group)[0]
            largest = int(np.bincount(group).max(initial=1))
        return cls(product, group, int(np.bincount(product).max(initial=1)), largest)

    @property
    def one_per_product(self) -> bool:
        return self.most_photos == 1

    def depth(self, want: int, collapse: bool) -> int:
        """Photos that surely hold `want` distinct answers (when the catalog has them): each photo passed
        over shares the product, or the group, of an answer kept before it."""
        return want * (self.most_photos + (self.largest_group - 1 if collapse else 0))

    def distinct(self, rows: np.ndarray, want: int, collapse: bool = False) -> np.ndarray:
        """Positions in `rows` (catalog rows, nearest first) of the first `want` answers that are distinct
        products and, with `collapse`, not in the near-duplicate group of an answer kept before."""
        if collapse and self.group is None:
            raise BadQuery("collapse_duplicates: this model has no near-duplicate groups (run python -m "
                           "harness.dedup before the run that logs it)")
        if self.one_per_product and not collapse:
            return np.arange(min(want, len(rows)))
        seen_product, seen_group, keep = set(), set(), []
        for pos, row in enumerate(rows):
            product = self.product[row]
            group = self.group[row] if collapse else None
            if product in seen_product or group in seen_group:
                continue
            seen_product.add(product)
            if collapse:
                seen_group.add(group)
            keep.append(pos)
            if len(keep) == want:
                break
        return np.asarray(keep, dtype=np.int64)


def product_distance(rows: np.ndarray, dist: np.ndarray, product: np.ndarray, rule: str) -> dict[int, float]:
    """A product's distance from the distances of its photos among `rows`: the smallest (`best`) or
    their mean (`mean`). {product code: distance}."""
    codes = product[rows]
    frame = pd.DataFrame({"p": codes, "d": dist.astype(np.float64)})
    agg = frame.groupby("p", sort=False)["d"].min() if rule == "best" else frame.groupby("p", sort=False)["d"].mean()
    return agg.to_dict()


def fuse(rankings: list[list[int]], weights: list[float]) -> dict[int, float]:
    """Weighted reciprocal-rank fusion: {answer: Σ weight / (RRF_K + rank)} over the terms' rankings."""
    score: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights):
        for rank, answer in enumerate(ranking, start=1):
            score[answer] = score.get(answer, 0.0) + weight / (RRF_K + rank)
    return score


# -- queries of several terms ----------------------------------------------------------------------
@dataclass(frozen=True)
class Term:
    kind: str      # "image" | "text"
    value: object  # base64 / bytes / a Path (in-process) | the words
    weight: float


def parse_terms(value, max_terms: int) -> list[Term]:
    """A request's terms (a list of {"image" | "text": …, "weight": w}, or its JSON text), checked:
    one of image / text per term, a finite non-zero weight (default 1), at least one positive."""
    if isinstance(value, list) and value and all(isinstance(t, Term) for t in value):
        return value  # parsed already (the MLflow model counts a request's terms first)
    value = json_text(value, MAX_TERM_CHARS, "terms",
                      'a JSON list, e.g. [{"image": "<base64>"}, {"text": "no stripes", "weight": -0.3}]')
    if not isinstance(value, list) or not value:
        raise BadQuery("terms must be a non-empty list of {\"image\": …} or {\"text\": …} objects")
    if len(value) > max_terms:
        raise BadQuery(f"{len(value)} terms in one query; at most {max_terms} (serving.max_rows)")
    terms = []
    for n, term in enumerate(value, start=1):
        if not isinstance(term, dict):
            raise BadQuery(f"term {n}: an object with an image or a text, got {type(term).__name__}")
        kinds = [key for key in ("image", "text") if term.get(key) is not None]
        unknown = set(term) - {"image", "text", "weight"}
        if len(kinds) != 1 or unknown:
            raise BadQuery(f"term {n}: exactly one of image, text (and an optional weight), got {sorted(map(str, term))}")
        weight = term.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight == 0:
            raise BadQuery(f"term {n}: weight must be a finite non-zero number, got {weight!r}")
        if kinds[0] == "text" and not isinstance(term["text"], str):
            raise BadQuery(f"term {n}: the text must be a string")
        terms.append(Term(kinds[0], term[kinds[0]], float(weight)))
    if not any(t.weight > 0 for t in terms):
        raise BadQuery("terms: at least one needs a positive weight (a query only of what to avoid has no direction)")
    return terms


def combine(vectors: np.ndarray, weights) -> np.ndarray:
    """(T, D) term vectors → one query: Σ w·v/|v|, rescaled to the mean length of the positive terms."""
    vectors, weights = np.asarray(vectors, np.float64), np.asarray(weights, np.float64)
    norms = np.linalg.norm(vectors, axis=1)
    if np.any(norms == 0):
        raise BadQuery(f"term {int(np.flatnonzero(norms == 0)[0]) + 1} embeds to a zero vector")
    summed = (weights[:, None] * vectors / norms[:, None]).sum(axis=0)
    length = np.linalg.norm(summed)
    if not length > 1e-6 * np.abs(weights).sum():
        raise BadQuery("the terms cancel out: their weighted sum is a zero vector")
    return (summed / length * norms[weights > 0].mean()).astype(np.float32)
