"""What goes into a served index, and how a catalog that changed becomes its next version.

An index is named by the catalog (its root, subsample and distractors setting) and the extractor (the
feature fingerprint): every run of a sweep over metrics on one extractor serves the same vectors, and
they are stored once. Its items are the served catalog rows (no distractors, nothing the run left out)
with their content hashes and every catalog column, so filters can use them.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from harness.index.store import IndexStore

BOOKKEEPING = ("split", "distractor")


def index_name(cfg) -> str:
    """`<catalog folder>-<digest>` of the catalog (dataset root, subsample) and the extractor as configured
    (backbone, layer, preprocessing, runtime, store dtype, int8 calibration): known from the config alone,
    so a run, `build`, `update` and `info` name the same index before anything is read."""
    from omegaconf import OmegaConf

    plain = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("dataset", "backbone", "preprocess", "runtime")}
    plain["runtime"].pop("cache_dir", None)  # where networks are cached changes nothing they compute
    dataset = plain.pop("dataset")
    root = str(Path(str(dataset["root"])).expanduser().absolute()) if dataset.get("root") else ""
    identity = {"dataset": {"target": dataset.get("_target_"), "root": root, "limit": dataset.get("limit")},
                **plain, "store_dtype": str(cfg.store.dtype),
                "calibration": OmegaConf.to_container(cfg.extract.calibration, resolve=True)}
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]
    folder = Path(root).name or str(dataset.get("_target_", "catalog")).rsplit(".", 1)[-1]
    folder = re.sub(r"[^A-Za-z0-9_.-]+", "-", folder).strip("-.") or "catalog"
    return f"{folder}-{digest}"


def served_items(items: pd.DataFrame) -> pd.DataFrame:
    """The columns an index keeps: the catalog's own and the content hash (not the harness's bookkeeping)."""
    return items[[c for c in items.columns if c not in BOOKKEEPING]].reset_index(drop=True)


def publish(store: IndexStore, items: pd.DataFrame, vectors: np.ndarray, info: dict) -> int:
    """The index version holding exactly `items` with `vectors`: the current one when it already does
    (a sweep's every run), else a new full version."""
    current = store.current()
    if current is not None:
        snap = store.read(current)
        if _same(snap.items, items) and snap.vectors.shape == vectors.shape and np.array_equal(snap.vectors, vectors):
            return current
    return store.commit(items, vectors, full=True, info={**info, "counts": {"added": len(items), "changed": 0,
                                                                            "removed": 0, "unchanged": 0}})


def _same(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    if sorted(a.columns) != sorted(b.columns) or len(a) != len(b):
        return False
    return a[sorted(a.columns)].astype(str).reset_index(drop=True).equals(b[sorted(b.columns)].astype(str).reset_index(drop=True))


def diff(before: pd.DataFrame, now: pd.DataFrame) -> dict[str, list]:
    """Item ids added, changed (another image, or other catalog values), removed and unchanged between
    two item tables (each with item_id and content_hash)."""
    old = before.set_index("item_id")
    new = now.set_index("item_id")
    added = [i for i in new.index if i not in old.index]
    removed = [i for i in old.index if i not in new.index]
    common = [i for i in new.index if i in old.index]
    columns = sorted(set(old.columns) | set(new.columns))
    a = old.reindex(columns=columns).loc[common].fillna("").astype(str)
    b = new.reindex(columns=columns).loc[common].fillna("").astype(str)
    differs = (a.to_numpy() != b.to_numpy()).any(axis=1) if len(common) else np.zeros(0, bool)
    changed = [i for i, d in zip(common, differs) if d]
    unchanged = [i for i, d in zip(common, differs) if not d]
    return {"added": added, "changed": changed, "removed": removed, "unchanged": unchanged}
