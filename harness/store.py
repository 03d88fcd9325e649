"""SQLite feature store: vectors keyed by (extractor fingerprint, image content hash), plus neighbours.

Rows are committed batch by batch, so an interrupted extraction resumes where it stopped and any
later run with the same extractor (a metric sweep) reads instead of extracting. Runs extracting at
the same time share the work: each claims a block of images before embedding it (a lease in the
`claims` table), skips blocks others hold, and reads their vectors when they land. A claim dies with
its process (same host) or when its lease runs out.

What is stored is verified when read. The file identifies itself (SQLite `application_id`) and its
schema version (`user_version`, migrated forward when this module changes it), so another database
given as `store.path` is refused, never written into. Each vector carries a CRC-32 of its image hash and
bytes: a vector that fails it is dropped and embedded again from its image. Non-finite vectors are never
stored. Every SQLite fault (a damaged file, a full disk, a foreign schema) is one `HarnessError` line
naming the file.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from harness import liveness
from harness.config import check_writable_dir
from harness.errors import HarnessError

log = logging.getLogger(__name__)

APPLICATION_ID = 0x46524853  # "FRHS": SQLite's header field naming the program whose file this is
SCHEMA_VERSION = 2           # 1: before checksums and identity (no application_id); 2: features.crc
LEASE_SECONDS = 600.0        # a claim another run may take over after this (or as soon as its owner is gone)
SCHEMA = """
CREATE TABLE IF NOT EXISTS extractors (fingerprint TEXT PRIMARY KEY, description TEXT, dim INTEGER);
CREATE TABLE IF NOT EXISTS features (
    fingerprint TEXT NOT NULL, hash TEXT NOT NULL, vec BLOB NOT NULL, crc INTEGER NOT NULL,
    PRIMARY KEY (fingerprint, hash)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS claims (
    fingerprint TEXT NOT NULL, hash TEXT NOT NULL, owner TEXT NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (fingerprint, hash)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS neighbours (
    run_id TEXT NOT NULL, query TEXT NOT NULL, rank INTEGER NOT NULL, neighbour TEXT NOT NULL,
    distance REAL NOT NULL, PRIMARY KEY (run_id, query, rank));
"""


VERSION_1 = {"extractors": {"fingerprint", "description", "dim"}, "features": {"fingerprint", "hash", "vec"},
             "claims": {"fingerprint", "hash", "owner", "expires"},
             "neighbours": {"run_id", "query", "rank", "neighbour", "distance"}}


def _header(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(16)


def vector_crc(digest: str, blob: bytes) -> int:
    """CRC-32 of a stored vector and the image it belongs to (a vector moved to another row fails too)."""
    return zlib.crc32(blob, zlib.crc32(digest.encode()))


def schema_version(db: sqlite3.Connection, path) -> int:
    """This store's schema version; 0 for an empty database. Anything that is not a feature store of
    this harness (another program's database, a newer schema) is refused in one line."""
    # One read transaction: each statement on its own would read its own snapshot, and a store another
    # process is creating meanwhile would show its tables without its application_id (seen under load).
    own = not db.in_transaction
    if own:
        db.execute("BEGIN")
    try:
        return _schema_version(db, path)
    finally:
        if own:
            db.rollback()


def _schema_version(db: sqlite3.Connection, path) -> int:
    app, version = db.execute("PRAGMA application_id").fetchone()[0], db.execute("PRAGMA user_version").fetchone()[0]
    if app == APPLICATION_ID:
        if version > SCHEMA_VERSION:
            raise HarnessError(f"store.path={path}: written by a newer version of the harness (schema {version}; "
                               f"this one reads up to {SCHEMA_VERSION}). Upgrade, or use another store.path.")
        return version
    tables = {name: {c[1] for c in db.execute(f"PRAGMA table_info('{name}')")}
              for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if app == 0 and not tables:
        return 0
    if app == 0 and tables == VERSION_1:
        return 1  # a store from before stores identified themselves
    what = f"SQLite application_id {app:#x}" if app else f"tables {', '.join(sorted(tables)[:6])}"
    raise HarnessError(f"store.path={path}: not a feature store ({what}; an MLflow database?). Point store.path "
                       "at a new file or an existing feature store.")


class FeatureStore:
    def __init__(self, path: str, dtype: str = "float32"):
        self.check(path)
        self.path, self.dtype = path, np.dtype(dtype)
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, timeout=60)
            # Two runs opening a new store at once race in the WAL switch and the schema (one gets
            # "database is locked" at once, without waiting), so the set-up is serialised by a lock file.
            with FileLock(f"{path}.lock", timeout=120), self.faults():
                self.db.execute("PRAGMA journal_mode=WAL")
                self._migrate(schema_version(self.db, path))
        except Timeout:
            raise HarnessError(f"store.path={path}: {path}.lock has been held by another process for 120 s.") from None
        except OSError as exc:
            raise HarnessError(f"store.path={path}: cannot create it ({exc.strerror}).") from None

    def _migrate(self, version: int) -> None:
        """Bring the store to SCHEMA_VERSION in one transaction (an interrupted migration leaves it as it was)."""
        if version == SCHEMA_VERSION:
            return
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            if version == 1:
                self.db.create_function("vector_crc", 2, vector_crc, deterministic=True)
                self.db.execute("ALTER TABLE features ADD COLUMN crc INTEGER NOT NULL DEFAULT 0")
                self.db.execute("UPDATE features SET crc = vector_crc(hash, vec)")
                log.info("store.path=%s: feature store upgraded from schema 1 to %d (vector checksums)",
                         self.path, SCHEMA_VERSION)
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self.db.execute(statement)
            self.db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def faults(self):
        """SQLite's errors as one line naming the store and what to do."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise HarnessError(describe_fault(self.path, exc)) from None

    @staticmethod
    def check(path: str) -> None:
        """The store's folder can be created and written, and an existing file is a feature store of this
        harness (read only: nothing is written before a run starts)."""
        path = Path(path)
        check_writable_dir(path.parent, f"store.path={path}")
        if path.exists() and not path.is_file():
            raise HarnessError(f"store.path={path}: not a regular file.")
        if path.exists() and not os.access(path, os.R_OK | os.W_OK):
            raise HarnessError(f"store.path={path}: cannot write there.")
        if path.exists() and path.stat().st_size:
            if _header(path) != b"SQLite format 3\x00":
                raise HarnessError(f"store.path={path}: the file exists and is not a SQLite database.")
            try:
                db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
                try:
                    schema_version(db, path)
                finally:
                    db.close()
            except sqlite3.DatabaseError as exc:
                raise HarnessError(describe_fault(path, exc)) from None

    def close(self) -> None:
        self.db.close()

    def register(self, fingerprint: str, description: str, dim: int) -> None:
        with self.faults(), self.db:
            self.db.execute("INSERT OR IGNORE INTO extractors VALUES (?, ?, ?)", (fingerprint, description, dim))

    def dim(self, fingerprint: str) -> int | None:
        with self.faults():
            row = self.db.execute("SELECT dim FROM extractors WHERE fingerprint = ?", (fingerprint,)).fetchone()
        return row[0] if row else None

    def get(self, fingerprint: str, hashes: list[str]) -> dict[str, np.ndarray]:
        """The stored vectors of these images that pass their checksum. A vector that fails it is
        deleted (so it is embedded again from its image), with one warning counting them."""
        found: dict[str, np.ndarray] = {}
        bad: list[str] = []
        unique = list(dict.fromkeys(hashes))
        with self.faults():
            for start in range(0, len(unique), 900):  # SQLite's bound-parameter limit
                chunk = unique[start:start + 900]
                marks = ",".join("?" * len(chunk))
                rows = self.db.execute(
                    f"SELECT hash, vec, crc FROM features WHERE fingerprint = ? AND hash IN ({marks})",
                    [fingerprint, *chunk])
                for h, blob, crc in rows:
                    if not isinstance(blob, bytes) or vector_crc(h, blob) != crc or len(blob) % self.dtype.itemsize:
                        bad.append(h)
                    else:
                        found[h] = np.frombuffer(blob, dtype=self.dtype).astype(np.float32)
            if bad:
                with self.db:
                    self.db.executemany("DELETE FROM features WHERE fingerprint = ? AND hash = ?",
                                        [(fingerprint, h) for h in bad])
                log.warning("store.path=%s: %d stored vector(s) failed their checksum; they are embedded again "
                            "from their images", self.path, len(bad))
        return found

    def put(self, fingerprint: str, hashes: list[str], vectors: np.ndarray) -> None:
        with np.errstate(over="ignore"):  # an overflow is refused just below
            vectors = np.asarray(vectors).astype(self.dtype)
        if not np.isfinite(vectors).all():  # float16 overflows to inf: never stored, never searched
            raise HarnessError(f"store.path={self.path}: refusing to store non-finite vectors "
                               f"(store.dtype={self.dtype.name} cannot hold these features?).")
        blobs = [v.tobytes() for v in vectors]
        with self.faults(), self.db:
            self.db.executemany("INSERT OR REPLACE INTO features VALUES (?, ?, ?, ?)",
                                [(fingerprint, h, b, vector_crc(h, b)) for h, b in zip(hashes, blobs)])

    def claim(self, fingerprint: str, hashes: list[str], owner: str, lease: float = LEASE_SECONDS) -> set[str]:
        """Claim the images not stored yet and not held by a live claim of another owner; returns the
        hashes this owner now holds. `owner` is `liveness.me()` plus a token."""
        now = time.time()
        mine: set[str] = set()
        with self.faults(), self.db:
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
        with self.faults(), self.db:
            self.db.execute("DELETE FROM claims WHERE fingerprint = ? AND owner = ?", (fingerprint, owner))

    def put_neighbours(self, run_id: str, query_ids, neighbour_ids: np.ndarray, distances: np.ndarray) -> None:
        rows = [(run_id, str(q), rank + 1, str(n), float(d))
                for q, ns, ds in zip(query_ids, neighbour_ids, distances)
                for rank, (n, d) in enumerate(zip(ns, ds))]
        with self.faults(), self.db:
            self.db.executemany("INSERT OR REPLACE INTO neighbours VALUES (?, ?, ?, ?, ?)", rows)


def describe_fault(path, exc: sqlite3.DatabaseError) -> str:
    """One line for a SQLite error on the feature store: what happened and what to do."""
    said = str(exc)
    if "malformed" in said or "not a database" in said:
        return (f"store.path={path}: the feature store is damaged ({said}). Move it aside and run again (its "
                "features are extracted anew), or restore it from a backup.")
    if "full" in said:
        return (f"store.path={path}: the disk is full ({said}). The features stored so far are kept: free some "
                "space and run again, and it resumes from them.")
    if "no such column" in said or "no such table" in said or "has no column" in said:
        return (f"store.path={path}: its tables are not the feature store's schema {SCHEMA_VERSION} ({said}). "
                "Point store.path at a new file.")
    if "locked" in said or "busy" in said:
        return f"store.path={path}: another process has held it locked for 60 s ({said})."
    return f"store.path={path}: SQLite error ({said})."
