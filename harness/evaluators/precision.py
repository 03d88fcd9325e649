"""The study's score: share of the k neighbours that share the query's label, per level and rank.

Every query counts, one whose label has no other catalog item too (it scores 0)."""
from __future__ import annotations

import pandas as pd

from harness.evaluators.base import EvalContext, Evaluator
from harness.metrics import retrieval


class PrecisionAtK(Evaluator):
    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        out = {}
        for level in ctx.levels:
            rel = ctx.relevant(level, ctx.indices)
            out[f"{level}_precision_at_{ctx.k}"] = retrieval.precision_at_k(rel)
            for rank, p in enumerate(retrieval.precision_per_rank(rel), start=1):
                out[f"{level}_precision_rank_{rank}"] = float(p)
        return out

    def artifacts(self, ctx):
        out, per_query = {}, {"item_id": ctx.items["item_id"].to_numpy()[ctx.query_rows]}
        for level in ctx.levels:
            rel = ctx.relevant(level, ctx.indices)
            out[f"per_label_{level}.csv"] = retrieval.per_label_precision(ctx.query_labels(level), rel)
            per_query[f"{level}_precision_at_{ctx.k}"] = rel.mean(axis=1)
        # Per-query scores let the sweep report compare runs pairwise (bootstrap intervals).
        out["per_query.csv"] = pd.DataFrame(per_query)
        return out
