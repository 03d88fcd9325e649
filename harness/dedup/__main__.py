"""python -m harness.dedup [--threshold T] [--output FILE] [overrides ...]

Near-duplicate groups of a catalog, with the same config overrides as a run (dataset, backbone,
metric, search): each item's dedup.k nearest through the index, pairs within the threshold joined
into groups, written as CSV (item_id, group, distance to the group's first item) and logged as a run.

    python -m harness.dedup dataset=products dataset.root=../shared/data/fashion-products
    python -m harness.dedup dataset=products dataset.root=DIR --threshold 0.02 search=ivf   # large catalogs
"""
from __future__ import annotations

import argparse
import json
import sys

from harness.config import compose_config
from harness.errors import HarnessError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.dedup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threshold", type=float, help="distance under which two items are duplicates "
                        "(default dedup.threshold; null: the best pair F1 on the manifest's duplicate groups)")
    parser.add_argument("--output", help="the groups' CSV (default dedup.output)")
    parser.add_argument("overrides", nargs="*", help="config overrides, as for python -m harness")
    args = parser.parse_intermixed_args(argv)
    try:
        if args.threshold is not None and not args.threshold >= 0:
            raise HarnessError(f"--threshold must be a distance >= 0, got {args.threshold}.")
        cfg = compose_config(*args.overrides)
        from harness.dedup.run import dedup
        from harness.pipeline import build

        result = dedup(build(cfg), args.threshold, args.output)
        print(json.dumps(result, default=float))
        return 0
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
