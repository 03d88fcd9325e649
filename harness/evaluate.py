"""evaluate(): embeddings and a catalog in, retrieval scores out. No Hydra, no MLflow, no files.

    import numpy as np, pandas as pd
    from harness.data import Catalog
    from harness.evaluate import evaluate
    from harness.evaluators import PrecisionAtK, Ranking
    from harness.metrics import Cosine
    from harness.protocols import KFold

    catalog = Catalog.from_table(pd.read_csv("labels.csv"), levels=["category", "subcategory"], source="labels.csv")
    catalog, folds = KFold(folds=5).split(catalog)
    result = evaluate(np.load("emb.npy"), catalog, folds, Cosine(), [PrecisionAtK(), Ranking()], k=5)
    result.metrics["subcategory_precision_at_5"], result.metrics["subcategory_map"]

`python -m harness`, the sweep, the benchmarks and the tests all score through this one function.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.data.catalog import Catalog
from harness.errors import HarnessError
from harness.evaluators.base import EvalContext, Evaluator
from harness.metrics.distances import Distance, as_matrix
from harness.protocols import Fold
from harness.search.grouped import GroupedIndex

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    metrics: dict[str, float]                 # pooled over every query; with folds, also <name>_mean/_std/_cv
    artifacts: dict[str, Any]                 # file name → DataFrame | matplotlib Figure | PIL image
    per_fold: list[dict[str, float]]          # each fold's own metrics (empty with one fold)
    query_rows: np.ndarray                    # (Q,) catalog rows of the queries, every fold pooled
    indices: np.ndarray                       # (Q, k) catalog rows of their neighbours, -1 where none
    distances: np.ndarray                     # (Q, k)
    excluded: list[tuple[int, str]] = field(default_factory=list)  # catalog rows left out, and why
    projections: list = field(default_factory=list)  # each fold's FittedProjection (with a projection)


def aggregate(per_fold: list[dict[str, float]]) -> dict[str, float]:
    """For every metric: mean, sample standard deviation (ddof=1) and coefficient of variation across folds."""
    out = {}
    for name in per_fold[0]:
        values = np.array([m[name] for m in per_fold], dtype=float)
        mean, std = float(values.mean()), float(values.std(ddof=1))
        out.update({f"{name}_mean": mean, f"{name}_std": std, f"{name}_cv": std / mean if mean else float("nan")})
    return out


def check_k(k, folds: list[Fold]) -> int:
    """k must be a whole number >= 1 and no larger than any fold's catalog."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise HarnessError(f"k must be a whole number >= 1, got {k!r}.")
    smallest = min((len(f.ref_idx) for f in folds), default=0)
    if k > smallest:
        raise HarnessError(f"k={k} is larger than the catalog searched ({smallest} images).")
    return int(k)


