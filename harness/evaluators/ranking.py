"""Standard retrieval metrics from the full ranking, and precision-recall curves (scikit-learn)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import average_precision_score, precision_recall_curve  # noqa: E402

from harness.evaluators.base import EvalContext, Evaluator  # noqa: E402
from harness.metrics import retrieval  # noqa: E402


class Ranking(Evaluator):
    """{level}_recall_at_{k}, _map_at_r, _r_precision, _mrr, _average_precision."""

    def __init__(self, max_depth: int = 5000):
        self.max_depth = max_depth  # ranking depth cap for very large catalogs

    def _depth(self, ctx: EvalContext) -> int:
        return min(self.max_depth, max(len(refs) for _, refs in ctx.folds))

    def _relevance(self, ctx, level):
        _, ranking = ctx.ranking(self._depth(ctx))
        rel = retrieval.relevance(ctx.query_labels(level), ctx.labels(level, ranking))
        n_rel = np.minimum(ctx.n_relevant(level), ranking.shape[1])
        return rel, n_rel

    def evaluate(self, ctx):
        out = {}
        for level in ctx.levels:
            rel_all, n_rel = self._relevance(ctx, level)
            y, score = self._pairs(ctx, rel_all)
            out[f"{level}_average_precision"] = float(average_precision_score(y, score)) if y.any() else float("nan")
            has = n_rel > 0  # a query whose label has no catalog item cannot be ranked: excluded, counted
            out[f"{level}_queries_without_relevant"] = int((~has).sum())
            rel, n_rel = rel_all[has], n_rel[has]
            out[f"{level}_recall_at_{ctx.k}"] = retrieval.recall_at_k(rel, ctx.k)
            out[f"{level}_map_at_r"] = retrieval.map_at_r(rel, n_rel)
            out[f"{level}_r_precision"] = retrieval.r_precision(rel, n_rel)
            out[f"{level}_mrr"] = retrieval.mrr(rel)
        return out

    def _pairs(self, ctx, rel):
        """Every ranked (query, catalog item) pair: same label? (from `rel`), and its score (−distance)."""
        dist, ranking = ctx.ranking(self._depth(ctx))
        mask = ranking >= 0
        return rel[mask], -dist[mask]

    def write_artifacts(self, ctx, out_dir):
        fig, ax = plt.subplots(figsize=(5, 4))
        for level in ctx.levels:
            y, score = self._pairs(ctx, self._relevance(ctx, level)[0])
            if y.any():
                precision, recall, _ = precision_recall_curve(y, score)
                ax.plot(recall, precision, label=f"{level} (AP {average_precision_score(y, score):.3f})")
        ax.set(xlabel="recall", ylabel="precision", title="Precision-recall over ranked pairs", xlim=(0, 1), ylim=(0, 1.02))
        ax.legend()
        fig.tight_layout()
        path = out_dir / "precision_recall.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return [path]
