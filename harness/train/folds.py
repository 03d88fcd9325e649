"""train=metric in a run: one fine-tuned network per fold, and one for the served catalog.

For each fold the backbone is fine-tuned on that fold's catalog products only (its reference rows
without the distractors: never one of its queries), and the whole catalog is embedded by that fold's
network; the evaluation searches each fold in its own network's space, so every score is as
cross-validation-honest as with `train=none` and comparable with it in one sweep. The served model's
network is fine-tuned once more on the whole served catalog (no fold held out), as a projection is.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from harness.data.catalog import Catalog
from harness.protocols import Fold


@dataclass
class FoldTraining:
    emb: list[np.ndarray]                          # per fold: the whole catalog in that fold's network
    results: list = field(default_factory=list)    # per fold: its TrainResult
    metrics: dict = field(default_factory=dict)    # train_seconds, per fold best epoch and seconds


def training_rows(catalog: Catalog, fold: Fold) -> np.ndarray:
    """The catalog rows a fold may learn from: its references that are products (no distractor)."""
    return fold.ref_idx[~catalog.is_distractor[fold.ref_idx]]


def _labels(pipe, catalog: Catalog) -> np.ndarray:
    return catalog.items[pipe.trainer.level or catalog.levels[-1]].to_numpy(object)


def train_rows(pipe, catalog: Catalog, rows: np.ndarray, log_epoch=None):
    """Fine-tune the run's backbone on these catalog rows; its TrainResult."""
    items = catalog.items
    return pipe.trainer.fit(pipe.backbone, pipe.preprocess, items["path"].to_numpy()[rows].tolist(),
                            _labels(pipe, catalog)[rows], items["item_id"].astype(str).to_numpy()[rows],
                            log_epoch=log_epoch)


def train_folds(pipe, catalog: Catalog, folds: list[Fold], store, job) -> FoldTraining:
    """Each fold's network, trained on its catalog products, and the catalog's features from it (kept
    in the feature store under the trained file's digest)."""
    out = FoldTraining([])
    for number, fold in enumerate(folds):
        def log_epoch(record, epoch, number=number):
            job.log_metrics({f"train/fold{number}/{name}": value for name, value in record.items()}, step=epoch)

        result = train_rows(pipe, catalog, training_rows(catalog, fold), log_epoch)
        feats = pipe.extract_with(result.weights, catalog, store)
        out.emb.append(feats.emb)
        out.results.append(result)
        out.metrics[f"train_fold{number}_best_epoch"] = result.best_epoch
        out.metrics[f"train_fold{number}_seconds"] = result.seconds
    out.metrics["train_seconds"] = sum(r.seconds for r in out.results)
    out.metrics["train_epochs_mean"] = float(np.mean([len(r.history) for r in out.results]))
    return out
