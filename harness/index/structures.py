"""Search structures kept with an index's versions, moved in place from one version to the next.

An approximate index (an Index class with `save` / `restore` / `move`: search=ivf) over a version
is part of the served artifact: training IVF cells on a million vectors takes minutes, an update of
1 % must not. One folder per (metric, search settings, projection) that serves the index:

    <index>/structures/<key>/spec.json        the metric, the search.index config, the projection's digest
    <index>/structures/<key>/projection.npz   the served model's fitted projection, if it has one
    <index>/structures/<key>/<version>.faiss  the structure over that version's rows (by row id)
    <index>/structures/<key>/<version>.json   its sha256, the row count, what restoring it needs

A version's structure is read when its digest matches; else moved from its parent's (the parent's
removed row ids taken out, its new rows added to the cells already trained); else built. Each is
written under a temporary name and renamed, its .json last: a reader never sees half of one.
`refresh` moves every structure of a version's parent to it (the CLI's update does, so a served
model that follows the index finds the new one ready).
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import uuid
from pathlib import Path

import numpy as np

from harness.config import instantiate
from harness.errors import HarnessError
from harness.index.store import IndexStore, Snapshot, _sha256, _write_atomically, row_ids
from harness.projections import FittedProjection

log = logging.getLogger(__name__)


def persistent(factory) -> bool:
    """Whether an index class (or a partial of one) keeps its structure with the versions."""
    cls = factory.func if isinstance(factory, functools.partial) else factory
    return all(hasattr(cls, name) for name in ("save", "restore", "move"))


def _settings(factory) -> tuple[type, dict]:
    cls = factory.func if isinstance(factory, functools.partial) else factory
    return cls, dict(factory.keywords) if isinstance(factory, functools.partial) else {}


def _digest(projection: FittedProjection | None) -> str | None:
    if projection is None:
        return None
    h = hashlib.sha256()
    for a in (projection.weight, projection.bias):
        h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
    return h.hexdigest()


class Structures:
    """The structures of one (metric, search settings, projection) over the versions of `store`."""

    def __init__(self, store: IndexStore, metric_spec: dict, index_spec: dict, projection: FittedProjection | None = None):
        self.store, self.projection = store, projection
        self.metric, self.factory = instantiate(metric_spec), instantiate(index_spec)
        self.cls, settings = _settings(self.factory)
        structural = {k: settings.get(k) for k in getattr(self.cls, "structure_settings", ())}
        self.spec = {"metric": metric_spec, "index": index_spec, "structure": structural,
                     "class": f"{self.cls.__module__}.{self.cls.__qualname__}", "projection": _digest(projection)}
        key = {k: self.spec[k] for k in ("metric", "structure", "class", "projection")}
        self.key = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
        self.dir = store.dir / "structures" / self.key
        self.search_settings = {k: v for k, v in settings.items() if k not in structural}

    def _paths(self, version: int) -> tuple[Path, Path]:
        return self.dir / f"{version}.faiss", self.dir / f"{version}.json"

    def _state(self, version: int) -> dict | None:
        """A saved structure's record when its file matches the digest recorded, else None (logged)."""
        path, record = self._paths(version)
        if not record.exists():
            return None
        state = json.loads(record.read_text())
        if not path.exists() or _sha256(path) != state["sha256"]:
            log.warning("structure %s does not match its recorded digest; building it again", path)
            return None
        return state

    def features(self, vectors: np.ndarray) -> np.ndarray:
        """Stored vectors as this structure searches them (projected by the served model's projection)."""
        return self.projection.transform(vectors) if self.projection is not None else vectors

    def open(self, snapshot: Snapshot, features: np.ndarray | None = None):
        """The index over `snapshot` (`features`: its vectors as searched, projected already if given):
        restored, moved from the parent version's, or built, and saved for the next reader."""
        features = self.features(snapshot.vectors) if features is None else features
        ids, version = snapshot.ids, snapshot.version
        if ids is None:  # a version written before rows had ids: nothing to keep a structure by
            return self.factory(features, self.metric)
        state = self._state(version)
        if state is not None and state["rows"] == len(ids):
            return self.cls.restore(features, self.metric, self._paths(version)[0], state, ids, **self.search_settings)
        parent = snapshot.manifest.get("parent")
        parent_ids = None if parent is None or not self._paths(parent)[1].exists() else row_ids(self.store.manifest(parent))
        if parent_ids is not None:
            new_rows = np.flatnonzero(~np.isin(ids, parent_ids, assume_unique=True))
            if self.move(parent, snapshot.manifest, features[new_rows]):
                return self.open(snapshot, features)
        index = self.factory(features, self.metric, ids=ids)
        self._save(index.save, version, len(ids), None)
        log.info("index %s version %d: %s structure built", self.store.dir, version, self.cls.name)
        return index

    def move(self, parent: int, manifest: dict, new_emb: np.ndarray) -> bool:
        """The structure of version `manifest` from its `parent`'s, in place: the rows gone since removed,
        `new_emb` (the rows it adds, in id order, as searched: projected already) added. False when the
        parent has no structure (or one that fails its digest) to move."""
        state = self._state(parent)
        if state is None:
            return False
        parent_ids, ids = row_ids(self.store.manifest(parent)), row_ids(manifest)
        gone = np.setdiff1d(parent_ids, ids, assume_unique=True)
        new_ids = np.setdiff1d(ids, parent_ids, assume_unique=True)
        if len(new_ids) != len(new_emb):
            raise HarnessError(f"version {manifest['version']} adds {len(new_ids)} rows; {len(new_emb)} vectors given.")
        path = self._paths(parent)[0]
        self._save(lambda out: self.cls.move(self.metric, path, state, gone, new_emb, new_ids, out),
                   manifest["version"], len(ids), parent)
        log.info("index %s version %d: %s structure moved from version %d (%d removed, %d added)",
                 self.store.dir, manifest["version"], self.cls.name, parent, len(gone), len(new_ids))
        return True

    def _save(self, write, version: int, rows: int, parent: int | None) -> None:
        """`write(path)` saves a structure there and returns its state."""
        self.dir.mkdir(parents=True, exist_ok=True)
        spec = self.dir / "spec.json"
        if not spec.exists():
            if self.projection is not None:
                partial = self.dir / f".projection.{uuid.uuid4().hex[:6]}.npz"
                self.projection.save(partial)
                os.replace(partial, self.dir / "projection.npz")
            _write_atomically(spec, json.dumps(self.spec, indent=1, default=str))
        path, record = self._paths(version)
        partial = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}")
        state = write(partial)
        with open(partial, "rb") as fh:
            os.fsync(fh.fileno())
        digest = _sha256(partial)
        os.replace(partial, path)
        _write_atomically(record, json.dumps({**state, "sha256": digest, "rows": rows, "from_parent": parent}))

    @classmethod
    def known(cls, store: IndexStore) -> list["Structures"]:
        """Every structure folder of `store` (its spec and projection read back, the projection checked)."""
        out = []
        for spec_path in sorted((store.dir / "structures").glob("*/spec.json")):
            spec = json.loads(spec_path.read_text())
            projection = None
            if spec.get("projection"):
                projection = FittedProjection.load(spec_path.parent / "projection.npz")
                if _digest(projection) != spec["projection"]:
                    raise HarnessError(f"{spec_path.parent / 'projection.npz'} does not match its recorded digest.")
            out.append(cls(store, spec["metric"], spec["index"], projection))
        return out


def refresh(store: IndexStore, version: int, new_vectors: np.ndarray) -> list[str]:
    """Move every structure kept for `version`'s parent to it, `new_vectors` being the rows the version
    adds (as stored: each structure projects them its own way); returns the keys moved."""
    manifest = store.manifest(version)
    parent = manifest.get("parent")
    if parent is None or row_ids(manifest) is None:
        return []
    moved = []
    for structures in Structures.known(store):
        if structures._state(version) is None and structures.move(parent, manifest, structures.features(new_vectors)):
            moved.append(structures.key)
    return moved
