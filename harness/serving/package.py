"""What a run serves, assembled in one place: the run logs it, the serving benchmark searches it.

The served catalog is the evaluated one without distractors and without the rows the evaluation left
out; a projection is fitted once on all of it (no fold is held out). Its rows go to the catalog's index
(harness.index) with the catalog's columns and content hashes, not the harness's split or distractor
flags; the model carries the settings that name the index version, and the fitted projection.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from harness.data.catalog import Catalog
from harness.index.lifecycle import manifest_info, open_index
from harness.index.milvus import from_reference, reference
from harness.index.publish import publish, served_items
from harness.projections import FittedProjection
from harness.serving.searcher import Searcher, Settings

def served_parts(cfg, catalog: Catalog, emb: np.ndarray, excluded_rows=(), projection=None, metric=None,
                 run: dict | None = None, calibration=None) -> tuple[Settings, pd.DataFrame, np.ndarray, FittedProjection | None]:
    """(settings, catalog table, features, fitted projection): a Searcher's arguments. `emb` has one row
    per catalog row; `run` is what the page shows of the run (id, name, score); `calibration`: an int8
    backbone's sample."""
    served = ~catalog.is_distractor
    served[list(excluded_rows)] = False
    emb = emb[served]
    fitted = None
    if projection is not None:
        labels = catalog.items[projection.level or catalog.levels[-1]].to_numpy(object)[served]
        fitted = projection.fit(emb, labels, metric, int(cfg.k))
    settings = Settings.from_cfg(cfg, catalog.root, run or {}, calibration)
    return settings, served_items(catalog.items[served]), emb, fitted


def log_served_model(job, pipe, catalog: Catalog, emb: np.ndarray, result, metrics: dict, fingerprint: str) -> str:
    """Publish a run's served catalog to its index (a new version only if it differs from the current
    one: a sweep over metrics stores its vectors once) and log the searcher that names it with `job`
    (registered as serving.model_name's champion when serving.register is set). `emb`: one row per
    catalog row; `result`: the run's Evaluation; `fingerprint`: its features'."""
    cfg = pipe.cfg
    score = metrics.get(cfg.selection.metric)
    run = {"run_id": job.run_id, "run_name": pipe.run_name, cfg.selection.metric: score}
    settings, items, vectors, fitted = served_parts(cfg, catalog, emb, [r for r, _ in result.excluded], pipe.projection,
                                                    pipe.metric, run, pipe.backbone.calibration)
    index = open_index(cfg)
    version = publish(index, items, vectors, manifest_info(pipe, fingerprint, catalog.root))
    settings.index = {"root": str(index.dir.parent), "name": index.name, "version": version,
                      "follow": bool(cfg.index.follow), **reference(cfg)}
    remote = from_reference(settings.index, index, settings.metric, fitted)
    if remote is not None:
        remote.sync(version)  # the model serves from Milvus: it holds this version before the model is logged
    with tempfile.TemporaryDirectory() as tmp:
        directory = Searcher.write(Path(tmp) / "searcher", settings, fitted)
        return job.log_model(directory, cfg.serving.model_name if cfg.serving.register else None, score)
