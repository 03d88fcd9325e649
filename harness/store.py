"""SQLite feature store: vectors keyed by (extractor fingerprint, image content hash), plus neighbours.

Rows are committed batch by batch, so an interrupted extraction resumes where it stopped and any
later run with the same extractor (a metric sweep) reads instead of extracting.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS extractors (fingerprint TEXT PRIMARY KEY, description TEXT, dim INTEGER);
CREATE TABLE IF NOT EXISTS features (
    fingerprint TEXT NOT NULL, hash TEXT NOT NULL, vec BLOB NOT NULL,
    PRIMARY KEY (fingerprint, hash)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS neighbours (
    run_id TEXT NOT NULL, query TEXT NOT NULL, rank INTEGER NOT NULL, neighbour TEXT NOT NULL,
    distance REAL NOT NULL, PRIMARY KEY (run_id, query, rank));
"""


class FeatureStore:
    def __init__(self, path: str, dtype: str = "float32"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path, self.dtype = path, np.dtype(dtype)
        self.db = sqlite3.connect(path, timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)

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

    def put_neighbours(self, run_id: str, query_ids, neighbour_ids: np.ndarray, distances: np.ndarray) -> None:
        rows = [(run_id, str(q), rank + 1, str(n), float(d))
                for q, ns, ds in zip(query_ids, neighbour_ids, distances)
                for rank, (n, d) in enumerate(zip(ns, ds))]
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO neighbours VALUES (?, ?, ?, ?, ?)", rows)
