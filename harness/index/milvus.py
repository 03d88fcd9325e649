"""index.backend=milvus: an index's versions searched in Milvus (Milvus Lite in a local file, or a
Milvus server or cluster at http://host:19530), the same build, update, delete and filtered search.

The index's files (harness.index.store) stay the record of every version: items, vectors, digests,
CURRENT. Milvus holds the rows as searched, one collection per full build, updated in place by each
update from it:

    row_id   INT64 primary key      the row's id in the index (never reused)
    vector   FLOAT_VECTOR           as the metric searches it (projected, centred, transformed)
    since    INT64, until INT64     the versions the row is live in: since <= v < until
    t_<i>    VARCHAR                catalog column i as text (equality, lists, booleans)
    n_<i>    DOUBLE (nullable)      catalog column i as a number, where it has one (ranges)

A search at version v filters `since <= v and until > v` besides the request's conditions, so an
answer comes wholly from one version while an update writes the next one, and a roll-back (CURRENT
pointing at an earlier version) answers from that version's rows. An update from a version that was
rolled back to first drops the rows of the abandoned versions. What Milvus holds per index is recorded
in <index>/milvus/<key>.json: the collection of each version, and each collection's centring offset
and column fields.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from harness.config import instantiate
from harness.errors import HarnessError
from harness.index.store import IndexStore, _write_atomically, row_ids

log = logging.getLogger(__name__)
LIVE = 2**62          # `until` of a row no version has deleted
INSERT_BLOCK = 5_000  # rows per insert call (bounded request size)
MILVUS_METRIC = {"METRIC_L2": "L2", "METRIC_INNER_PRODUCT": "IP"}
OPS = {"lt": "<", "le": "<=", "gt": ">", "ge": ">="}


def _digest(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def projection_digest(projection) -> str | None:
    if projection is None:
        return None
    return hashlib.sha256(np.ascontiguousarray(projection.weight, np.float64).tobytes()
                          + np.ascontiguousarray(projection.bias, np.float64).tobytes()).hexdigest()


def connect(uri: str):
    """A MilvusClient: a file path runs Milvus Lite in this process, http(s)://… a server or cluster."""
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise HarnessError("index.backend=milvus needs pymilvus (and milvus-lite for a local file): "
                           "pip install pymilvus milvus-lite.") from None
    if re.match(r"^(https?|tcp)://", uri):
        return MilvusClient(uri=uri)
    Path(uri).expanduser().parent.mkdir(parents=True, exist_ok=True)
    uri = str(Path(uri).expanduser().absolute())
    try:
        return MilvusClient(uri=uri)
    except Exception as exc:  # Milvus Lite: one process per file
        if "lock" in repr(exc).lower() or "open local milvus failed" in str(exc).lower():
            raise MilvusBusy(f"the Milvus Lite file {uri} is open in another process (Lite serves one process "
                             "per file): the model serving from it syncs new versions itself; or use a Milvus "
                             "server (index.uri=http://host:19530).") from None
        raise


class MilvusBusy(HarnessError):
    """A Milvus Lite file another process holds."""


