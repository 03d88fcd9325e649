"""build(cfg) -> Pipeline: the one place a config becomes objects (the composition root).

Every component of a run is built and every setting that can be checked without reading images is
checked here, once, before a tracking run or a feature store exists; `run()`, the tests that build
configs and the benchmarks call it. Reading the catalog is left to `Pipeline.data()`, so a config can
be built (and checked) without its images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from harness.backbones import build_backbone
from harness.backbones.base import Backbone
from harness.config import instantiate, validate
from harness.errors import HarnessError
from harness.evaluate import check_k
from harness.extract import Engine, build_engine, worker_config
from harness.metrics.distances import Distance
from harness.preprocess import build_preprocess
from harness.search import index_class
from harness.store import FeatureStore


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
    engine: Engine

    @property
    def run_name(self) -> str:
        name = f"{self.backbone.arch}-{self.cfg.layer.name}-{self.preprocess.name}-{self.metric!r}".lower()
        return f"{name}-{self.projection.name}" if self.projection is not None else name

    def data(self):
        """(catalog, folds): the dataset read and split by the protocol, k checked against every fold."""
        catalog, folds = self.protocol.split(self.dataset.load())
        check_k(self.cfg.k, folds)
        return catalog, folds


def build_evaluators(cfg: DictConfig) -> dict:
    return {name: instantiate(spec) for name, spec in cfg.evaluator.items()
            if isinstance(spec, DictConfig) and "_target_" in spec}


def build_projection(cfg: DictConfig):
    spec = cfg.get("projection")
    return instantiate(spec) if spec and "_target_" in spec else None


def build(cfg: DictConfig) -> Pipeline:
    """Every object of a run from its config, each setting checked; nothing read or written."""
    validate(cfg)
    backbone, metric = build_backbone(cfg), instantiate(cfg.metric)
    evaluators = build_evaluators(cfg)
    if any(ev.needs_text for ev in evaluators.values()) and not backbone.can_embed_text:
        raise HarnessError(f"evaluator=text searches by words: backbone {backbone.arch} has no text tower "
                           "(use an OpenCLIP one, e.g. backbone=clip_vit_b32).")
    preprocess, projection = build_preprocess(cfg.preprocess, backbone), build_projection(cfg)
    backbone.check_weights()
    FeatureStore.check(cfg.store.path)
    index_class(cfg.search.index, metric, dict(cfg.search.params))
    engine = build_engine(cfg.extract, worker_config(cfg))
    return Pipeline(cfg, instantiate(cfg.dataset), instantiate(cfg.protocol), backbone, preprocess, metric,
                    evaluators, projection, engine)
