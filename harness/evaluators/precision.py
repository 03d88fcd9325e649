"""The study's score: share of the k neighbours that share the query's label, per level and rank."""
from __future__ import annotations

from harness.evaluators.base import EvalContext, Evaluator
from harness.metrics import retrieval


class PrecisionAtK(Evaluator):
    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        out = {}
        for level in ctx.levels:
            rel = retrieval.relevance(ctx.query_labels(level), ctx.neighbour_labels(level))
            out[f"{level}_precision_at_{ctx.k}"] = retrieval.precision_at_k(rel)
            for rank, p in enumerate(retrieval.precision_per_rank(rel), start=1):
                out[f"{level}_precision_rank_{rank}"] = float(p)
        return out

    def write_artifacts(self, ctx, out_dir):
        paths = []
        for level in ctx.levels:
            rel = retrieval.relevance(ctx.query_labels(level), ctx.neighbour_labels(level))
            path = out_dir / f"per_label_{level}.csv"
            retrieval.per_label_precision(ctx.query_labels(level), rel).to_csv(path, index=False)
            paths.append(path)
        return paths
