"""build(cfg) -> Pipeline: the one place a config becomes objects (the composition root).

Every component of a run is built from its group's `_target_` and every setting that can be checked
without reading images is checked here, once, before a tracking run or a feature store exists;
`run()`, the tests that build configs and the benchmarks call it. Reading the catalog is left to
`Pipeline.data()`, so a config can be built (and checked) without its images.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from harness.backbones import build_backbone
from harness.backbones.base import Backbone
from harness.config import instantiate, validate
from harness.data.catalog import BOX_COLUMNS, boxes
from harness.engines.base import Engine, worker_config
from harness.errors import HarnessError
from harness.evaluate import check_k, evaluate
from harness.extract import extract
from harness.metrics.distances import Distance
from harness.preprocess import build_preprocess
from harness.search.base import check_index
from harness.store import FeatureStore
from harness.tracking.base import Tracker, build_tracker


@dataclass
class Pipeline:
    cfg: DictConfig
    dataset: Any        # .load() -> Catalog
    protocol: Any       # .split(catalog) -> (catalog, folds)
    backbone: Backbone
    preprocess: Any
    metric: Distance
    evaluators: dict    # name -> Evaluator
    projection: Any     # a Projection, or None
    augment: Any        # a harness.augment augmentation of the catalog vectors, or None
    expansion: Any      # a harness.search.expansion query expansion, or None
    trainer: Any        # train=metric: a harness.train trainer (fine-tunes per fold), or None
    index: Any          # ref_emb, metric -> Index (a partial of its class)
    engine: Engine
    tracker: Tracker

    @property
    def run_name(self) -> str:
        parts = [self.backbone.arch, self.cfg.layer.name, *(["flip"] if self.backbone.tta == "flip" else []),
                 *([f"ft_{self.trainer.name}"] if self.trainer is not None else []),
                 self.preprocess.name, repr(self.metric)]
        parts += [f"{part.name}" for part in (self.projection, self.augment) if part is not None]
        parts += [f"qe{self.expansion.n}"] if self.expansion is not None else []
        return "-".join(parts).lower()

    def data(self):
        """(catalog, folds): the dataset read and split by the protocol, k checked against every fold."""
        catalog, folds = self.protocol.split(self.dataset.load())
        check_k(self.cfg.k, folds)
        return catalog, folds

    def open_store(self) -> FeatureStore:
        return FeatureStore(self.cfg.store.path, self.cfg.store.dtype)

    def boxes(self, items, source: str = "the catalog") -> list | None:
        """Per row the box to crop to (`preprocess.crop=bbox`), or None: the whole photos."""
        if self.preprocess.crop != "bbox":
            return None
        found = boxes(items, source)
        if found is None:
            raise HarnessError(f"preprocess.crop=bbox crops to each photo's box, but {source} has no "
                               f"{', '.join(BOX_COLUMNS)} columns (dataset=inshop with Anno/list_bbox_inshop.txt, "
                               "oml_csv, or a manifest with them); use preprocess.crop=none.")
        return found

    def extract(self, catalog, store: FeatureStore):
        """The catalog's features (from the store, embedding what it lacks); their store keys (content
        hashes, with the box where cropped) are added to the catalog table."""
        ex = self.cfg.extract
        feats = extract(catalog.items["path"].tolist(), self.backbone, self.preprocess, store,
                        batch_size=ex.batch_size, progress=ex.progress, engine=self.engine,
                        calibration=ex.calibration, boxes=self.boxes(catalog.items, catalog.source))
        catalog.items["content_hash"] = feats.hashes
        return feats

    def extract_with(self, weights, catalog, store: FeatureStore):
        """The catalog's features from this run's backbone with another weights file (a fine-tuned
        network's), through the same store and the same kind of engine."""
        backbone = build_backbone(self.cfg, weights=str(weights))
        backbone.check_weights()
        engine = instantiate(self.cfg.engine)(config=worker_config(self.cfg, weights=str(weights)))
        ex = self.cfg.extract
        return extract(catalog.items["path"].tolist(), backbone, self.preprocess, store, batch_size=ex.batch_size,
                       progress=ex.progress, engine=engine, calibration=ex.calibration,
                       boxes=self.boxes(catalog.items, catalog.source))

    def evaluate(self, emb, catalog, folds, store: FeatureStore | None = None):
        search = self.cfg.search
        return evaluate(emb, catalog, folds, self.metric, self.evaluators, int(self.cfg.k), index=self.index,
                        within=catalog.levels[0] if search.within_category else None,
                        projection=self.projection, augment=self.augment, expansion=self.expansion, store=store,
                        encode_text=self.backbone.embed_text if self.backbone.can_embed_text else None)

    def check_remote_store(self) -> None:
        """A sweep job on another machine than the one that launched the sweep reads the feature store at
        a path every node sees; it never starts a new store of its own (it would embed the whole catalog
        again on every node)."""
        host, driver = socket.gethostname(), self.tracker.sweep_host()
        path = self.cfg.store.path
        if driver and driver != host and not Path(path).exists():
            raise HarnessError(f"store.path={path} does not exist on {host}, where this job of a sweep "
                               f"launched on {driver} runs. Extract once (engine=ray) into a store on "
                               "storage every node mounts at the same path, and point store.path at it.")


def build_evaluators(cfg: DictConfig) -> dict:
    return {name: instantiate(spec) for name, spec in cfg.evaluator.items()
            if isinstance(spec, DictConfig) and "_target_" in spec}


def build_optional(cfg: DictConfig, group: str):
    """The group's object, or None where it is `none` (an empty YAML): projection, augment, query_expansion."""
    spec = cfg.get(group)
    return instantiate(spec) if spec and "_target_" in spec else None


TRACKED = ("runs:/", "models:/")


def tracked_weights(cfg: DictConfig, tracker: Tracker) -> dict:
    """`backbone.weights=runs:/<run_id>/train/weights.pt` (a fine-tuned network a run logged, or a
    registered model's file): downloaded through the tracker, then loaded like any local weights file
    (named by its content, so the same file gives the same stored features)."""
    weights = str(cfg.backbone.get("weights", ""))
    if not weights.startswith(TRACKED):
        return {}
    import hashlib

    into = Path(cfg.paths.cache) / "weights" / hashlib.sha1(weights.encode()).hexdigest()[:16]
    return {"weights": str(tracker.download(weights, into))}


def build(cfg: DictConfig) -> Pipeline:
    """Every object of a run from its config, each setting checked; nothing read or written."""
    validate(cfg)
    tracker = build_tracker(cfg)
    tracker.check()
    weights = tracked_weights(cfg, tracker)
    backbone, metric = build_backbone(cfg, **weights), instantiate(cfg.metric)
    evaluators = build_evaluators(cfg)
    if any(ev.needs_text for ev in evaluators.values()) and not backbone.can_embed_text:
        raise HarnessError(f"evaluator=text searches by words: backbone {backbone.arch} has no text tower "
                           "(use an OpenCLIP one, e.g. backbone=clip_vit_b32).")
    preprocess, projection = build_preprocess(cfg.preprocess, backbone), build_optional(cfg, "projection")
    augment, expansion = build_optional(cfg, "augment"), build_optional(cfg, "query_expansion")
    trainer = build_optional(cfg, "train")
    if trainer is not None and not backbone.can_train:
        raise HarnessError(f"train=metric fine-tunes one backbone; {backbone.arch} joins backbones as they are "
                           "(fine-tune each member, then fuse them with backbone.members.N.weights=PATH).")
    if (augment or expansion) and cfg.index.backend == "milvus" and cfg.serving.log_model:
        raise HarnessError("augment and query_expansion are served with index.backend=faiss only (they move and "
                           "read the catalog's vectors in the serving process); use index.backend=faiss or "
                           "serving.log_model=false.")
    backbone.check_weights()
    preprocess.check()
    FeatureStore.check(cfg.store.path)
    index = instantiate(cfg.search.index)
    check_index(index, metric)
    engine = instantiate(cfg.engine)(config=worker_config(cfg, **weights))
    return Pipeline(cfg, instantiate(cfg.dataset), instantiate(cfg.protocol), backbone, preprocess, metric,
                    evaluators, projection, augment, expansion, trainer, index, engine, tracker)
