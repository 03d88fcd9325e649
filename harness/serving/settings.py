"""A served searcher's settings: what the run was (extractor, metric, labels) and what a request may cost."""
from __future__ import annotations

from dataclasses import dataclass

@dataclass
class Settings:
    backbone: dict    # the run's resolved backbone config (with _target_)
    layer: dict
    preprocess: dict
    metric: dict
    k: int
    levels: list
    run: dict         # run id, name and score, shown by the demo
    root: str | None = None  # the catalog root: results show image paths relative to it
    # What one request may cost (serving.*); models logged before these existed get the defaults.
    max_k: int = 100
    max_rows: int = 16
    rerank_candidates: int = 50
    category_votes: int = 10   # neighbours whose majority is an upload's category (within_category)
    # What embeds the queries (conf/runtime); models logged before runtimes were a config group named
    # theirs in backbone["runtime"] ("auto" | "torch" | "openvino").
    runtime: dict | None = None
    # int8: the catalog sample the network was quantized with (harness.runtimes.calibration's record),
    # so the served model quantizes the same network where it is not cached
    calibration: dict | None = None
    # The catalog's index (harness.index): root, name, the version the run published, and whether to
    # follow the index's current version, and the fingerprint of the features the model serves (a
    # version of another is never served); None for models that carry their catalog themselves.
    index: dict | None = None
    # The run's search.index config (exact | ivf | hnsw and its settings); None: exact (older models).
    search: dict | None = None
    # serving.products: a product's distance from its photos' (best | mean) and how several photos of
    # one query combine (mean | fuse); None: best and mean (older models)
    products: dict | None = None
    # The near-duplicate groups the model carries (file, sha256, groups), for collapse_duplicates
    duplicates: dict | None = None
    # augment=class_mean: the catalog augmentation the model carries (file, sha256, its label level)
    augment: dict | None = None
    # query_expansion: its config (with _target_); None: each query searched once
    query_expansion: dict | None = None
    # The network's weights file the model carries (file, sha256): train=metric's fine-tuned network,
    # or a tracked run's file (backbone.weights=runs:/...); None: the backbone's own weights setting
    weights: dict | None = None

    @classmethod
    def from_cfg(cls, cfg, root: str | None, run: dict, calibration=None) -> "Settings":
        from omegaconf import OmegaConf

        def plain(node):
            return OmegaConf.to_container(node, resolve=True)
        runtime = plain(cfg.runtime)
        runtime.pop("cache_dir", None)  # the serving machine's own cache, not the training machine's folder
        serving = cfg.serving
        return cls(plain(cfg.backbone), plain(cfg.layer), plain(cfg.preprocess), plain(cfg.metric), int(cfg.k),
                   list(cfg.dataset.levels), run, root, int(serving.max_k), int(serving.max_rows),
                   int(serving.rerank_candidates), int(serving.category_votes), runtime,
                   calibration.record() if calibration is not None else None, None, plain(cfg.search.index),
                   plain(cfg.serving.products),
                   query_expansion=plain(cfg.query_expansion) if cfg.get("query_expansion") else None)

    def runtime_spec(self) -> dict:
        if self.runtime is not None:
            return self.runtime
        legacy = self.backbone.get("runtime", "auto")
        name = {"torch": "torch_eager.TorchRuntime", "openvino": "openvino.OpenVINORuntime"}.get(legacy, "auto.AutoRuntime")
        return {"_target_": f"harness.runtimes.{name}"}