def evaluate(emb, catalog: Catalog, folds: list[Fold], metric: Distance, evaluators, k: int, *,
             index=None, within: str | None = None, projection=None, augment=None, expansion=None,
             store=None, encode_text=None, **index_params) -> Evaluation:
    """Search each fold's queries among its references and score the rankings.

    emb: (N, D) one vector per catalog row, or a list of them, one per fold (a backbone fine-tuned on
    each fold's catalog rows embeds the whole catalog for that fold). folds: from a protocol's `split`. evaluators: a list or a
    {name: Evaluator} mapping. within: a label column; each query then searches only the catalog items
    that share its label there (the study's per-category index). projection: a
    `harness.projections.Projection`, fitted on each fold's reference rows (distractors left out) and
    applied to its queries and references before the search. augment: a `harness.augment` augmentation,
    fitted the same way and applied to the fold's catalog rows (after the projection), never to its
    queries. expansion: a `harness.search.expansion` query expansion, each query searched again with
    its nearest catalog vectors. store: an optional per-image cache for
    costly descriptors (colour/texture). encode_text: texts → (T, D) in emb's space, for evaluators that
    search by words (a backbone's `embed_text`). index (an Index class or partial, default exact),
    index_params: see `harness.search`.

    Vectors the metric is undefined for (all-zero for cosine, constant for correlation) are left out as
    queries and as catalog items; they are listed in `excluded` and counted in `excluded_images`.
    """
    if not folds:
        raise HarnessError("evaluate needs at least one fold (a protocol's split).")
    per_fold_emb = None
    if isinstance(emb, (list, tuple)):
        if len(emb) != len(folds):
            raise HarnessError(f"emb is a list of {len(emb)} arrays for {len(folds)} folds (one per fold).")
        per_fold_emb = [as_matrix(e, f"emb[{i}]") for i, e in enumerate(emb)]
        emb = per_fold_emb[0]
    emb = as_matrix(emb, "emb")
    for e in per_fold_emb or [emb]:
        if len(e) != len(catalog):
            raise HarnessError(f"emb has {len(e)} rows for a catalog of {len(catalog)} images.")
    # all-versus-all: a query's own row is among the references but never an answer
    k = check_k(k, [Fold(f.query_idx, f.ref_idx[~metric.degenerate(emb[f.ref_idx])][int(f.self_match):]) for f in folds])
    if any(f.self_match for f in folds):
        for part, none in ((projection, "projection=none"), (augment, "augment=none")):
            if part is not None:
                raise HarnessError(f"{none.split('=')[0]} cannot be fitted with an all-versus-all protocol: its "
                                   f"catalog is its queries, so it would learn their labels (use {none}).")
    evaluators = list(evaluators.values()) if isinstance(evaluators, Mapping) else list(evaluators)
    if not all(isinstance(ev, Evaluator) for ev in evaluators):
        raise HarnessError("evaluators must be Evaluator instances.")
    if within is not None and within not in catalog.items:
        raise HarnessError(f"within={within!r} is not a catalog column.")

    degenerate = np.any([metric.degenerate(e) for e in per_fold_emb or [emb]], axis=0)
    excluded = [(int(r), f"feature vector {metric.undefined_for}: the {metric!r} distance is undefined")
                for r in np.flatnonzero(degenerate)]
    if excluded:
        log.warning("%d image(s) left out: their feature vectors %s, for which the %r distance is undefined "
                    "(e.g. %s)", len(excluded), metric.undefined_for, metric, catalog.items["path"].iloc[excluded[0][0]])
    keep = ~degenerate
    groups = catalog.items[within].to_numpy(dtype=object) if within else None
    depths = [ev.depth for ev in evaluators]
    if projection is not None:
        level = projection.level or catalog.levels[-1]
        if level not in catalog.items:
            raise HarnessError(f"projection.level={level!r} is not a catalog column.")
        fit_labels = catalog.items[level].to_numpy(dtype=object)
    if augment is not None:
        aug_level = augment.level or (projection.level if projection is not None else None) or catalog.levels[-1]
        if aug_level not in catalog.items:
            raise HarnessError(f"augment.level={aug_level!r} is not a catalog column.")
        aug_labels = catalog.items[aug_level].to_numpy(dtype=object)
    fitted = []
    prompts = list(dict.fromkeys(q for ev in evaluators for q in ev.text_queries(catalog.items, catalog.levels)))
    if prompts:
        if encode_text is None:
            raise HarnessError("evaluator=text searches by words: it needs a backbone with a text tower (OpenCLIP).")
        text_emb = as_matrix(encode_text(prompts), "text embeddings", emb.shape[1])
    text_rows = {}

    t0 = time.perf_counter()
    searched = []  # per fold: (query rows, reference rows, ranked rows, ranked distances, query among refs)
    for number, fold in enumerate(folds):
        queries, refs = fold.query_idx[keep[fold.query_idx]], fold.ref_idx[keep[fold.ref_idx]]
        space = emb = per_fold_emb[number] if per_fold_emb is not None else emb
        if projection is not None:  # learnt from this fold's catalog alone: never a query, never a distractor
            fit_rows = refs[~catalog.is_distractor[refs]]
            fitted.append(projection.fit(emb[fit_rows], fit_labels[fit_rows], metric, k))
            space = fitted[-1].transform(emb)
        ref_space, query_space = space[refs], space[queries]
        if augment is not None:  # the fold's catalog products moved toward their labels' means; distractors kept
            products = ~catalog.is_distractor[refs]
            ref_space = ref_space.copy()
            ref_space[products] = augment.fit(ref_space[products], aug_labels[refs][products]).apply(
                ref_space[products], aug_labels[refs][products])
        # One search per fold, as deep as any evaluator reads (the whole ranking for the ranking metrics).
        # (all-versus-all: one deeper, the query's own row then dropped from its ranking)
        depth = len(refs) if None in depths else min(len(refs), max([k, *depths]) + int(fold.self_match))
        grouped = GroupedIndex(ref_space, metric, None if groups is None else groups[refs], index, **index_params)
        query_groups = None if groups is None else groups[queries]
        if expansion is not None:
            query_space = expansion.expand(query_space, ref_space, first_neighbours(
                grouped, query_space, query_groups, expansion.n, refs, queries if fold.self_match else None))
        dist, pos = grouped.search(query_space, depth, query_groups)
        rows = np.where(pos >= 0, refs[np.maximum(pos, 0)], -1)
        own = np.isin(queries, refs) if fold.self_match else np.zeros(len(queries), dtype=bool)
        if fold.self_match:
            rows, dist = without_self(rows, dist, queries)
        searched.append((queries, refs, rows, dist, own))
        if prompts:  # words search the fold's whole catalog, in the same (projected) space
            words = fitted[-1].transform(text_emb) if projection is not None else text_emb
            _, pos = grouped.search(words, k)
            text_rows[len(searched) - 1] = refs[np.maximum(pos, 0)]
    search_seconds = time.perf_counter() - t0

    cache: dict = {}
    width = max(s[2].shape[1] for s in searched)

    def context(fold_ids: list[int]) -> EvalContext:
        parts = [searched[i] for i in fold_ids]
        sizes = np.cumsum([0] + [len(p[0]) for p in parts])
        rows = np.full((sizes[-1], width), -1, np.int64)
        dist = np.full((sizes[-1], width), np.inf, np.float32)
        for a, (_, _, r, d, _) in zip(sizes, parts):
            rows[a:a + len(r), : r.shape[1]], dist[a:a + len(d), : d.shape[1]] = r, d
        return EvalContext(catalog.items, catalog.levels, k, np.concatenate([p[0] for p in parts]), rows, dist,
                           [(i, np.arange(a, b), p[1]) for i, a, b, p in zip(fold_ids, sizes[:-1], sizes[1:], parts)],
                           store=store, cache=cache, text_prompts=prompts, text_rows=text_rows,
                           in_catalog=np.concatenate([p[4] for p in parts]))

    def scores(ctx: EvalContext) -> dict[str, float]:
        return {name: value for ev in evaluators for name, value in ev.evaluate(ctx).items()}

    pooled = context(list(range(len(folds))))
    metrics = scores(pooled)
    artifacts = {name: obj for ev in evaluators for name, obj in ev.artifacts(pooled).items()}
    per_fold = [scores(context([i])) for i in range(len(folds))] if len(folds) > 1 else []
    for fold_metrics, fit in zip(per_fold or [metrics], fitted):
        fold_metrics.update(projection_metrics(fit.info))
    if per_fold:
        metrics.update(aggregate(per_fold))
        metrics["folds"] = len(per_fold)
    metrics.update({"n_catalog": len(searched[0][1]) if len(folds) == 1 else int(keep.sum()),
                    "n_queries": len(pooled.query_rows), "search_seconds": search_seconds,
                    "excluded_images": len(excluded)})
    if fitted:
        metrics["projection_fit_seconds"] = sum(f.info["fit_seconds"] for f in fitted)
    return Evaluation(metrics, artifacts, per_fold, pooled.query_rows, pooled.indices.copy(),
                      pooled.distances.copy(), excluded, fitted)


