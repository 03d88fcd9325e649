"""SQLite feature store: vectors keyed by (extractor fingerprint, image content hash), plus neighbours.

Rows are committed batch by batch, so an interrupted extraction resumes where it stopped and any
later run with the same extractor (a metric sweep) reads instead of extracting. Runs extracting at
the same time share the work: each claims a block of images before embedding it (a lease in the
`claims` table), skips blocks others hold, and reads their vectors when they land. A claim dies with
its process (same host) or when its lease runs out.
"""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from harness import liveness
from harness.config import check_writable_dir
from harness.errors import HarnessError

SCHEMA = """
CREATE TABLE IF NOT EXISTS extractors (fingerprint TEXT PRIMARY KEY, description TEXT, dim INTEGER);
CREATE TABLE IF NOT EXISTS features (
    fingerprint TEXT NOT NULL, hash TEXT NOT NULL, vec BLOB NOT NULL,
    PRIMARY KEY (fingerprint, hash)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS claims (
    fingerprint TEXT NOT NULL, hash TEXT NOT NULL, owner TEXT NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (fingerprint, hash)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS neighbours (
    run_id TEXT NOT NULL, query TEXT NOT NULL, rank INTEGER NOT NULL, neighbour TEXT NOT NULL,
    distance REAL NOT NULL, PRIMARY KEY (run_id, query, rank));
"""


def _header(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(16)


class FeatureStore:
    def __init__(self, path: str, dtype: str = "float32"):
        self.check(path)
        self.path, self.dtype = path, np.dtype(dtype)
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, timeout=60)
            # Two runs opening a new store at once race in the WAL switch and the schema (one gets
            # "database is locked" at once, without waiting), so the set-up is serialised by a lock file.
            with FileLock(f"{path}.lock", timeout=120):
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.executescript(SCHEMA)
        except Timeout:
            raise HarnessError(f"store.path={path}: {path}.lock has been held by another process for 120 s.") from None
        except sqlite3.DatabaseError as exc:
            raise HarnessError(f"store.path={path}: not a usable SQLite feature store ({exc}).") from None
        except OSError as exc:
            raise HarnessError(f"store.path={path}: cannot create it ({exc.strerror}).") from None

    @staticmethod
    def check(path: str) -> None:
        """The store's folder can be created and written, and an existing file is a SQLite database."""
        path = Path(path)
        check_writable_dir(path.parent, f"store.path={path}")
        if path.exists() and not os.access(path, os.R_OK | os.W_OK):
            raise HarnessError(f"store.path={path}: cannot write there.")
        if path.exists() and path.stat().st_size and _header(path) != b"SQLite format 3\x00":
            raise HarnessError(f"store.path={path}: the file exists and is not a SQLite database.")

    def close(self) -> None:
        self.db.close()

    def register(self, fingerprint: str, description: str, dim: int) -> None:
        with self.db:
            self.db.execute("INSERT OR IGNORE INTO extractors VALUES (?, ?, ?)", (fingerprint, description, dim))

    def dim(self, fingerprint: str) -> int | None:
        row = self.db.execute("SELECT dim FROM extractors WHERE fingerprint = ?", (fingerprint,)).fetchone()
        return row[0] if row else None

    def get(self, fingerprint: str, hashes: list[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(hashes))
        for start in range(0, len(unique), 900):  # SQLite's bound-parameter limit
            chunk = unique[start:start + 900]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT hash, vec FROM features WHERE fingerprint = ? AND hash IN ({marks})",
                [fingerprint, *chunk])
            for h, blob in rows:
                found[h] = np.frombuffer(blob, dtype=self.dtype).astype(np.float32)
        return found

    def put(self, fingerprint: str, hashes: list[str], vectors: np.ndarray) -> None:
        blobs = [v.astype(self.dtype).tobytes() for v in vectors]
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO features VALUES (?, ?, ?)",
                                [(fingerprint, h, b) for h, b in zip(hashes, blobs)])

    def claim(self, fingerprint: str, hashes: list[str], owner: str, lease: float = 600.0) -> set[str]:
        """Claim the images not stored yet and not held by a live claim of another owner; returns the
        hashes this owner now holds. `owner` is `liveness.me()` plus a token."""
        now = time.time()
        mine: set[str] = set()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")  # one claimer at a time: no two owners get one image
            for start in range(0, len(hashes), 900):
                chunk = hashes[start:start + 900]
                marks = ",".join("?" * len(chunk))
                held = self.db.execute(f"SELECT hash, owner, expires FROM claims WHERE fingerprint = ? "
                                       f"AND hash IN ({marks})", [fingerprint, *chunk]).fetchall()
                stale = [h for h, who, expires in held if who != owner and
                         (expires < now or liveness.alive(who.rsplit(":", 1)[0]) is False)]
                self.db.executemany("DELETE FROM claims WHERE fingerprint = ? AND hash = ?",
                                    [(fingerprint, h) for h in stale])
                stored = {h for (h,) in self.db.execute(
                    f"SELECT hash FROM features WHERE fingerprint = ? AND hash IN ({marks})", [fingerprint, *chunk])}
                taken = {h for h, who, _ in held if who != owner} - set(stale)
                free = [h for h in chunk if h not in stored and h not in taken]
                self.db.executemany("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?)",
                                    [(fingerprint, h, owner, now + lease) for h in free])
                mine.update(free)
        return mine

    def release(self, fingerprint: str, owner: str) -> None:
        with self.db:
            self.db.execute("DELETE FROM claims WHERE fingerprint = ? AND owner = ?", (fingerprint, owner))

    def put_neighbours(self, run_id: str, query_ids, neighbour_ids: np.ndarray, distances: np.ndarray) -> None:
        rows = [(run_id, str(q), rank + 1, str(n), float(d))
                for q, ns, ds in zip(query_ids, neighbour_ids, distances)
                for rank, (n, d) in enumerate(zip(ns, ds))]
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO neighbours VALUES (?, ?, ?, ?, ?)", rows)
