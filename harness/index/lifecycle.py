"""Build an index from the catalog, update it as the catalog changes: the library behind the CLI.

Both read the catalog through the run's dataset config and embed through the feature store, so no
image is embedded twice: `build` embeds what the store lacks and writes a full version; `update`
compares the catalog as it is now with the current version by item id, content hash and catalog
values, embeds only the new and changed images, deletes what is gone, and writes a version holding
just the difference.
"""
from __future__ import annotations

import logging
from contextlib import closing

import numpy as np

from harness.errors import HarnessError
from harness.extract import extract, hash_files, region_keys
from harness.index.publish import diff, index_name, served_items
from harness.index.store import IndexStore
from harness.index.milvus import MilvusBusy, MilvusIndex, from_reference, reference
from harness.index.structures import refresh
from harness.runtimes.calibration import Calibration

log = logging.getLogger(__name__)


def open_index(cfg) -> IndexStore:
    return IndexStore(cfg.index.root, index_name(cfg))


def manifest_info(pipe, fingerprint: str, catalog_root) -> dict:
    """What a version records of how its vectors were made (an update checks it, int8 reuses the sample)."""
    calibration = pipe.backbone.calibration
    return {"fingerprint": fingerprint, "catalog_root": catalog_root,
            "extractor": {"arch": pipe.backbone.arch, "layer": pipe.backbone.layer,
                          "runtime": pipe.backbone.runtime.name, "precision": pipe.backbone.precision},
            "calibration": calibration.record() if calibration is not None else None}


def sync_milvus(cfg, index: IndexStore, version: int, new_items=None, new_vectors=None) -> list[str]:
    """Every Milvus copy of the index (those recorded, and with index.backend=milvus the config's) made
    to hold `version`: a full version copied, an update applied in place. Returns how, per copy."""
    from omegaconf import OmegaConf

    copies = {m.key: m for m in MilvusIndex.known(index)}
    named = from_reference(reference(cfg), index, OmegaConf.to_container(cfg.metric, resolve=True))
    if named is not None:
        copies.setdefault(named.key, named)
    done = []
    for copy in copies.values():
        try:
            done.append(copy.sync(version, new_items, new_vectors))
        except MilvusBusy as exc:  # the serving process holds the Lite file: it syncs when it loads the version
            log.warning("%s", exc)
            done.append("deferred to the process serving it")
    return done


def build(pipe) -> dict:
    """A full version of the catalog as it is now; returns what it did."""
    catalog = pipe.dataset.load()
    with closing(pipe.open_store()) as store:
        feats = pipe.extract(catalog, store)
    keep = feats.valid & ~catalog.is_distractor
    index = open_index(pipe.cfg)
    counts = {"added": int(keep.sum()), "changed": 0, "removed": 0, "unchanged": 0}
    version = index.commit(served_items(catalog.items[keep]), feats.emb[keep], full=True,
                           info={**manifest_info(pipe, feats.fingerprint, catalog.root), "counts": counts})
    milvus = sync_milvus(pipe.cfg, index, version)
    return {"index": str(index.dir), "version": version, **counts, "skipped": len(feats.skipped),
            "embedded": feats.extracted, **({"milvus": milvus} if milvus else {})}


def update(pipe) -> dict:
    """The next version: the current one with the catalog's changes since; returns the counts."""
    cfg = pipe.cfg
    index = open_index(cfg)
    current = index.current()
    if current is None:
        raise HarnessError(f"no index at {index.dir} for this catalog and extractor yet: "
                           "build it first (python -m harness.index build, or a harness run).")
    before = index.read(current)
    if before.manifest.get("calibration") and pipe.backbone.precision == "int8":
        # the index's int8 network: quantized with the sample recorded when it was built
        pipe.backbone.calibrate(Calibration.from_record(before.manifest["calibration"]), pipe.preprocess)
    catalog = pipe.dataset.load()
    paths = catalog.items["path"].tolist()
    hashes, unreadable = hash_files(paths)
    hashes = region_keys(hashes, pipe.boxes(catalog.items, catalog.source))  # a moved box is a changed item
    catalog.items["content_hash"] = hashes
    readable = np.array([h is not None for h in hashes]) & ~catalog.is_distractor
    now = served_items(catalog.items[readable])
    changes = diff(before.items, now)
    todo = now[now["item_id"].isin(set(changes["added"]) | set(changes["changed"]))].reset_index(drop=True)
    vectors = np.zeros((0, before.vectors.shape[1] if before.vectors.size else 0), np.float32)
    embedded, skipped = 0, len(unreadable)
    fingerprint = before.manifest.get("fingerprint")
    if len(todo):
        with closing(pipe.open_store()) as store:
            feats = extract(todo["path"].tolist(), pipe.backbone, pipe.preprocess, store,
                            batch_size=cfg.extract.batch_size, progress=cfg.extract.progress, engine=pipe.engine,
                            calibration=cfg.extract.calibration, boxes=pipe.boxes(todo))
        if fingerprint and feats.fingerprint != fingerprint:
            raise HarnessError(f"the extractor's features changed since version {current} of {index.dir} "
                               f"(fingerprint {feats.fingerprint}, the index's {fingerprint}: another library "
                               "version or runtime?); rebuild it with python -m harness.index build.")
        skipped += len(feats.skipped)
        embedded = feats.extracted
        changes["removed"] += todo["item_id"][~feats.valid].tolist()  # an image that no longer decodes
        todo, vectors = todo[feats.valid].reset_index(drop=True), feats.emb[feats.valid]
    counts = {name: len(ids) for name, ids in changes.items()}
    if not len(todo) and not changes["removed"]:
        return {"index": str(index.dir), "version": current, **counts, "skipped": skipped, "embedded": 0}
    info = {**before.manifest, "counts": counts}
    for key in ("version", "parent", "created", "dim", "segments", "next_id"):
        info.pop(key, None)
    version = index.commit(todo, vectors, set(changes["removed"]), parent=current, info=info)
    moved = refresh(index, version, vectors)  # served approximate structures follow, moved in place
    milvus = sync_milvus(cfg, index, version, todo, vectors)
    log.info("index %s: version %d (%s)", index.dir, version, ", ".join(f"{v} {k}" for k, v in counts.items()))
    return {"index": str(index.dir), "version": version, **counts, "skipped": skipped, "embedded": embedded,
            "structures_moved": len(moved), **({"milvus": milvus} if milvus else {})}
