"""Cost of the evaluators: 10-fold runs with evaluator=all, =default (precision@k, ranking metrics,
distractors) and =precision (precision@k only); ratios of medians.

    .venv/bin/python experiments/eval_overhead.py [--catalog DIR] [--repeats 5]

Features come from the feature store (a warm-up run fills it, and the histogram cache); each timed
run is a whole `python -m harness` process, so start-up and MLflow logging count on both sides.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import numpy as np

from harness import ROOT
from bench import DEFAULT_CATALOG
from harness.machine import machine


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--catalog", default=str(DEFAULT_CATALOG))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = [sys.executable, "-m", "harness", "dataset=products", f"dataset.root={args.catalog}",
                "protocol=kfold", "protocol.folds=10", f"tracking.uri=sqlite:///{tmp}/mlflow.db",
                f"tracking.artifact_root={tmp}/artifacts", "extract.progress=false", "serving.log_model=false"]

        def timed(evaluator):
            t0 = time.perf_counter()
            subprocess.run([*base, f"evaluator={evaluator}"], cwd=ROOT, check=True, capture_output=True)
            return time.perf_counter() - t0

        timed("all")  # warm-up: features and histograms into the store
        names = ("precision", "default", "all")
        times = {ev: [] for ev in names}
        for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits every variant alike
            for ev in names:
                times[ev].append(timed(ev))
        rows = {ev: float(np.median(t)) for ev, t in times.items()}
    result = {"machine": machine(), "repeats": args.repeats,
              "median_seconds": {k: round(v, 2) for k, v in rows.items()},
              "min_seconds": {k: round(min(t), 2) for k, t in times.items()},
              "all_over_precision": round(rows["all"] / rows["precision"], 3),
              "all_over_default": round(rows["all"] / rows["default"], 3),
              "default_over_precision": round(rows["default"] / rows["precision"], 3)}
    print(result)
    (ROOT / "experiments" / "bench" / "eval_overhead.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
