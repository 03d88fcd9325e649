"""python -m harness.register [--sweep RUN_ID] [--metric NAME] [overrides]: re-select the champion.

Picks the best finished child of a sweep (default: the newest sweep whose every job finished; others
are named and passed over) by the metric (default
selection.metric; its cross-validated mean when present; ties → the faster extractor), registers
its model under serving.model_name and points the `champion` alias at it.
"""
from __future__ import annotations

import argparse

from harness.tracking import build_tracker
from harness.tracking.champion import select_champion
from harness.tracking.models import register_champion
from harness.tracking.sweeps import pick_sweep, sweep_children
from harness.config import compose_config
from harness.errors import HarnessError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.register", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", help="parent run id (default: the newest sweep whose every job finished)")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="use a sweep that did not finish (running, interrupted, failed jobs)")
    parser.add_argument("--metric", help="selection metric (default: selection.metric)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    cfg = compose_config(*args.overrides)
    tracker = build_tracker(cfg)
    sweep = pick_sweep(tracker, args.sweep, args.allow_incomplete)
    children = [c for c in sweep_children(tracker, sweep) if c["model_uri"]]
    if not children:
        raise HarnessError(f"Sweep {sweep} has no finished run with a logged model.")
    best = select_champion(children, args.metric or cfg.selection.metric)
    version = register_champion(best["run_id"], cfg.serving.model_name)
    print(f"models:/{cfg.serving.model_name}@champion → version {version}, run {best['run_id']}")
    return version


if __name__ == "__main__":
    try:
        main()
    except HarnessError as exc:
        raise SystemExit(f"error: {exc}")
