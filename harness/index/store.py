"""The served catalog index: versions of (items, vectors), written atomically, verified when read.

One index per catalog and extractor, under `index.root`:

    <name>/segments/<id>/{items.csv, vectors.npy}   immutable, written once
    <name>/versions/<n>.json                         which segments, which of their rows are deleted,
                                                     each file's sha256, what changed since the parent
    <name>/CURRENT                                   the version served

A version is a list of segments and the rows deleted from them, so an update writes only what it adds
(a new segment) and a new version file, whatever the catalog's size; a full build writes one segment.
Every file is written under a temporary name and renamed; CURRENT is replaced last. A build killed at
any point leaves CURRENT naming the previous version, whose files are all there: readers never see a
half-written version. Readers check every file against the digests its version recorded.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock

from harness.errors import HarnessError

ITEM_KEYS = ("item_id", "content_hash")


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}")
    with open(partial, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(partial, path)


@dataclass
class Snapshot:
    """One version as served: the live items (a table with item_id, content_hash, path and the catalog's
    columns) and their vectors, row for row."""
    version: int
    items: pd.DataFrame
    vectors: np.ndarray
    manifest: dict
    ids: np.ndarray | None = None  # each row's id in the index (ascending, never reused): what search
    # structures name rows by across versions; None for versions written before segments had ids


class IndexStore:
    """`root`/`name`: one index. Writers hold its lock; readers need none (they read a version's files,
    which never change once written)."""

    def __init__(self, root, name: str):
        self.dir = Path(root).expanduser().absolute() / name
        self.name = name

    # -- reading ------------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.dir / "CURRENT").exists()

    def current(self) -> int | None:
        try:
            return int((self.dir / "CURRENT").read_text().strip())
        except FileNotFoundError:
            return None
        except ValueError:
            raise HarnessError(f"index {self.dir}: CURRENT does not name a version.") from None

    def manifest(self, version: int) -> dict:
        path = self.dir / "versions" / f"{version}.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise HarnessError(f"index {self.dir} has no version {version} "
                               f"(versions: {', '.join(map(str, self.versions())) or 'none'}).") from None

    def versions(self) -> list[int]:
        folder = self.dir / "versions"
        return sorted(int(p.stem) for p in folder.glob("*.json")) if folder.exists() else []

    def read(self, version: int | None = None, vectors: bool = True) -> Snapshot:
        """A version (default: the current one) with every file it reads checked against its recorded
        digest; `vectors=False`: its items only (a backend that searches elsewhere), vectors (0, dim)."""
        if not self.dir.exists():
            raise HarnessError(f"index {self.dir} is not on this machine: serve the model where index.root "
                               "is mounted at the same path, or build the index here (python -m harness.index build).")
        version = self.current() if version is None else int(version)
        if version is None:
            raise HarnessError(f"index {self.dir} has no version yet: build it with python -m harness.index build.")
        manifest = self.manifest(version)
        tables, parts = [], []
        for segment in manifest["segments"]:
            folder = self.dir / "segments" / segment["id"]
            for file, digest in segment["sha256"].items():
                if file == "vectors.npy" and not vectors:
                    continue
                path = folder / file
                if not path.exists() or _sha256(path) != digest:
                    raise HarnessError(f"index {self.dir} version {version}: {path} does not match the digest "
                                       "recorded when it was written; rebuild the index.")
            items = pd.read_csv(folder / "items.csv", dtype=str, keep_default_na=False)
            keep = np.ones(len(items), dtype=bool)
            keep[np.asarray(segment.get("deleted", []), dtype=np.int64)] = False
            tables.append(items[keep])
            parts.append((folder / "vectors.npy", keep))
        if not vectors:
            items = pd.concat(tables, ignore_index=True).fillna("") if tables else pd.DataFrame(columns=["item_id"])
            return Snapshot(version, items, np.zeros((0, manifest["dim"]), np.float32), manifest, row_ids(manifest))
        # The live rows copied once into one array (each segment's file mapped, not read whole)
        vectors = np.empty((sum(int(k.sum()) for _, k in parts), manifest["dim"]), np.float32)
        at = 0
        for path, keep in parts:
            mapped = np.load(path, mmap_mode="r")
            for start in range(0, len(keep), 65536):  # bounded temporaries
                block = mapped[start:start + 65536][keep[start:start + 65536]]
                vectors[at:at + len(block)] = block
                at += len(block)
        items = pd.concat(tables, ignore_index=True).fillna("") if tables else pd.DataFrame(columns=["item_id"])
        return Snapshot(version, items, vectors, manifest, row_ids(manifest))

    # -- writing ------------------------------------------------------------------------------
    def commit(self, items: pd.DataFrame, vectors: np.ndarray, remove: set | None = None, *,
               parent: int | None = None, full: bool = False, info: dict | None = None) -> int:
        """A new version: `parent`'s segments without the items whose ids are in `remove`, plus a segment
        of `items` (with `vectors`); `full`: the new items alone. Made current; returns its number."""
        if len(items) != len(vectors):
            raise HarnessError(f"{len(items)} items for {len(vectors)} vectors.")
        for key in ITEM_KEYS:
            if key not in items:
                raise HarnessError(f"index items need a {key} column.")
        if items["item_id"].duplicated().any():
            raise HarnessError(f"duplicate item ids, e.g. {items['item_id'][items['item_id'].duplicated()].iloc[0]!r}.")
        self.dir.mkdir(parents=True, exist_ok=True)
        with FileLock(self.dir / "lock"):
            current = self.current()
            if parent is not None and parent != current:
                raise HarnessError(f"index {self.dir} moved to version {current} while this update was based on "
                                   f"{parent}; run the update again.")
            parent_manifest = None if current is None else self.manifest(current)
            base = [] if full or current is None else parent_manifest["segments"]
            segments = self._delete(base, set(remove or ()) | set(items["item_id"]))
            # Row ids are never reused within an index (a full build continues after the last one too)
            first = max(next_id(parent_manifest["segments"]) if parent_manifest else 0,
                        (parent_manifest or {}).get("next_id", 0))
            if len(items):
                segments.append(self._write_segment(items, vectors, first))
            number = max(self.versions(), default=0) + 1
            dims = {int(vectors.shape[1])} if len(items) else set()
            if current is not None and not full:
                dims.add(int(self.manifest(current)["dim"]))
            if len(dims) > 1:
                raise HarnessError(f"vectors of {sorted(dims)} dimensions in one index.")
            manifest = {"version": number, "parent": None if full else current, "created": time.time(),
                        "dim": dims.pop() if dims else 0, "segments": segments, "next_id": first + len(items),
                        **(info or {})}
            (self.dir / "versions").mkdir(exist_ok=True)
            _write_atomically(self.dir / "versions" / f"{number}.json", json.dumps(manifest, indent=1))
            self.point(number, locked=True)
            return number

    def point(self, version: int, locked: bool = False) -> None:
        """Serve `version` (a roll-back is pointing at an earlier one)."""
        if not locked:
            with FileLock(self.dir / "lock"):
                return self.point(version, locked=True)
        self.manifest(version)  # it exists
        _write_atomically(self.dir / "CURRENT", f"{int(version)}\n")

    def _delete(self, segments: list[dict], ids: set) -> list[dict]:
        """The segments with the rows of `ids` marked deleted (a segment left empty is dropped)."""
        out = []
        for segment in segments:
            segment = dict(segment)
            if ids:
                items = pd.read_csv(self.dir / "segments" / segment["id"] / "items.csv", dtype=str,
                                    keep_default_na=False, usecols=["item_id"])
                gone = np.flatnonzero(items["item_id"].isin(ids).to_numpy())
                segment["deleted"] = sorted(set(segment.get("deleted", [])) | set(gone.tolist()))
            if len(segment.get("deleted", [])) < segment["rows"]:
                out.append(segment)
        return out

    def _write_segment(self, items: pd.DataFrame, vectors: np.ndarray, base: int) -> dict:
        sid = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        folder = self.dir / "segments" / sid
        partial = folder.with_name(f".{sid}.partial")
        partial.mkdir(parents=True)
        items.to_csv(partial / "items.csv", index=False)
        np.save(partial / "vectors.npy", np.ascontiguousarray(vectors, dtype=np.float32))
        digests = {name: _sha256(partial / name) for name in ("items.csv", "vectors.npy")}
        for name in digests:
            with open(partial / name, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(partial, folder)
        return {"id": sid, "rows": len(items), "base": base, "sha256": digests, "deleted": []}


def next_id(segments: list[dict]) -> int:
    """The first row id after every segment's (a new segment's rows continue from there)."""
    return max((s.get("base", 0) + s["rows"] for s in segments), default=0)


def row_ids(manifest: dict) -> np.ndarray | None:
    """The ids of a version's live rows, in the order they are read (ascending: segments are appended)."""
    segments = manifest["segments"]
    if any("base" not in s for s in segments):
        return None
    parts = []
    for s in segments:
        keep = np.ones(s["rows"], dtype=bool)
        keep[np.asarray(s.get("deleted", []), dtype=np.int64)] = False
        parts.append(s["base"] + np.flatnonzero(keep))
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
