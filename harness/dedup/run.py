"""dedup(pipe): the library function behind `python -m harness.dedup`.

The catalog's features come from the feature store (embedding what it lacks), its near-duplicate
pairs from each item's `dedup.k` nearest through the run's `search` index. With known duplicate groups
in the manifest (`dedup.truth` columns), pair precision and recall are scored over a threshold sweep
and, unless `dedup.threshold` is set, the threshold with the best pair F1 on the first of them is
chosen. The groups at that threshold are written to `dedup.output` and logged with the run.
"""
from __future__ import annotations

import logging
from contextlib import closing
from pathlib import Path

import numpy as np
import pandas as pd

from harness.dedup import find_pairs, pair_scores, truth_labels
from harness.errors import HarnessError

log = logging.getLogger(__name__)


def sweep_thresholds(dups, points: int = 24) -> np.ndarray:
    """Thresholds on the scale of this catalog and metric: quantiles (0.05 % … 25 %) of each item's
    distance to its nearest other item, and 0 (identical vectors)."""
    nearest = np.full(dups.n, np.inf)
    np.minimum.at(nearest, dups.pairs[:, 0], dups.distances)
    np.minimum.at(nearest, dups.pairs[:, 1], dups.distances)
    nearest = nearest[np.isfinite(nearest)]
    if not len(nearest):
        return np.zeros(1)
    return np.unique(np.concatenate([[0.0], np.quantile(nearest, np.geomspace(0.0005, 0.25, points))]))


def dedup(pipe, threshold: float | None = None, output: str | Path | None = None) -> dict:
    cfg = pipe.cfg
    settings = cfg.dedup
    threshold = settings.threshold if threshold is None else threshold
    output = Path(output or settings.output)
    catalog = pipe.dataset.load()
    truths = [c for c in settings.truth if c in catalog.items]
    if threshold is None and not truths:
        raise HarnessError(f"dedup.threshold is needed: the catalog has none of the duplicate-group columns "
                           f"dedup.truth names ({', '.join(settings.truth) or 'none'}) to choose it on.")
    with pipe.tracker.job(f"dedup-{pipe.run_name}", cfg) as job:
        with closing(pipe.open_store()) as store:
            feats = pipe.extract(catalog, store)
        keep = feats.valid & ~catalog.is_distractor
        items = catalog.items[keep].reset_index(drop=True)
        dups = find_pairs(feats.emb[keep], pipe.metric, int(settings.k), None, pipe.index)
        sweep = []
        thresholds = sweep_thresholds(dups)
        labels = {t: dups.groups(t) for t in thresholds}
        for step, t in enumerate(thresholds):
            row = {"threshold": float(t), "groups": int(labels[t].max() + 1), "items_in_groups": int((labels[t] >= 0).sum())}
            for column in truths:
                scores = pair_scores(labels[t], truth_labels(items[column]))
                row.update({f"{column}_{k}": v for k, v in scores.items()})
            sweep.append(row)
        sweep = pd.DataFrame(sweep)
        if threshold is None:
            primary = truths[0]
            p, r = sweep[f"{primary}_pair_precision"].fillna(0), sweep[f"{primary}_pair_recall"].fillna(0)
            f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
            threshold = float(sweep["threshold"].iloc[int(np.argmax(f1))])  # ties: the smaller threshold
        threshold = float(threshold)
        found = dups.groups(threshold)
        table = dups.table(items["item_id"].to_numpy(), threshold)
        metrics = {"dedup_threshold": threshold, "dedup_groups": int(found.max() + 1),
                   "dedup_items_in_groups": int((found >= 0).sum()), "dedup_candidate_pairs": len(dups.pairs),
                   "n_catalog": len(items)}
        for n, column in enumerate(truths):
            scores = pair_scores(found, truth_labels(items[column]))
            suffix = "" if n == 0 else f"_{column}"
            metrics.update({f"dedup_pair_precision{suffix}": scores["pair_precision"],
                            f"dedup_pair_recall{suffix}": scores["pair_recall"],
                            f"dedup_true_pairs{suffix}": scores["true_pairs"]})
        for step, row in sweep.iterrows():
            job.log_metrics({f"sweep/{k}": v for k, v in row.items() if isinstance(v, (int, float, np.number))
                             and np.isfinite(v)}, step=int(step))
        job.log_metrics(metrics)
        job.log_artifacts({"duplicates.csv": table, "dedup_sweep.csv": sweep,
                           **({"dedup_sweep.png": sweep_figure(sweep, truths, threshold)} if truths else {})})
        output.parent.mkdir(parents=True, exist_ok=True)
        partial = output.with_name(f".{output.name}.partial")
        table.to_csv(partial, index=False)
        partial.replace(output)  # never a half-written list
    log.info("dedup: %d groups (%d items) at threshold %.6g; %s", metrics["dedup_groups"],
             metrics["dedup_items_in_groups"], threshold, output)
    return {**metrics, "output": str(output), "run_id": job.run_id}


def sweep_figure(sweep: pd.DataFrame, truths: list[str], chosen: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for column in truths:
        ax.plot(sweep["threshold"], sweep[f"{column}_pair_precision"], marker="o", ms=3, label=f"{column} precision")
        ax.plot(sweep["threshold"], sweep[f"{column}_pair_recall"], marker="s", ms=3, label=f"{column} recall")
    ax.axvline(chosen, color="grey", ls="--", lw=1, label=f"chosen {chosen:.4g}")
    ax.set_xscale("symlog", linthresh=max(float(sweep["threshold"][sweep["threshold"] > 0].min()) if (sweep["threshold"] > 0).any() else 1e-6, 1e-9))
    ax.set_xlabel("distance threshold")
    ax.set_ylabel("pair precision / recall")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    return fig
