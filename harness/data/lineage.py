"""What a score was measured on: a run's catalog and queries as dataset records for its tracker.

A record's digest is of the manifest's bytes and of every row's item id and image content hash, so two
runs share a digest exactly when they searched the same images under the same labels file; the
context says which side of the protocol the rows were (`catalog` or `queries`), the tags which protocol.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness.data.catalog import Catalog

DIGEST_CHARS = 16  # MLflow keeps at most 36


@dataclass(frozen=True)
class DatasetRecord:
    name: str            # the dataset, e.g. "FolderOrManifest (fashion-products)"
    digest: str
    source: str          # its manifest (or folder)
    context: str         # "catalog" | "queries"
    table: pd.DataFrame  # its rows: item id, labels, content hash (a tracker keeps the schema and counts)
    tags: dict = field(default_factory=dict)


def dataset_records(catalog: Catalog, folds, protocol: str, dataset: str) -> list[DatasetRecord]:
    """The catalog side and the query side of `folds`, each with its digest (content hashes: the
    `content_hash` column extraction adds); `dataset`: what reads it (its class), named with its folder."""
    source = Path(catalog.source)
    manifest = hashlib.sha256(source.read_bytes()).hexdigest() if source.is_file() else ""
    name = f"{dataset} ({Path(catalog.root).name if catalog.root else source.name})"
    columns = ["item_id", *catalog.levels, *(["content_hash"] if "content_hash" in catalog.items else [])]
    out = []
    for context, rows in (("catalog", [f.ref_idx for f in folds]), ("queries", [f.query_idx for f in folds])):
        table = catalog.items.iloc[np.unique(np.concatenate(rows))][columns].reset_index(drop=True)
        h = hashlib.sha256(manifest.encode())
        hashes = table["content_hash"] if "content_hash" in table else pd.Series([""] * len(table))
        h.update("\n".join(f"{i}\t{c}" for i, c in zip(table["item_id"], hashes)).encode())
        out.append(DatasetRecord(name, h.hexdigest()[:DIGEST_CHARS], str(source), context, table,
                                 {"protocol": protocol, "folds": str(len(folds)), "rows": str(len(table))}))
    return out
