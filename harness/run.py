"""run(cfg): the library function behind `python -m harness`; tests and the demo call it too."""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from harness.config import instantiate
from harness.data.catalog import Catalog
from omegaconf import DictConfig

from harness import tracking
from harness.evaluators.base import EvalContext
from harness.extract import extract
from harness.search import build_index
from harness.serving.searcher import Searcher, Settings
from harness.store import FeatureStore

log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    query_rows: np.ndarray  # catalog rows of the queries
    ref_rows: np.ndarray    # catalog rows they searched
    indices: np.ndarray     # (Q, k) catalog rows of the neighbours, -1 where a category had fewer than k
    distances: np.ndarray   # (Q, k)


def search(emb: np.ndarray, query_rows: np.ndarray, ref_rows: np.ndarray, metric, k: int,
           groups: np.ndarray | None = None, index: str = "exact", **index_params) -> SearchResult:
    """k nearest catalog rows for each query row; with `groups`, only within the query's group."""
    indices = np.full((len(query_rows), k), -1, dtype=np.int64)
    distances = np.full((len(query_rows), k), np.inf, dtype=np.float32)
    if groups is None:
        parts = [(np.arange(len(query_rows)), ref_rows)]
    else:
        parts = [(np.flatnonzero(groups[query_rows] == g), ref_rows[groups[ref_rows] == g])
                 for g in np.unique(groups[query_rows])]
    for q_pos, refs in parts:
        if len(refs) == 0:
            continue
        d, i = build_index(emb[refs], metric, index, **index_params).search(emb[query_rows[q_pos]], k)
        distances[q_pos, : d.shape[1]] = d
        indices[q_pos, : i.shape[1]] = refs[i]
    return SearchResult(query_rows, ref_rows, indices, distances)




def aggregate(per_fold: list[dict[str, float]]) -> dict[str, float]:
    """For every metric: mean, standard deviation and coefficient of variation across folds."""
    out = {}
    for name in per_fold[0]:
        values = np.array([m[name] for m in per_fold], dtype=float)
        mean, std = float(values.mean()), float(values.std(ddof=1))
        out.update({f"{name}_mean": mean, f"{name}_std": std,
                    f"{name}_cv": std / mean if mean else float("nan")})
    return out


def _contexts(items, results: list[SearchResult], levels, k, rank, store) -> tuple[EvalContext, list[EvalContext]]:
    """One context over all queries (every fold pooled) and one per fold."""
    def ctx(rs: list[SearchResult]) -> EvalContext:
        sizes = np.cumsum([0] + [len(r.query_rows) for r in rs])
        folds = [(np.arange(a, b), r.ref_rows) for a, b, r in zip(sizes[:-1], sizes[1:], rs)]
        return EvalContext(items, np.concatenate([r.query_rows for r in rs]),
                           np.concatenate([r.indices for r in rs]), np.concatenate([r.distances for r in rs]),
                           list(levels), k, folds, rank, store)

    return ctx(results), [ctx([r]) for r in results] if len(results) > 1 else []


def load_catalog(cfg: DictConfig):
    """(items, levels, folds, distractor rows): the protocol splits the fashion catalog alone and
    distractors, appended after it, join every fold's references."""
    catalog = instantiate(cfg.dataset).load()
    distractors = catalog.items[catalog.items["distractor"]] if "distractor" in catalog.items else None
    if distractors is not None:
        catalog = Catalog(catalog.items[~catalog.items["distractor"]].reset_index(drop=True), catalog.levels)
    catalog, folds = instantiate(cfg.protocol).split(catalog)
    items = catalog.items
    if distractors is not None:
        items = pd.concat([items.assign(distractor=False), distractors], ignore_index=True)
    return items, catalog.levels, folds, np.arange(len(catalog.items), len(items))


def log_searcher(cfg, run_id, run_name, metrics, items, feats, out_dir: Path) -> None:
    """Log the served catalog (every readable product, queries included, never distractors) as a model."""
    is_distractor = items["distractor"].to_numpy(bool) if "distractor" in items else np.zeros(len(items), bool)
    rows = np.flatnonzero(feats.valid & ~is_distractor)
    columns = [c for c in items.columns if c not in ("content_hash", "split", "distractor")]
    settings = Settings.from_cfg(cfg, {"run_id": run_id, "run_name": run_name,
                                       cfg.selection.metric: metrics.get(cfg.selection.metric)})
    Searcher.write(out_dir / "searcher", settings, items.iloc[rows][columns], feats.emb[rows])
    tracking.log_search_model(out_dir / "searcher",
                              register_as=cfg.serving.model_name if cfg.serving.register else None)


