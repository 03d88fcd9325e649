"""run(cfg): the library function behind `python -m harness`: build → extract → evaluate → track."""
from __future__ import annotations

import logging
import socket
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from harness import tracking
from harness.errors import HarnessError
from harness.evaluate import evaluate
from harness.extract import extract
from harness.pipeline import build
from harness.protocols import restrict
from harness.serving.package import write_searcher
from harness.store import FeatureStore

log = logging.getLogger(__name__)


def check_remote_store(cfg: DictConfig) -> None:
    """A sweep job on another machine than the one that launched the sweep reads the feature store at
    a path every node sees; it never starts a new store of its own (it would embed the whole catalog
    again on every node)."""
    host = socket.gethostname()
    driver = tracking.sweep_host(cfg)
    if driver and driver != host and not Path(cfg.store.path).exists():
        raise HarnessError(f"store.path={cfg.store.path} does not exist on {host}, where this job of a sweep "
                           f"launched on {driver} runs. Extract once (extract.engine=ray) into a store on "
                           "storage every node mounts at the same path, and point store.path at it.")


def run(cfg: DictConfig) -> dict[str, float]:
    # Every setting that can be checked is, before a tracking run or the feature store file exists.
    pipe = build(cfg)
    catalog, folds = pipe.data()
    check_remote_store(cfg)
    backbone, projection = pipe.backbone, pipe.projection
    with tracking.job_run(cfg, pipe.run_name) as job:
        store = FeatureStore(cfg.store.path, cfg.store.dtype)
        try:
            feats = extract(catalog.items["path"].tolist(), backbone, pipe.preprocess, store,
                            batch_size=cfg.extract.batch_size, progress=cfg.extract.progress, engine=pipe.engine)
            catalog.items["content_hash"] = feats.hashes
            catalog, folds = restrict(catalog, folds, feats.valid)
            result = evaluate(feats.emb[feats.valid], catalog, folds, pipe.metric, pipe.evaluators, int(cfg.k),
                              index=cfg.search.index, within=catalog.levels[0] if cfg.search.within_category else None,
                              projection=projection, store=store,
                              encode_text=backbone.embed_text if backbone.can_embed_text else None, **cfg.search.params)
            metrics = {**result.metrics, **feats.metrics()}
            job.log_folds(result.per_fold)
            job.log_metrics(metrics)
            skipped = feats.skipped + [(catalog.items["path"].iloc[r], why) for r, why in result.excluded]
            job.log_artifacts({**result.artifacts,
                               "skipped_images.csv": pd.DataFrame(skipped, columns=["path", "reason"])})
            if cfg.serving.log_model and job.tracked:
                score = metrics.get(cfg.selection.metric)
                with tempfile.TemporaryDirectory() as tmp:
                    directory = write_searcher(Path(tmp) / "searcher", cfg, catalog, feats.emb[feats.valid],
                                               [r for r, _ in result.excluded], projection, pipe.metric,
                                               {"run_id": job.run_id, "run_name": pipe.run_name, cfg.selection.metric: score})
                    job.log_search_model(directory, cfg.serving.model_name if cfg.serving.register else None, score)
            ids = catalog.items["item_id"].to_numpy()
            store.put_neighbours(job.run_id, ids[result.query_rows],
                                 np.where(result.indices >= 0, ids[np.maximum(result.indices, 0)], ""), result.distances)
        finally:
            store.close()
    log.info(summary(cfg, job.run_id, pipe.run_name, metrics, catalog.levels))
    return metrics


def summary(cfg, run_id, run_name, metrics, levels) -> str:
    k = int(cfg.k)
    lines = [f"run {run_name} ({run_id})"]
    lines += [f"  {name:<32} {metrics[name]:.4f}" for level in levels
              for name in (f"{level}_precision_at_{k}", f"{level}_text_precision_at_{k}") if name in metrics]
    lines.append(f"  catalog {metrics['n_catalog']}, queries {metrics['n_queries']}, "
                 f"skipped {metrics['skipped_images'] + metrics['excluded_images']}, "
                 f"features {metrics['feature_dim']}-d, feature stage {metrics['extract_seconds']:.1f}s")
    if tracking.enabled(cfg):
        lines.append(f"  results: MLflow {cfg.tracking.uri} (experiment '{cfg.tracking.experiment}'); "
                     f"open the UI: make ui")
    lines.append(f"  neighbours: {cfg.store.path} (run_id {run_id})")
    return "\n".join(lines)
