"""How much a score depends on which images the job happened to draw: the same job on other subsets.

    .venv/bin/python experiments/subsets.py [--seeds 10] [overrides ...]

With no overrides this is `make run`'s job (Fashion-MNIST: a stratified 5,000 training images as
catalog, 1,000 test images as queries) with `seed` = 0 … n-1, which draws other images and changes
nothing else. Features are reused from the project's feature store; nothing is logged to MLflow
(`tracker=none`). Writes experiments/bench/subsets.json: per-seed precision@k, mean, sd, min, max.
"""
from __future__ import annotations

import argparse
import json
import logging

import numpy as np

from harness import ROOT
from harness.machine import machine
from harness.config import compose_config
from harness.run import run


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for seed in range(args.seeds):
        cfg = compose_config(*args.overrides, f"seed={seed}", "tracker=none", "extract.progress=false",
                             "serving.log_model=false")
        metrics = run(cfg)
        keys = sorted(key for key in metrics if key.endswith(f"_precision_at_{cfg.k}"))
        rows.append({"seed": seed, **{key: round(metrics[key], 4) for key in keys}})
        print(rows[-1], flush=True)
    summary = {}
    for key in rows[0]:
        if key != "seed":
            values = np.array([r[key] for r in rows])
            summary[key] = {"mean": round(values.mean(), 4), "sd": round(values.std(ddof=1), 4),
                            "min": float(values.min()), "max": float(values.max())}
    result = {"machine": machine(), "overrides": args.overrides, "runs": rows, "summary": summary}
    print(json.dumps(summary, indent=2))
    (ROOT / "experiments" / "bench" / "subsets.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