def run(cfg: DictConfig) -> dict[str, float]:
    items, levels, folds, distractor_rows = load_catalog(cfg)
    k = int(cfg.k)
    backbone = instantiate(cfg.backbone, layer=cfg.layer.name, pooling=cfg.layer.pooling,
                           compile=cfg.extract.compile)
    preprocess = instantiate(cfg.preprocess)
    metric = instantiate(cfg.metric)
    evaluators = {name: instantiate(spec) for name, spec in cfg.evaluator.items()
                  if isinstance(spec, DictConfig) and "_target_" in spec}
    groups = items[levels[0]].to_numpy() if cfg.search.within_category else None
    store = FeatureStore(cfg.store.path, cfg.store.dtype)
    run_name = f"{backbone.arch}-{cfg.layer.name}-{preprocess.name}-{metric!r}".lower()
    with tracking.job_run(cfg, run_name) as run_id, tempfile.TemporaryDirectory() as tmp:
        feats = extract(items["path"].tolist(), backbone, preprocess, store,
                        batch_size=cfg.extract.batch_size, num_workers=cfg.extract.num_workers,
                        progress=cfg.extract.progress)
        items = items.assign(content_hash=feats.hashes)
        ok = feats.valid

        ranked = {}  # (queries, references) → their ranking; contexts and evaluators share it

        def rank(query_rows, ref_rows, depth):
            key = (query_rows.tobytes(), ref_rows.tobytes())
            if key not in ranked or ranked[key][0].shape[1] < min(depth, len(ref_rows)):
                found = search(feats.emb, query_rows, ref_rows, metric, max(k, min(depth, len(ref_rows))), groups,
                               cfg.search.index, **cfg.search.params)
                ranked[key] = (found.distances, found.indices)
            dist, rows = ranked[key]
            return dist[:, :depth], rows[:, :depth]

        # One search per fold, as deep as any evaluator reads (the full ranking for the ranking metrics).
        depth = max([k, *(ev.depth for ev in evaluators.values())])
        t0 = time.perf_counter()
        results = []
        for f in folds:
            query_rows, ref_rows = f.query_idx[ok[f.query_idx]], np.concatenate([f.ref_idx, distractor_rows])
            ref_rows = ref_rows[ok[ref_rows]]
            dist, rows = rank(query_rows, ref_rows, depth)
            results.append(SearchResult(query_rows, ref_rows, rows[:, :k], dist[:, :k]))
        search_seconds = time.perf_counter() - t0

        def evaluate(ctx: EvalContext) -> dict[str, float]:
            return {key: value for ev in evaluators.values() for key, value in ev.evaluate(ctx).items()}

        pooled, per_fold_ctx = _contexts(items, results, levels, k, rank, store)
        metrics = evaluate(pooled)
        out_dir = Path(tmp)  # artifacts right after the pooled metrics, while evaluators still cache its arrays
        artifacts = [p for ev in evaluators.values() for p in ev.write_artifacts(pooled, out_dir)]
        if per_fold_ctx:
            per_fold = [evaluate(c) for c in per_fold_ctx]
            for fold, fold_metrics in enumerate(per_fold):  # own keys: MLflow shows a key's highest step
                tracking.log_metrics({f"fold/{key}": v for key, v in fold_metrics.items()}, step=fold)
            metrics.update(aggregate(per_fold))
            metrics["folds"] = len(per_fold)
        n_catalog = len(results[0].ref_rows) if len(results) == 1 else int(ok.sum())
        metrics.update({
            "n_catalog": n_catalog, "n_queries": len(pooled.query_rows), "feature_dim": feats.emb.shape[1],
            "extract_seconds": feats.seconds, "images_extracted": feats.extracted,
            "skipped_images": len(feats.skipped), "search_seconds": search_seconds,
        })
        if feats.extracted:
            metrics["images_per_second"] = feats.extracted / feats.embed_seconds
        if feats.compile_seconds:
            metrics["compile_seconds"] = feats.compile_seconds
        tracking.log_metrics(metrics)

        skipped = out_dir / "skipped_images.csv"
        pd.DataFrame(feats.skipped, columns=["path", "reason"]).to_csv(skipped, index=False)
        tracking.log_artifacts([*artifacts, skipped])
        if cfg.serving.log_model:
            log_searcher(cfg, run_id, run_name, metrics, items, feats, out_dir)
        ids = items["item_id"].to_numpy()
        store.put_neighbours(run_id, ids[pooled.query_rows],
                             np.where(pooled.indices >= 0, ids[pooled.indices], ""), pooled.distances)
    store.close()
    _report(cfg, run_id, run_name, metrics, levels, k)
    return metrics


def _report(cfg, run_id, run_name, metrics, levels, k) -> None:
    lines = [f"run {run_name} ({run_id})"]
    for level in levels:
        key = f"{level}_precision_at_{k}"
        lines.append(f"  {key:<32} {metrics[key]:.4f}")
    lines.append(f"  catalog {metrics['n_catalog']}, queries {metrics['n_queries']}, "
                 f"skipped {metrics['skipped_images']}, features {metrics['feature_dim']}-d, "
                 f"feature stage {metrics['extract_seconds']:.1f}s")
    lines.append(f"  results: MLflow {cfg.tracking.uri} (experiment '{cfg.tracking.experiment}'); "
                 f"neighbours: {cfg.store.path}")
    lines.append(f"  open the UI: make ui   (mlflow ui --backend-store-uri {cfg.tracking.uri})")
    log.info("\n".join(lines))
