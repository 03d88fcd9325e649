"""Standard retrieval metrics from the whole ranking, and the precision-recall curve over ranked pairs."""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from matplotlib.figure import Figure

from harness.errors import HarnessError
from harness.evaluators.base import EvalContext, Evaluator
from harness.metrics import retrieval

log = logging.getLogger(__name__)
CURVE_POINTS = 2000  # plotted points per curve; the pooled AP uses them all


class Ranking(Evaluator):
    """Per level: {level}_recall_at_{k}, _map_at_r, _r_precision, _mrr, _map (mean per-query average
    precision), _pooled_average_precision (one curve over every (query, item) pair), and the curve.

    `max_depth` (default: none, the whole ranking, so every value is exact) caps how many neighbours
    are ranked per query on very large catalogs. A level whose labels have more catalog items than the
    cap gets truncated values: that is logged once and counted in `{level}_truncated_queries`.
    """

    def __init__(self, max_depth: int | None = None):
        if max_depth is not None and (isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 1):
            raise HarnessError(f"evaluator.ranking.max_depth must be a positive whole number or null, got {max_depth!r}.")
        self.max_depth = self.depth = max_depth

    def evaluate(self, ctx):
        out = {}
        for level, (rel, n_rel, truncated, pooled_ap, _) in self._levels(ctx).items():
            has = n_rel > 0  # a query whose label has no catalog item cannot be ranked: excluded, counted
            out[f"{level}_queries_without_relevant"] = int((~has).sum())
            if self.max_depth is not None:
                out[f"{level}_truncated_queries"] = int(truncated.sum())
            out[f"{level}_pooled_average_precision"] = pooled_ap
            rel, n_rel, dist = rel[has], n_rel[has], ctx.ranked_dist[has, : rel.shape[1]]
            out[f"{level}_recall_at_{ctx.k}"] = retrieval.recall_at_k(rel, ctx.k)
            out[f"{level}_map"] = retrieval.mean_average_precision(rel, dist, n_rel)
            r = np.minimum(n_rel, rel.shape[1])  # R itself unless the ranking was truncated
            out[f"{level}_map_at_r"] = retrieval.map_at_r(rel, r)
            out[f"{level}_r_precision"] = retrieval.r_precision(rel, r)
            out[f"{level}_mrr"] = retrieval.mrr(rel)
        return out

    def _levels(self, ctx: EvalContext) -> dict:
        """level → (relevant (Q, depth), n_relevant (Q,), truncated (Q,), pooled AP, (recall, precision))."""
        return ctx.cached(("ranking.levels", ctx.key), lambda: self._compute_levels(ctx))

    def _compute_levels(self, ctx: EvalContext) -> dict:
        depth = ctx.ranked_rows.shape[1]
        parts = self._folds(ctx)
        # Each fold's pairs are sorted already: a stable sort of the concatenation only merges them.
        keys = np.sort(np.concatenate([key for key, _ in parts]), kind="stable") if len(parts) > 1 else parts[0][0]
        ends = retrieval.tie_ends((keys >> np.uint64(32)).astype(np.uint32))
        flags = keys.astype(np.uint32)  # the low half: relevance bits
        out, truncated_levels = {}, []
        for bit, level in enumerate(ctx.levels):
            hits = retrieval.hits_at((flags >> np.uint32(bit)) & np.uint32(1), ends)
            shown = np.unique(np.append(np.arange(0, len(ends), max(1, len(ends) // CURVE_POINTS)), len(ends) - 1))
            precision, recall = retrieval.curve_from_hits(hits[shown], ends[shown])
            relevant = np.zeros((len(ctx.query_rows), depth), bool)
            for (_, positions, _), (_, fold_relevant) in zip(ctx.folds, parts):
                relevant[positions, : fold_relevant[level].shape[1]] = fold_relevant[level]
            n_relevant = ctx.n_relevant(level)
            # Only a ranking cut short by max_depth can hold fewer items than a label has.
            searched = np.zeros(len(ctx.query_rows), np.int64)
            for _, positions, refs in ctx.folds:
                searched[positions] = np.minimum(depth, len(refs) - ctx.own(positions))
            truncated = n_relevant > searched
            if truncated.any():
                truncated_levels.append(f"{level} ({int(truncated.sum())} queries)")
            out[level] = (relevant, n_relevant, truncated, retrieval.average_precision_from_hits(hits, ends),
                          (recall, precision))
        if truncated_levels and not ctx.cache.get("ranking.warned"):
            ctx.cache["ranking.warned"] = True
            log.warning("evaluator.ranking.max_depth=%d is shorter than some labels' catalog items: MAP@R, "
                        "R-precision and AP are truncated for %s", self.max_depth, ", ".join(truncated_levels))
        return out

    def _folds(self, ctx) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Per fold: its ranked (query, item) pairs as uint64 keys sorted nearest first (distance order in
        the high half, one relevance bit per level in the low), and its relevance matrix per level.
        Kept in the evaluation's cache, so the pooled context and each fold's own context share them."""
        if len(ctx.levels) > 32:
            raise HarnessError("the ranking evaluator packs one relevance bit per level: at most 32 levels")
        todo = [(fold_id, positions, refs) for fold_id, positions, refs in ctx.folds
                if ("ranking.pairs", fold_id) not in ctx.cache]

        def pairs(job):
            _, positions, refs = job
            rows = ctx.ranked_rows[positions, : min(ctx.ranked_rows.shape[1], len(refs))]
            found = rows >= 0
            relevant = {lv: ctx.relevant(lv, rows, positions) for lv in ctx.levels}
            key = retrieval.order_key(ctx.ranked_dist[positions, : rows.shape[1]][found]).astype(np.uint64) << np.uint64(32)
            for bit, lv in enumerate(ctx.levels):
                key |= relevant[lv][found].astype(np.uint64) << np.uint64(bit)
            return np.sort(key, kind="stable"), relevant  # rows are sorted runs: a merge, no GIL held

        if todo:
            for lv in ctx.levels:
                ctx.codes(lv)  # fill the cache before the threads read it
            with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
                for (fold_id, *_), value in zip(todo, pool.map(pairs, todo)):
                    ctx.cache[("ranking.pairs", fold_id)] = value
        return [ctx.cache[("ranking.pairs", fold_id)] for fold_id, _, _ in ctx.folds]

    def artifacts(self, ctx):
        fig = Figure(figsize=(5, 4))
        ax = fig.subplots()
        for level, (*_, ap, (recall, precision)) in self._levels(ctx).items():
            if np.isfinite(ap):
                ax.plot(recall, precision, label=f"{level} (pooled AP {ap:.3f})")
        ax.set(xlabel="recall", ylabel="precision", title="Precision-recall over ranked pairs", xlim=(0, 1),
               ylim=(0, 1.02))
        ax.legend(loc="lower left")
        fig.tight_layout()
        return {"precision_recall.png": fig}
