"""Same-product retrieval (the DeepFashion In-shop protocol) on a catalog with several photos per product.

For each query photo: is one of its k nearest catalog photos of the query's own product (the catalog's
`product_id` column)? Recall@k is the share of queries for which it is, over the queries whose product
has another photo in their fold's catalog (the others cannot be found, and are counted apart).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from harness.data.catalog import product_ids
from harness.errors import HarnessError
from harness.evaluators.base import EvalContext, Evaluator


class ProductRecall(Evaluator):
    """product_recall_at_{k} for each k of `ks` (In-shop's published 1, 5, 10, 20, ...), product_queries."""

    def __init__(self, ks=(1, 5, 10, 20)):
        ks = list(ks)
        if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
            raise HarnessError(f"evaluator.product.ks must be whole numbers >= 1, got {ks!r}.")
        self.ks = sorted(set(ks))
        self.depth = max(self.ks)

    def _hits(self, ctx: EvalContext) -> tuple[np.ndarray, np.ndarray]:
        """(findable (Q,), hit (Q, depth)): has the query's product another photo in its fold's catalog;
        is the ranked photo of it."""
        codes = ctx.cached("product.codes", lambda: pd.factorize(product_ids(ctx.items))[0])
        query, rows = codes[ctx.query_rows], ctx.ranked_rows
        findable = np.zeros(len(query), dtype=bool)
        for _, positions, refs in ctx.folds:
            in_catalog = np.bincount(codes[refs], minlength=codes.max(initial=0) + 1)
            findable[positions] = in_catalog[query[positions]] - ctx.own(positions) > 0
        return findable, (codes[np.maximum(rows, 0)] == query[:, None]) & (rows >= 0)

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        findable, hit = self._hits(ctx)
        if not findable.any():
            raise HarnessError("evaluator=product: no query has another photo of its product in its catalog "
                               "(the manifest's product_id column names each photo's product; without it every "
                               "photo is its own product).")
        out = {f"product_recall_at_{k}": float(hit[findable, :k].any(axis=1).mean()) for k in self.ks}
        out["product_queries"] = int(findable.sum())
        out["product_queries_not_findable"] = int((~findable).sum())
        return out

    def artifacts(self, ctx):
        """Each findable query's hits at every k (the result card's intervals)."""
        findable, hit = self._hits(ctx)
        table = {"item_id": ctx.items["item_id"].to_numpy()[ctx.query_rows][findable]}
        table.update({f"product_recall_at_{k}": hit[findable, :k].any(axis=1).astype(float) for k in self.ks})
        return {"per_query_product.csv": pd.DataFrame(table)}
