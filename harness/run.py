"""run(cfg): the library function behind `python -m harness`: build → extract → evaluate → track → package."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from harness.card import card_markdown, card_summary, result_card
from harness.data.lineage import dataset_records
from harness.pipeline import build
from harness.protocols import restrict
from harness.serving.package import log_served_model, served_rows
from harness.train.folds import train_folds, train_rows

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, float]:
    pipe = build(cfg)  # every setting checked before a tracking run or the feature store exists
    catalog, folds = pipe.data()
    pipe.check_remote_store()
    with pipe.tracker.job(pipe.run_name, cfg) as job:
        store = pipe.open_store()
        try:
            feats = pipe.extract(catalog, store)
            catalog, folds = restrict(catalog, folds, feats.valid)
            emb = feats.emb[feats.valid]
            training = train_folds(pipe, catalog, folds, store, job) if pipe.trainer is not None else None
            result = pipe.evaluate(training.emb if training else emb, catalog, folds, store)
            metrics = {**result.metrics, **feats.metrics(), **(training.metrics if training else {})}
            job.log_folds(result.per_fold)
            job.log_metrics(metrics)
            records = dataset_records(catalog, folds, type(pipe.protocol).__name__, type(pipe.dataset).__name__)
            job.log_datasets(records)
            card = result_card(pipe, catalog, feats.emb[feats.valid], folds, result, metrics, records)
            job.set_description(card_summary(card))
            skipped = feats.skipped + [(catalog.items["path"].iloc[r], why) for r, why in result.excluded]
            calibration = pipe.backbone.calibration  # int8: the sample it was quantized with, recorded
            job.log_artifacts({**result.artifacts, "card.json": card, "card.md": card_markdown(card),
                               "skipped_images.csv": pd.DataFrame(skipped, columns=["path", "reason"]),
                               **({"int8_calibration.csv": pd.DataFrame(calibration.items, columns=["path", "content_hash"])}
                                  if calibration is not None else {})})
            if cfg.serving.log_model and job.tracked:
                served_emb, fingerprint, weights = emb, feats.fingerprint, None
                if training:  # the served network: fine-tuned once more, on the whole served catalog
                    final = train_rows(pipe, catalog, served_rows(catalog, result))
                    served = pipe.extract_with(final.weights, catalog, store)
                    served_emb, fingerprint = served.emb, served.fingerprint
                    job.log_metrics({"train_served_seconds": final.seconds, "train_served_best_epoch": final.best_epoch})
                    weights = (final.weights, job.log_weights(final.weights))
                log_served_model(job, pipe, catalog, served_emb, result, metrics, fingerprint, weights)
            ids = catalog.items["item_id"].to_numpy()
            store.put_neighbours(job.run_id, ids[result.query_rows],
                                 np.where(result.indices >= 0, ids[np.maximum(result.indices, 0)], ""), result.distances)
        finally:
            store.close()
    log.info(summary(pipe, job.run_id, metrics, catalog.levels))
    return metrics


def summary(pipe, run_id, metrics, levels) -> str:
    k = int(pipe.cfg.k)
    lines = [f"run {pipe.run_name} ({run_id})"]
    lines += [f"  {name:<32} {metrics[name]:.4f}" for level in levels
              for name in (f"{level}_precision_at_{k}", f"{level}_text_precision_at_{k}") if name in metrics]
    lines.append(f"  catalog {metrics['n_catalog']}, queries {metrics['n_queries']}, "
                 f"skipped {metrics['skipped_images'] + metrics['excluded_images']}, "
                 f"features {metrics['feature_dim']}-d, feature stage {metrics['extract_seconds']:.1f}s")
    if pipe.tracker.where():
        lines.append(f"  {pipe.tracker.where()}")
    lines.append(f"  neighbours: {pipe.cfg.store.path} (run_id {run_id})")
    return "\n".join(lines)