class MilvusIndex:
    """The versions of `store` under one metric and projection, in Milvus at `uri`."""

    def __init__(self, uri: str, store: IndexStore, metric_spec: dict, projection=None,
                 index_params: dict | None = None, client=None):
        import faiss

        self.uri, self.store, self.projection = uri, store, projection
        self.metric = instantiate(metric_spec)
        if self.metric.faiss_metric is None:
            raise HarnessError(f"index.backend=milvus searches euclidean, cosine and correlation; not {self.metric!r}.")
        self.metric_type = MILVUS_METRIC["METRIC_L2" if self.metric.faiss_metric == faiss.METRIC_L2 else "METRIC_INNER_PRODUCT"]
        self.index_params = dict(index_params or {"index_type": "FLAT", "params": {}})
        self.metric_spec, self.projection_digest = metric_spec, projection_digest(projection)
        self.key = _digest({"metric": metric_spec, "projection": self.projection_digest, "index": self.index_params})
        self.prefix = re.sub(r"[^A-Za-z0-9_]", "_", f"h_{store.name}_{self.key}")
        self.meta_path = store.dir / "milvus" / f"{self.key}.json"
        self._client = client
        self._loaded: set = set()  # collections this client loaded into memory (Milvus searches loaded ones)

    @property
    def client(self):
        """Connected on first use (what a copy holds is known from its record without connecting)."""
        if self._client is None:
            self._client = connect(self.uri)
        return self._client

    # -- what Milvus holds --------------------------------------------------------------------
    def meta(self) -> dict:
        return json.loads(self.meta_path.read_text()) if self.meta_path.exists() else {"versions": {}}

    def _write_meta(self, meta: dict) -> None:
        self.meta_path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.meta_path, json.dumps(meta, indent=1))

    def holds(self, version: int) -> bool:
        return str(version) in self.meta()["versions"]

    def _searched(self, vectors: np.ndarray, shift, project: bool = True) -> np.ndarray:
        """Stored vectors (or, `project=False`, queries already projected) as the collection holds them."""
        x = self.projection.transform(vectors) if project and self.projection is not None else np.asarray(vectors, np.float32)
        if shift is not None:
            x = x - np.asarray(shift, np.float32)
        return np.ascontiguousarray(self.metric.transform(x), dtype=np.float32)

    def _collection(self, meta: dict, version: int) -> tuple[str, dict]:
        """The collection holding `version` and what it holds (its column fields, centring, size)."""
        name = meta["versions"].get(str(version))
        if name is None:
            raise HarnessError(f"Milvus at {self.uri} does not hold version {version} of {self.store.dir}; "
                               "python -m harness.index build (or update) with index.backend=milvus syncs it.")
        return name, meta["collections"][name]

    def _rows(self, items: pd.DataFrame, vectors: np.ndarray, ids: np.ndarray, version: int, info: dict) -> list[dict]:
        columns = info["columns"]
        searched = self._searched(vectors, info["shift"])
        numbers = {c: pd.to_numeric(items[c], errors="coerce").to_numpy(np.float64) for c in columns if c in items}
        out = []
        for r in range(len(items)):
            row = {"row_id": int(ids[r]), "vector": searched[r].tolist(), "since": int(version), "until": LIVE}
            for column, i in columns.items():
                row[f"t_{i}"] = str(items[column].iloc[r]) if column in items else ""
                value = numbers[column][r] if column in numbers else np.nan
                row[f"n_{i}"] = float(value) if np.isfinite(value) else None
            out.append(row)
        return out

    def _insert(self, collection: str, items, vectors, ids, version, info) -> None:
        for s in range(0, len(items), INSERT_BLOCK):
            block = slice(s, s + INSERT_BLOCK)
            self.client.insert(collection, self._rows(items.iloc[block], vectors[block], ids[block], version, info))

    def _create(self, collection: str, dim: int, columns: dict) -> None:
        from pymilvus import DataType

        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("row_id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("since", DataType.INT64)
        schema.add_field("until", DataType.INT64)
        for i in columns.values():
            schema.add_field(f"t_{i}", DataType.VARCHAR, max_length=4096)
            schema.add_field(f"n_{i}", DataType.DOUBLE, nullable=True)
        params = self.client.prepare_index_params()
        params.add_index(field_name="vector", metric_type=self.metric_type, **self.index_params)
        self.client.create_collection(collection, schema=schema, index_params=params)

    # -- following the index's versions ------------------------------------------------------
    def sync(self, version: int | None = None, new_items: pd.DataFrame | None = None,
             new_vectors: np.ndarray | None = None) -> str:
        """Make Milvus hold `version` (default: the current one): a full version is a new collection of
        all its rows; a version whose parent Milvus holds is that collection updated in place with the
        rows it adds (`new_items` / `new_vectors` when the caller has them, else read from the index) and
        the rows it removes. Returns how."""
        version = self.store.current() if version is None else int(version)
        if self.holds(version):
            return "held"
        manifest = self.store.manifest(version)
        ids = row_ids(manifest)
        if ids is None:
            raise HarnessError(f"index {self.store.dir} version {version} was written before rows had ids; "
                               "build it again (python -m harness.index build) to serve it from Milvus.")
        meta = self.meta()
        parent = manifest.get("parent")
        if parent is not None and str(parent) in meta["versions"]:
            return self._update(version, parent, manifest, ids, meta, new_items, new_vectors)
        snapshot = self.store.read(version)
        columns = {c: i for i, c in enumerate(c for c in snapshot.items.columns if c not in ("path", "content_hash"))}
        features = self.projection.transform(snapshot.vectors) if self.projection is not None else snapshot.vectors
        shift = self.metric.offset(features) if len(features) else None
        collection = f"{self.prefix}_b{version}"
        if self.client.has_collection(collection):
            self.client.drop_collection(collection)  # a build that stopped before recording it
        info = {"columns": columns, "shift": None if shift is None else shift.tolist(),
                "dim": int(features.shape[1]) if len(features) else 0}
        meta = {"uri": self.uri, "metric": self.metric_spec, "index_params": self.index_params,
                "projection": self.projection_digest, "versions": meta["versions"],
                "collections": {**meta.get("collections", {}), collection: info}}
        if self.projection is not None:
            self.meta_path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.meta_path.with_name(f".{self.key}.{uuid.uuid4().hex[:6]}.npz")
            self.projection.save(partial)
            os.replace(partial, self.meta_path.with_suffix(".projection.npz"))
        self._create(collection, info["dim"], columns)
        self._insert(collection, snapshot.items, snapshot.vectors, ids, version, info)
        self.client.flush(collection)
        self._wait_indexed(collection)
        meta["versions"][str(version)] = collection
        self._write_meta(meta)
        return "built"

    def _wait_indexed(self, collection: str, timeout_s: float = 1800.0) -> None:
        """Until Milvus has built the vector index over every row (searches before that scan rows that
        are not indexed yet, slower and, filtered, not as the index would); bounded."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = self.client.describe_index(collection, "vector")
            if int(info.get("pending_index_rows", 0) or 0) == 0 and int(info.get("indexed_rows", 0) or 0) >= int(info.get("total_rows", 0) or 0):
                return
            time.sleep(0.5)
        log.warning("Milvus collection %s: the vector index is still being built after %.0f s", collection, timeout_s)

    def _update(self, version, parent, manifest, ids, meta, new_items, new_vectors) -> str:
        collection, info = self._collection(meta, parent)
        parent_ids = row_ids(self.store.manifest(parent))
        gone = np.setdiff1d(parent_ids, ids, assume_unique=True)
        new_ids = np.setdiff1d(ids, parent_ids, assume_unique=True)
        if new_items is None or new_vectors is None or len(new_items) != len(new_ids):
            snapshot = self.store.read(version)
            rows = np.searchsorted(snapshot.ids, new_ids)
            new_items, new_vectors = snapshot.items.iloc[rows].reset_index(drop=True), snapshot.vectors[rows]
        unknown = [c for c in new_items.columns if c not in info["columns"] and c not in ("path", "content_hash")]
        if unknown:
            raise HarnessError(f"the catalog has new column(s) {', '.join(unknown)}: Milvus's collection has fixed "
                               "fields; build the index again (python -m harness.index build).")
        # Versions after the parent that a roll-back abandoned: their rows go, their deletions are undone
        later = [v for v, c in meta["versions"].items() if c == collection and int(v) > parent]
        if later:
            self.client.delete(collection, filter=f"since > {int(parent)}")
            undone = self.client.query(collection, filter=f"until > {int(parent)} and until < {LIVE}",
                                       output_fields=["row_id"], limit=16384)
            self._set_until([r["row_id"] for r in undone], LIVE, collection)
            for v in later:
                del meta["versions"][v]
        self._insert(collection, new_items, new_vectors, new_ids, version, info)
        self._set_until(gone.tolist(), version, collection)
        self.client.flush(collection)
        self._wait_indexed(collection)
        meta["versions"][str(version)] = collection
        self._write_meta(meta)
        return "updated"

    def _set_until(self, row_ids_: list, version: int, collection: str) -> None:
        for s in range(0, len(row_ids_), INSERT_BLOCK):
            block = row_ids_[s:s + INSERT_BLOCK]
            self.client.upsert(collection, [{"row_id": int(r), "until": int(version)} for r in block], partial_update=True)

    # -- search -------------------------------------------------------------------------------
    def expression(self, version: int, filters=None, catalog_values=None, also: dict | None = None) -> str:
        """A Milvus boolean expression for `filters` at `version`: the same
        conditions as harness.serving.filters, on the collection's fields; `also`: more conditions (the
        query's predicted category), all of which must hold too."""
        # (imported here: harness.serving imports this module)
        from harness.serving.filters import FALSE, TRUE, parse_filters
        from harness.serving.requests import BadQuery

        _, info = self._collection(self.meta(), version)
        parts = [f"since <= {int(version)} and until > {int(version)}"]
        conditions = list(parse_filters(filters).items()) + list((also or {}).items())
        for n, (column, condition) in enumerate(conditions):
            if column not in info["columns"]:
                raise BadQuery(f"filter on {column!r}: not a catalog column ({', '.join(info['columns'])})")
            i = info["columns"][column]
            if isinstance(condition, dict):
                parts += [f"n_{i} {OPS[op]} {float(bound)!r}" for op, bound in condition.items()]
                continue
            wanted = condition if isinstance(condition, list) else [condition]
            texts, numbers = [], []
            for value in wanted:
                if isinstance(value, bool):
                    spelled = set(catalog_values(column)) if catalog_values else TRUE | FALSE
                    if not {v.lower() for v in spelled} <= TRUE | FALSE:
                        raise BadQuery(f"filter {column!r}: a boolean condition on a column that is not true/false")
                    texts += sorted(v for v in spelled if (v.lower() in TRUE) == value)
                elif isinstance(value, (int, float)):
                    numbers.append(float(value))
                else:
                    texts.append(str(value))
            # Literals, not templates (Milvus Lite parses no templates): JSON's quoting is Milvus's
            either = []
            if texts:
                either.append(f"t_{i} in [{', '.join(json.dumps(t, ensure_ascii=False) for t in texts)}]")
            if numbers:
                either.append(f"n_{i} in [{', '.join(repr(x) for x in numbers)}]")
            parts.append("(" + " or ".join(either) + ")" if either else "false")
        return " and ".join(parts)

    def search(self, query_emb: np.ndarray, k: int, version: int, filters=None, catalog_values=None,
               search_params: dict | None = None, also: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(distances, row ids), each (Q, k), nearest first; inf / -1 past the rows that match.
        `query_emb`: in the searched space (projected, as Searcher.embed returns them)."""
        collection, info = self._collection(self.meta(), version)
        if (filters or also) and str(self.index_params.get("index_type", "")).upper().startswith("IVF"):
            # Milvus filters inside the probed cells: with few matching items, they may hold fewer than k.
            # Every cell, then: the top k among the matching items, as the request asks.
            search_params = {**(search_params or {}), "nprobe": int(self.index_params.get("params", {}).get("nlist", 65536))}
        if collection not in self._loaded:
            self.client.load_collection(collection)
            self._loaded.add(collection)
        expr = self.expression(version, filters, catalog_values, also)
        query = self._searched(np.atleast_2d(query_emb), info["shift"], project=False)
        hits = self.client.search(collection, data=query.tolist(), limit=int(k), filter=expr,
                                  output_fields=["row_id"], search_params={"metric_type": self.metric_type,
                                                                           "params": search_params or {}},
                                  consistency_level="Strong")
        distances = np.full((len(query), k), np.inf, np.float32)
        ids = np.full((len(query), k), -1, np.int64)
        for q, found in enumerate(hits):
            found = sorted(found, key=lambda h: (self._distance(h["distance"]), h["row_id"]))  # ties: by row id
            for j, hit in enumerate(found[:k]):
                distances[q, j] = self._distance(hit["distance"])
                ids[q, j] = hit["row_id"]
        return distances, ids

    def _distance(self, raw: float) -> float:
        return float(self.metric.from_faiss(np.float32(raw)))

    @classmethod
    def known(cls, store: IndexStore, client=None) -> list["MilvusIndex"]:
        """Every Milvus copy of `store` recorded in its folder (an update syncs them all)."""
        from harness.projections import FittedProjection

        out = []
        for path in sorted((store.dir / "milvus").glob("*.json")):
            meta = json.loads(path.read_text())
            if "metric" not in meta:
                continue
            projection = None
            if meta.get("projection"):
                projection = FittedProjection.load(path.with_suffix(".projection.npz"))
                if projection_digest(projection) != meta["projection"]:
                    raise HarnessError(f"{path.with_suffix('.projection.npz')} does not match its recorded digest.")
            out.append(cls(meta["uri"], store, meta["metric"], projection, meta["index_params"], client))
        return out

    def drop(self) -> None:
        """Every collection of this index (and the record of them)."""
        for collection in set(self.meta()["versions"].values()):
            if self.client.has_collection(collection):
                self.client.drop_collection(collection)
        self.meta_path.unlink(missing_ok=True)


def from_reference(ref: dict | None, store: IndexStore | None, metric_spec: dict, projection=None):
    """The Milvus copy a served model's index reference (Settings.index) names, or None: in process."""
    if not ref or store is None or ref.get("backend", "faiss") != "milvus":
        return None
    return MilvusIndex(ref["uri"], store, metric_spec, projection, ref.get("milvus_index"))


def reference(cfg) -> dict:
    """What a served model records of the backend (Settings.index's part)."""
    from omegaconf import OmegaConf

    if cfg.index.backend != "milvus":
        return {"backend": "faiss"}
    return {"backend": "milvus", "uri": str(cfg.index.uri),
            "milvus_index": OmegaConf.to_container(cfg.index.milvus_index, resolve=True),
            "milvus_search": OmegaConf.to_container(cfg.index.milvus_search, resolve=True)}
