"""Standard retrieval metrics from the full ranking, and precision-recall curves over ranked pairs."""
from __future__ import annotations

import functools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from harness.evaluators.base import EvalContext, Evaluator  # noqa: E402
from harness.metrics import retrieval  # noqa: E402

CURVE_POINTS = 2000  # plotted points per curve; the AP uses them all
MEMO_FOLDS = 32  # sorted pairs kept for the folds of the run being evaluated


class Ranking(Evaluator):
    """{level}_recall_at_{k}, _map_at_r, _r_precision, _mrr, _average_precision."""

    def __init__(self, max_depth: int = 5000):
        self.max_depth = self.depth = max_depth  # ranking depth cap for very large catalogs
        self._memo: dict = {}

    def evaluate(self, ctx):
        out = {}
        for level, (rel, n_rel, ap, _) in self._levels(ctx).items():
            out[f"{level}_average_precision"] = ap
            has = n_rel > 0  # a query whose label has no catalog item cannot be ranked: excluded, counted
            out[f"{level}_queries_without_relevant"] = int((~has).sum())
            rel, n_rel = rel[has], n_rel[has]
            out[f"{level}_recall_at_{ctx.k}"] = retrieval.recall_at_k(rel, ctx.k)
            out[f"{level}_map_at_r"] = retrieval.map_at_r(rel, n_rel)
            out[f"{level}_r_precision"] = retrieval.r_precision(rel, n_rel)
            out[f"{level}_mrr"] = retrieval.mrr(rel)
        return out

    @functools.lru_cache(maxsize=2)  # evaluate() and then write_artifacts() on the pooled context
    def _levels(self, ctx: EvalContext) -> dict:
        """level → (relevant (Q, depth), n_relevant (Q,), average precision, plotted (recall, precision))."""
        depth = min(self.max_depth, max(len(refs) for _, refs in ctx.folds))
        _, ranking = ctx.ranking(depth)
        parts = [self._fold_pairs(ctx, positions, refs, depth) for positions, refs in ctx.folds]
        dist = np.concatenate([d for d, _ in parts])
        # Each fold's pairs are sorted already: a stable sort of the concatenation only merges them.
        order = np.argsort(dist, kind="stable") if len(parts) > 1 else slice(None)
        dist = dist[order]
        out = {}
        for level in ctx.levels:
            precision, recall = retrieval.pr_curve(np.concatenate([rel[level] for _, rel in parts])[order], dist)
            step = max(1, len(recall) // CURVE_POINTS)
            plotted = (np.append(recall[::step], recall[-1:]), np.append(precision[::step], precision[-1:]))
            n_rel = np.minimum(ctx.n_relevant(level), depth)
            out[level] = (ctx.relevant(level, ranking), n_rel, retrieval.average_precision(precision, recall), plotted)
        return out

    def _fold_pairs(self, ctx, positions, refs, depth) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One fold's ranked (query, item) pairs sorted nearest first: distances and, per level, relevance.
        Memoised: the pooled context and the fold's own context share them."""
        key = (ctx.query_rows[positions].tobytes(), refs.tobytes(), min(depth, len(refs)), tuple(ctx.levels))
        if key not in self._memo:
            dist, ranking = ctx.ranking(depth)
            dist, ranking = dist[positions], ranking[positions]
            found = ranking >= 0
            order = np.argsort(dist[found], kind="stable")
            self._memo[key] = (dist[found][order],
                               {lv: ctx.relevant(lv, ranking, positions)[found][order] for lv in ctx.levels})
            while len(self._memo) > MEMO_FOLDS:
                self._memo.pop(next(iter(self._memo)))
        return self._memo[key]

    def write_artifacts(self, ctx, out_dir):
        fig, ax = plt.subplots(figsize=(5, 4))
        for level, (*_, ap, (recall, precision)) in self._levels(ctx).items():
            if np.isfinite(ap):
                ax.plot(recall, precision, label=f"{level} (AP {ap:.3f})")
        ax.set(xlabel="recall", ylabel="precision", title="Precision-recall over ranked pairs", xlim=(0, 1), ylim=(0, 1.02))
        ax.legend(loc="lower left")
        fig.tight_layout()
        path = out_dir / "precision_recall.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return [path]
