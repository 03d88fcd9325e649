"""python -m harness.report [--sweep RUN_ID]: one table, bar charts and bootstrap intervals per sweep.

Writes experiments/reports/<sweep>.md (+ PNGs) and logs them to the sweep's parent run. Each row is
a child run; each cell the cross-validated mean ± std where the run has folds, else the value.
The last columns compare the run's per-query precision with the best run's, over the queries both
answered: a paired bootstrap 95 % interval of the difference (one that excludes 0 is a real gap) and
a paired randomization test's p (`paired_permutation`, the same interface).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from hydra.utils import get_class
from matplotlib.figure import Figure

from harness.tracking import build_tracker
from harness.tracking.sweeps import log_artifacts_to, pick_sweep, read_csv_artifact, sweep_children
from harness.config import ROOT, compose_config
from harness.errors import HarnessError
from harness.metrics.retrieval import bootstrap_interval


def lower_is_better(children: list[dict]) -> tuple[str, ...]:
    """Metric-name prefixes the runs' own evaluators declare lower-is-better (read from their params)."""
    prefixes = set()
    for child in children:
        for key, target in child["params"].items():
            if key.startswith("evaluator.") and key.endswith("._target_"):
                try:
                    prefixes.update(get_class(target).lower_is_better)
                except Exception:  # an evaluator class that no longer exists: its metrics default to higher
                    pass
    return tuple(sorted(prefixes))


def describe(params: dict) -> dict:
    metric = params.get("metric._target_", "").rsplit(".", 1)[-1].lower()
    if "metric.p" in params:
        metric += f"(p={params['metric.p']})"
    return {"backbone": params.get("backbone.arch"), "layer": params.get("layer.name"),
            "preprocess": params.get("preprocess._target_", "").rsplit(".", 1)[-1].lower(), "metric": metric}


def columns_for(metrics, k: int) -> list[str]:
    levels = sorted({m[: -len(f"_precision_at_{k}")] for m in metrics
                     if m.endswith(f"_precision_at_{k}") and "/" not in m})  # not the fold/ series
    wanted = [f"{lv}_{s}" for lv in levels for s in (f"precision_at_{k}", "map_at_r")]
    return wanted + [c for c in ("color_correlation_mean", "texture_chi2_mean") if c in metrics]


def value(metrics: dict, name: str) -> tuple[float, float | None]:
    if f"{name}_mean" in metrics:
        return metrics[f"{name}_mean"], metrics.get(f"{name}_std")
    return metrics.get(name, np.nan), None


