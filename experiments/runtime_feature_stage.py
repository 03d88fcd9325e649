"""`make run`'s feature stage under each runtime, measured in one run with interleaved rounds.

    .venv/bin/python experiments/runtime_feature_stage.py [--rounds 2] [overrides ...]

With no overrides this is `make run`'s job (Fashion-MNIST, efficientnet_lite0, 6,000 images). Each
variant extracts into its own empty feature store (so every image is decoded and embedded), with no
MLflow (`tracking=null`); the feature stage is the run's `extract_seconds` (decode + embed, and the
OpenVINO conversion or TorchInductor compilation where there is one: the first round converts, later
rounds read the converted network from `paths.openvino`). Writes experiments/bench/runtime_feature_stage.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile

import numpy as np

from harness import ROOT
from harness.backbones.base import cpu_has_bf16
from harness.machine import machine
from harness.config import compose_config
from harness.run import run


def variants() -> dict[str, list[str]]:
    """OpenVINO against torch in the CPU's own precision (bf16 where it has it), eager and compiled."""
    out = {"openvino": ["runtime=openvino"],
           "torch": ["runtime=torch"],
           "torch_compiled": ["runtime=inductor"]}
    if cpu_has_bf16():  # the default precision there is bf16; fp32 shown for the AVX2-only comparison
        out["openvino_fp32"] = ["runtime=openvino", "backbone.precision=fp32"]
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    seconds: dict[str, list[float]] = {}
    scores: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for label, settings in variants().items():
                cfg = compose_config(*args.overrides, *settings, "tracking=null", "extract.progress=false",
                                     f"store.path={tmp}/{label}-{r}.sqlite")
                metrics = run(cfg)
                seconds.setdefault(label, []).append(round(metrics["extract_seconds"], 1))
                scores[label] = {k: round(v, 4) for k, v in metrics.items() if k.endswith(f"_precision_at_{cfg.k}")}
                print(label, r, seconds[label][-1], scores[label], flush=True)
    median = {k: float(np.median(v)) for k, v in seconds.items()}
    result = {"machine": machine(), "overrides": args.overrides, "rounds": args.rounds,
              "feature_stage_seconds": median, "all_rounds": seconds,
              "openvino_speedup": {k: round(v / median["openvino"], 2) for k, v in median.items() if k != "openvino"},
              "precision_at_k": scores}
    print(json.dumps(result, indent=2))
    (ROOT / "experiments" / "bench" / "runtime_feature_stage.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
