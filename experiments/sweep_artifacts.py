"""Bytes a six-metric products sweep stores for serving: its models' artifacts and the catalog index.

    python experiments/sweep_artifacts.py                       # this checkout
    python experiments/sweep_artifacts.py --checkout /tmp/old   # another one (e.g. a git worktree)

Runs `python -m harness -m metric=<all six>` on the shared products catalog into a temporary root and
sums the files under every logged model and under index.root. JSON in experiments/bench/.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = "euclidean,manhattan,minkowski,chebyshev,correlation,cosine"


def size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.exists() else 0


def measure(checkout: Path, catalog: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(checkout)}
        cmd = [sys.executable, "-m", "harness", "-m", "dataset=products", f"dataset.root={catalog}",
               f"metric={METRICS}", f"paths.root={tmp}", "extract.progress=false",
               f"paths.openvino={ROOT / '.cache' / 'openvino'}"]
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=checkout, env=env, check=True, capture_output=True, timeout=3600)
        seconds = time.perf_counter() - t0
        models = [p.parent for p in Path(tmp, "mlruns").rglob("MLmodel")]
        return {"checkout": str(checkout), "models": len(models), "model_bytes": sum(size(m) for m in models),
                "index_bytes": size(Path(tmp, "mlruns", "index")), "sweep_seconds": round(seconds, 1)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", type=Path, action="append", help="default: this one (repeatable)")
    parser.add_argument("--catalog", type=Path, default=ROOT.parent / "shared" / "data" / "fashion-products")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "bench" / "sweep_artifacts.json")
    args = parser.parse_args(argv)
    rows = []
    for checkout in args.checkout or [ROOT]:
        row = measure(checkout.resolve(), args.catalog)
        row["total_bytes"] = row["model_bytes"] + row["index_bytes"]
        rows.append(row)
        print(row, flush=True)
    from harness.machine import machine  # the CPU and its ISA flags, as every benchmark records them

    args.out.write_text(json.dumps({"section": "sweep_artifacts", "machine": machine(), "date": time.strftime("%Y-%m-%d"),
                                    "rows": rows}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