def first_neighbours(grouped: GroupedIndex, query_emb, query_groups, n: int, refs, own=None) -> np.ndarray:
    """Each query's n nearest catalog positions (-1 where fewer), for query expansion; `own`: the query
    rows of an all-versus-all search, whose own row is never among them."""
    _, pos = grouped.search(query_emb, min(len(refs), n + int(own is not None)), query_groups)
    if own is not None:
        pos = np.where(refs[np.maximum(pos, 0)] == own[:, None], -1, pos)
        pos = np.take_along_axis(pos, np.argsort(pos < 0, axis=1, kind="stable"), axis=1)
    return pos[:, :n]


def without_self(rows: np.ndarray, dist: np.ndarray, queries: np.ndarray):
    """Each query's ranking without its own row (all-versus-all): the rows after it move up one, and
    the ranking ends one earlier (-1, inf); a query that is not among the references keeps its own."""
    own = rows == queries[:, None]
    order = np.argsort(own, axis=1, kind="stable")  # its own row last, the others in their order
    rows, dist, own = (np.take_along_axis(a, order, axis=1) for a in (rows, dist, own))
    return np.where(own, -1, rows), np.where(own, np.inf, dist).astype(dist.dtype)


def projection_metrics(info: dict) -> dict[str, float]:
    """A fitted projection's numbers as metrics: projection_dim, _explained_variance, _shrinkage."""
    return {f"projection_{key}": float(value) for key, value in info.items()
            if key in ("dim", "explained_variance", "shrinkage")}
