"""Standard retrieval metrics from the full ranking, and precision-recall curves over ranked pairs."""
from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

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
        parts = self._folds(ctx, depth)
        # Each fold's pairs are sorted already: a stable sort of the concatenation only merges them.
        keys = np.sort(np.concatenate([key for key, _ in parts]), kind="stable") if len(parts) > 1 else parts[0][0]
        ends = retrieval.tie_ends((keys >> np.uint64(32)).astype(np.uint32))
        flags = keys.astype(np.uint32)  # the low half: relevance bits
        out = {}
        for bit, level in enumerate(ctx.levels):
            hits = retrieval.hits_at((flags >> np.uint32(bit)) & np.uint32(1), ends)
            shown = np.unique(np.append(np.arange(0, len(ends), max(1, len(ends) // CURVE_POINTS)), len(ends) - 1))
            precision, recall = retrieval.curve_from_hits(hits[shown], ends[shown])
            relevant = np.zeros((len(ctx.query_rows), depth), bool)
            for (positions, _), (_, fold_relevant) in zip(ctx.folds, parts):
                relevant[positions, : fold_relevant[level].shape[1]] = fold_relevant[level]
            out[level] = (relevant, np.minimum(ctx.n_relevant(level), depth),
                          retrieval.average_precision_from_hits(hits, ends), (recall, precision))
        return out

    def _folds(self, ctx, depth) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Per fold: its ranked (query, item) pairs as uint64 keys sorted nearest first (distance order in
        the high half, one relevance bit per level in the low), and its relevance matrix per level.
        Memoised (the pooled context and each fold's own context share them); folds run in parallel."""
        if len(ctx.levels) > 32:
            raise ValueError("the ranking evaluator packs one relevance bit per level: at most 32 levels")
        keys = [(ctx.query_rows[positions].tobytes(), refs.tobytes(), min(depth, len(refs)), tuple(ctx.levels))
                for positions, refs in ctx.folds]
        todo = [(key, positions, refs) for key, (positions, refs) in zip(keys, ctx.folds) if key not in self._memo]
        if todo:
            dist, ranking = ctx.ranking(depth)

            def pairs(job):
                _, positions, refs = job
                rows = ranking[positions, : min(depth, len(refs))]  # the same width whichever context asks first
                found = rows >= 0
                relevant = {lv: ctx.relevant(lv, rows, positions) for lv in ctx.levels}
                key = retrieval.order_key(dist[positions, : rows.shape[1]][found]).astype(np.uint64) << np.uint64(32)
                for bit, lv in enumerate(ctx.levels):
                    key |= relevant[lv][found].astype(np.uint64) << np.uint64(bit)
                return np.sort(key, kind="stable"), relevant  # rows are sorted runs: a merge, no GIL held

            with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
                for (key, *_), value in zip(todo, pool.map(pairs, todo)):
                    self._memo[key] = value
            while len(self._memo) > max(MEMO_FOLDS, len(keys)):
                self._memo.pop(next(iter(self._memo)))
        return [self._memo[key] for key in keys]

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