def paired_bootstrap(diff: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, 95 % interval) of per-query differences between two runs."""
    return bootstrap_interval(diff, n, seed)


def paired_permutation(diff: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """(mean difference, two-sided p): Fisher's paired randomization test, as ranx runs it. Under "no
    difference" each query's sign is a coin flip; p is the share of sign assignments whose mean is at
    least as far from 0 as the one observed. Exact (every assignment) when there are at most `n` of
    them, else `n` seeded draws (the observed one counted, so p is never 0)."""
    diff = np.asarray(diff, dtype=np.float64)
    observed = abs(diff.mean()) if len(diff) else 0.0
    if len(diff) == 0:
        return 0.0, 1.0
    if 2 ** len(diff) <= n:
        signs = 1 - 2 * ((np.arange(2 ** len(diff))[:, None] >> np.arange(len(diff))) & 1)
        means = np.abs((signs * diff).mean(axis=1))
        return float(diff.mean()), float(np.mean(means >= observed - 1e-12))
    rng = np.random.default_rng(seed)
    means = np.empty(n)
    for start in range(0, n, 256):  # bounded memory: 256 × queries signs at a time
        signs = rng.choice((-1.0, 1.0), (min(256, n - start), len(diff)))
        means[start:start + len(signs)] = np.abs(signs @ diff) / len(diff)
    return float(diff.mean()), float((np.sum(means >= observed - 1e-12) + 1) / (n + 1))


def own_overrides(children: list[dict]) -> list[str]:
    """What sets each run apart: its sweep overrides that not every run of the sweep shares."""
    split = [c.get("overrides", "").split() for c in children]
    shared = set.intersection(*map(set, split)) if split else set()
    return [" ".join(o for o in overrides if o not in shared) for overrides in split]


def build(children: list[dict], selection: str, k: int, per_query: dict) -> tuple[pd.DataFrame, list[str], dict]:
    """per_query: run id -> its per_query.csv table (None where a run lacks it)."""
    cols = columns_for({name for child in children for name in child["metrics"]}, k)  # every run's levels
    rows = []
    for child, overrides in zip(children, own_overrides(children)):
        row = {"run_id": child["run_id"], **describe(child["params"]), "overrides": overrides}
        for c in cols:
            row[c], row[f"{c}_std"] = value(child["metrics"], c)
        rows.append(row)
    table = pd.DataFrame(rows)
    best = table.loc[table[selection].idxmax(), "run_id"]
    intervals, p_values = {}, {}
    ref = per_query.get(best)
    for run_id, pq in per_query.items():
        if ref is None or pq is None or selection not in pq:
            continue
        both = ref[["item_id", selection]].merge(pq[["item_id", selection]], on="item_id", suffixes=("_best", ""))
        diff = (both[selection] - both[f"{selection}_best"]).to_numpy()
        intervals[run_id] = paired_bootstrap(diff)
        p_values[run_id] = paired_permutation(diff)[1]
    return table, cols, {"best": best, "intervals": intervals, "p_values": p_values}


def markdown(table: pd.DataFrame, cols: list[str], extra: dict, selection: str, sweep: str,
             lower: tuple[str, ...] = ()) -> str:
    fmt = []
    for _, r in table.iterrows():
        cells = [r.overrides, r.backbone, r.layer, r.preprocess, r.metric]
        for c in cols:
            best = table[c].min() if c.startswith(lower) else table[c].max()
            if pd.isna(r[c]):
                cells.append("–")  # a run that did not evaluate this level
                continue
            txt = f"{r[c]:.4f}" + (f" ± {r[f'{c}_std']:.4f}" if pd.notna(r[f"{c}_std"]) else "")
            cells.append(f"**{txt}**" if np.isclose(r[c], best) else txt)
        iv, p = extra["intervals"].get(r.run_id), extra.get("p_values", {}).get(r.run_id)
        cells.append("best" if r.run_id == extra["best"] else
                     (f"{iv[0]:+.4f} [{iv[1]:+.4f}, {iv[2]:+.4f}]" if iv else "n/a"))
        cells.append("–" if r.run_id == extra["best"] or p is None else f"{p:.4f}")
        fmt.append("| " + " | ".join(str(c) for c in cells) + " |")
    head = ["run (its own overrides)", "backbone", "layer", "preprocess", "metric", *cols,
            f"Δ {selection} vs best [95% CI]", "p (permutation)"]
    return "\n".join([
        f"# Sweep {sweep}", "",
        f"{len(table)} runs. Cells: mean ± std over folds where the run has folds. **Bold**: best per column "
        f"(lowest for {', '.join(lower) or 'none'}, highest otherwise). Last column: paired bootstrap (2,000 resamples) 95 % "
        "interval of per-query precision minus the best run's; an interval excluding 0 is a real gap. p: paired "
        "randomization test (sign flips, 2,000 draws) of the same difference.", "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head), *fmt, "",
        "![precision](precision.png)", "", *(["![colour and texture](color_texture.png)"] if "color_correlation_mean" in cols else []),
    ])


def charts(table: pd.DataFrame, cols: list[str], out: Path, sweep: str) -> list[Path]:
    labels = [r.overrides.replace(" ", "\n") or f"{r.backbone}\n{r.metric}" for r in table.itertuples()]
    paths = []
    for name, group in (("precision", [c for c in cols if "precision" in c or "map_at_r" in c]),
                        ("color_texture", [c for c in cols if c.startswith(("color", "texture"))])):
        if not group:
            continue
        fig = Figure(figsize=(max(6, 0.55 * len(table)) * len(group) / 1.6, 3.6))
        axes = fig.subplots(1, len(group), squeeze=False)
        for ax, c in zip(axes[0], group):
            ax.bar(range(len(table)), table[c], yerr=table[f"{c}_std"].fillna(0), color="tab:blue", capsize=2)
            ax.set_xticks(range(len(table)), labels, rotation=90, fontsize=7)
            ax.set_title(c, fontsize=9)
        fig.tight_layout()
        path = out / f"{sweep}_{name}.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m harness.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", help="parent run id (default: the newest sweep whose every job finished)")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="use a sweep that did not finish (running, interrupted, failed jobs)")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "reports")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. tracking.experiment=NAME")
    args = parser.parse_args(argv)
    cfg = compose_config(*args.overrides)
    tracker = build_tracker(cfg)
    sweep = pick_sweep(tracker, args.sweep, args.allow_incomplete)
    children = sweep_children(tracker, sweep)
    if not children:
        raise HarnessError(f"Sweep {sweep} has no finished child runs.")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        per_query = {c["run_id"]: read_csv_artifact(tracker, c["run_id"], "per_query.csv", Path(tmp) / c["run_id"])
                     for c in children}
    table, cols, extra = build(children, cfg.selection.metric, int(cfg.k), per_query)
    pngs = charts(table, cols, args.out, sweep)
    text = markdown(table, cols, extra, cfg.selection.metric, sweep, lower_is_better(children))
    for png in pngs:
        text = text.replace(f"({png.name.split('_', 1)[1]})", f"({png.name})")
    report = args.out / f"{sweep}.md"
    report.write_text(text)
    log_artifacts_to(tracker, sweep, [report, *pngs], "report")
    print(f"report: {report}")
    return report


if __name__ == "__main__":
    try:
        main()
    except HarnessError as exc:
        raise SystemExit(f"error: {exc}")
