"""python -m harness.index build|update|info|rollback [--version N] [overrides ...]

The served catalog index of a catalog and extractor, named by the same config overrides as the run
that serves it (dataset, backbone, layer, preprocess, runtime):

    python -m harness.index build  dataset=products dataset.root=DIR     # a full version
    python -m harness.index update dataset=products dataset.root=DIR     # the catalog's changes since
    python -m harness.index info   dataset=products dataset.root=DIR     # its versions
    python -m harness.index info --all                                   # every index under index.root
    python -m harness.index rollback --version 3 dataset=products dataset.root=DIR

A served model that follows its index (index.follow, the default) answers from the new version within
a second of `update` or `rollback`, without a restart.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from harness.config import compose_config
from harness.errors import HarnessError


def describe(index) -> list[dict]:
    current = index.current()
    rows = []
    for number in index.versions():
        manifest = index.manifest(number)
        rows.append({"version": number, "current": number == current, "parent": manifest.get("parent"),
                     "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(manifest["created"])),
                     "items": sum(s["rows"] - len(s.get("deleted", [])) for s in manifest["segments"]),
                     "segments": len(manifest["segments"]), **manifest.get("counts", {})})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.index", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["build", "update", "info", "rollback"])
    parser.add_argument("--version", type=int, help="rollback: the version to serve")
    parser.add_argument("--all", action="store_true", help="info: every index under index.root")
    parser.add_argument("overrides", nargs="*", help="config overrides, as for python -m harness")
    args = parser.parse_intermixed_args(argv)
    try:
        cfg = compose_config(*args.overrides, "tracker=none")
        from harness.index.lifecycle import build, open_index, update
        from harness.index.store import IndexStore

        if args.command == "info":
            if args.all:
                root = Path(cfg.index.root)
                names = sorted(p.name for p in root.iterdir() if (p / "CURRENT").exists()) if root.exists() else []
                print(json.dumps({name: [v for v in describe(IndexStore(root, name)) if v["current"]]
                                  for name in names}, indent=1))
                return 0
            index = open_index(cfg)
            print(json.dumps({"index": str(index.dir), "versions": describe(index)}, indent=1))
            return 0
        if args.command == "rollback":
            if args.version is None:
                raise HarnessError("rollback needs --version N (python -m harness.index info lists them).")
            index = open_index(cfg)
            index.point(args.version)
            print(json.dumps({"index": str(index.dir), "current": args.version}))
            return 0
        from harness.pipeline import build as build_pipeline

        pipe = build_pipeline(cfg)
        result = build(pipe) if args.command == "build" else update(pipe)
        print(json.dumps(result))
        return 0
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
