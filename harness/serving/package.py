"""What a run serves, assembled in one place: the run logs it, the serving benchmark searches it.

The served catalog is the evaluated one without distractors and without the rows the evaluation left
out; a projection is fitted once on all of it (no fold is held out). Its rows go to the catalog's index
(harness.index) with the catalog's columns and content hashes, not the harness's split or distractor
flags; the model carries the settings that name the index version, and the fitted projection.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness.augment import FittedAugmentation
from harness.data.catalog import Catalog
from harness.errors import HarnessError
from harness.index.lifecycle import manifest_info, open_index
from harness.index.milvus import from_reference, reference
from harness.index.publish import publish, served_items
from harness.projections import FittedProjection
from harness.pipeline import TRACKED
from harness.serving.searcher import Searcher, Settings

log = logging.getLogger(__name__)

@dataclass
class Served:
    """A Searcher's arguments: `Searcher(settings, items, features, projection, augmentation=...)`."""
    settings: Settings
    items: pd.DataFrame
    features: np.ndarray
    projection: FittedProjection | None = None
    augmentation: FittedAugmentation | None = None
    augment_level: str | None = None

    def searcher(self) -> Searcher:
        if self.augmentation is not None:
            self.settings.augment = {"level": self.augment_level}
        return Searcher(self.settings, self.items, self.features, self.projection, augmentation=self.augmentation)


def served_rows(catalog: Catalog, result) -> np.ndarray:
    """The catalog rows a run serves: no distractor, none the evaluation left out."""
    served = ~catalog.is_distractor
    served[[r for r, _ in result.excluded]] = False
    return np.flatnonzero(served)


def served_parts(cfg, catalog: Catalog, emb: np.ndarray, excluded_rows=(), projection=None, metric=None,
                 run: dict | None = None, calibration=None, augment=None) -> Served:
    """What a run serves: its settings, catalog table and features, with the projection and the catalog
    augmentation (`augment`) fitted on all of the served catalog. `emb` has one row per catalog row;
    `run` is what the page shows of the run (id, name, score); `calibration`: an int8 backbone's sample."""
    served = ~catalog.is_distractor
    served[list(excluded_rows)] = False
    emb = emb[served]
    fitted, augmentation, level = None, None, None
    if projection is not None:
        labels = catalog.items[projection.level or catalog.levels[-1]].to_numpy(object)[served]
        fitted = projection.fit(emb, labels, metric, int(cfg.k))
    if augment is not None:  # the same label column evaluate() fits it on
        level = augment.level or (projection.level if projection is not None else None) or catalog.levels[-1]
        space = fitted.transform(emb) if fitted is not None else emb
        augmentation = augment.fit(space, catalog.items[level].to_numpy(object)[served])
    settings = Settings.from_cfg(cfg, catalog.root, run or {}, calibration)
    return Served(settings, served_items(catalog.items[served]), emb, fitted, augmentation, level)


def read_groups(path, items: pd.DataFrame) -> pd.DataFrame | None:
    """python -m harness.dedup's groups (item_id, group, distance), if that file exists, for the items of
    the served catalog: the model carries them (for collapse_duplicates). A file that is not such a table
    stops the run with one line; one that names none of these items (another catalog's) is not carried."""
    if not path or not Path(path).is_file():
        return None
    try:
        table = pd.read_csv(path, dtype={"item_id": str}, keep_default_na=False)
        table["group"] = table["group"].astype(np.int64)
    except (KeyError, ValueError, pd.errors.ParserError) as exc:
        raise HarnessError(f"serving.duplicates={path}: not python -m harness.dedup's table (item_id, group, "
                           f"distance): {exc}") from None
    if "item_id" not in table:
        raise HarnessError(f"serving.duplicates={path}: no item_id column.")
    table = table[table["item_id"].isin(set(items["item_id"].astype(str)))]
    if table.empty:
        log.warning("serving.duplicates=%s names none of the served catalog's items: not carried", path)
        return None
    return table


def tracked_file(pipe) -> Path | None:
    """The downloaded file of `backbone.weights=runs:/…` (carried by the model: the serving machine
    need not reach the tracking server); None for published, random or local-path weights."""
    return Path(pipe.backbone.weights) if str(pipe.cfg.backbone.get("weights", "")).startswith(TRACKED) else None


def served_index_cfg(cfg, weights_uri: str | None):
    """The config naming the index a model serves from: a fine-tuned network's is named by the URI it was
    logged under, so `python -m harness.index update <the run's overrides> backbone.weights=<uri>` updates
    it, and a frozen model of the same extractor (index.follow) never moves onto fine-tuned vectors."""
    if weights_uri is None:
        return cfg
    import copy

    from omegaconf import OmegaConf

    named = copy.deepcopy(cfg)
    OmegaConf.update(named, "backbone.weights", weights_uri, force_add=True)
    return named


def log_served_model(job, pipe, catalog: Catalog, emb: np.ndarray, result, metrics: dict, fingerprint: str,
                     weights: tuple | None = None) -> str:
    """Publish a run's served catalog to its index (a new version only if it differs from the current
    one: a sweep over metrics stores its vectors once) and log the searcher that names it with `job`
    (registered as serving.model_name's champion when serving.register is set). `emb`: one row per
    catalog row; `result`: the run's Evaluation; `fingerprint`: its features'; `weights`: the served
    network's weights file where it is not the configured one (train=metric's, fine-tuned on the served
    catalog), as (local file, the URI the run logged it under). A weights file is carried inside the model,
    checked by its digest when it is loaded; the model serves only index versions of `fingerprint`."""
    cfg = pipe.cfg
    score = metrics.get(cfg.selection.metric)
    run = {"run_id": job.run_id, "run_name": pipe.run_name, cfg.selection.metric: score}
    parts = served_parts(cfg, catalog, emb, [r for r, _ in result.excluded], pipe.projection, pipe.metric, run,
                         pipe.backbone.calibration, pipe.augment)
    settings, items, vectors, fitted = parts.settings, parts.items, parts.features, parts.projection
    weights_file, weights_uri = weights or (None, None)
    index = open_index(served_index_cfg(cfg, weights_uri))
    version = publish(index, items, vectors, manifest_info(pipe, fingerprint, catalog.root))
    settings.index = {"root": str(index.dir.parent), "name": index.name, "version": version,
                      "follow": bool(cfg.index.follow), "fingerprint": fingerprint, **reference(cfg)}
    remote = from_reference(settings.index, index, settings.metric, fitted)
    if remote is not None:
        remote.sync(version)  # the model serves from Milvus: it holds this version before the model is logged
    with tempfile.TemporaryDirectory() as tmp:
        directory = Searcher.write(Path(tmp) / "searcher", settings, fitted, read_groups(cfg.serving.duplicates, items),
                                   parts.augmentation, parts.augment_level, weights_file or tracked_file(pipe))
        return job.log_model(directory, cfg.serving.model_name if cfg.serving.register else None, score)
