"""What a run serves, assembled in one place: the run logs it, the serving benchmark searches it.

The served catalog is the evaluated one without distractors and without the rows the evaluation left
out; a projection is fitted once on all of it (no fold is held out), and the searcher is given the
catalog's columns but the harness's own bookkeeping (content hash, split, distractor flag).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from harness.data.catalog import Catalog
from harness.projections import FittedProjection
from harness.serving.searcher import Searcher, Settings

BOOKKEEPING = ("content_hash", "split", "distractor")


def served_parts(cfg, catalog: Catalog, emb: np.ndarray, excluded_rows=(), projection=None, metric=None,
                 run: dict | None = None) -> tuple[Settings, pd.DataFrame, np.ndarray, FittedProjection | None]:
    """(settings, catalog table, features, fitted projection): a Searcher's arguments. `emb` has one row
    per catalog row; `run` is what the page shows of the run (id, name, score)."""
    served = ~catalog.is_distractor
    served[list(excluded_rows)] = False
    emb = emb[served]
    fitted = None
    if projection is not None:
        labels = catalog.items[projection.level or catalog.levels[-1]].to_numpy(object)[served]
        fitted = projection.fit(emb, labels, metric, int(cfg.k))
    columns = [c for c in catalog.items.columns if c not in BOOKKEEPING]
    settings = Settings.from_cfg(cfg, catalog.root, run or {})
    return settings, catalog.items[served][columns], emb, fitted


def write_searcher(directory: Path, *args, **kwargs) -> Path:
    """The served searcher as plain files in `directory` (what the MLflow model carries)."""
    return Searcher.write(directory, *served_parts(*args, **kwargs))


def log_served_model(job, pipe, catalog: Catalog, emb: np.ndarray, result, metrics: dict) -> str:
    """Package a run's searcher and log it with `job` (registered as serving.model_name's champion when
    serving.register is set). `emb`: one row per catalog row; `result`: the run's Evaluation."""
    cfg = pipe.cfg
    score = metrics.get(cfg.selection.metric)
    run = {"run_id": job.run_id, "run_name": pipe.run_name, cfg.selection.metric: score}
    with tempfile.TemporaryDirectory() as tmp:
        directory = write_searcher(Path(tmp) / "searcher", cfg, catalog, emb, [r for r, _ in result.excluded],
                                   pipe.projection, pipe.metric, run)
        return job.log_model(directory, cfg.serving.model_name if cfg.serving.register else None, score)
