"""Photo in, top-k catalog products out: the code the MLflow model, the demo and the API share.

A Searcher holds the extractor settings, the catalog index (features, item ids, labels, image
paths) and the metric. Built from a run's resolved config and features; saved as plain files
(`settings.json` + `features.npy` + `catalog.csv`), never pickled objects. Results name images by
item id and by their path relative to the catalog root: no absolute server path leaves it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from harness.backbones import build_backbone
from harness.config import instantiate
from harness.errors import HarnessError
from harness.preprocess import build_preprocess
from harness.projections import FittedProjection
from harness.search import GroupedIndex
from harness.serving.requests import MAX_TEXT_CHARS, MAX_UPLOAD_BYTES, BadQuery, SearchOptions, decode_upload, whole_number
from harness.serving.settings import Settings

__all__ = ["MAX_UPLOAD_BYTES", "BadQuery", "SearchOptions", "Searcher", "Settings", "decode_upload", "whole_number"]

class Searcher:
    def __init__(self, settings: Settings, catalog: pd.DataFrame, features: np.ndarray,
                 projection: FittedProjection | None = None):
        self.settings, self.catalog = settings, catalog.reset_index(drop=True)
        self.projection = projection  # fitted on the served catalog; applied to it and to every query
        self.features = projection.transform(features) if projection is not None else features.astype(np.float32)
        # Models logged before the layer reached the backbone by interpolation (and before runtimes were a
        # group) carry the layer beside it and the runtime inside it.
        backbone = {"layer": settings.layer["name"], "pooling": settings.layer["pooling"],
                    **{k: v for k, v in settings.backbone.items() if k != "runtime"}}
        self.backbone = build_backbone({"backbone": backbone, "runtime": settings.runtime_spec()})
        # Ready now (OpenVINO: converted for one image), so the first shopper does not
        # wait for it or see a weights error late.
        self.backbone.prepare(1)
        self.backbone.dim
        self.preprocess = build_preprocess(settings.preprocess, self.backbone)
        self.metric = instantiate(settings.metric)
        self.category_level = settings.levels[0]
        self.index = GroupedIndex(self.features, self.metric, groups=self.catalog[self.category_level].to_numpy())
        self.images = [self._relative(p) for p in self.catalog["path"]]

    def _relative(self, path: str) -> str:
        try:
            return Path(path).relative_to(self.settings.root).as_posix() if self.settings.root else Path(path).name
        except ValueError:
            return Path(path).name

    # -- persistence: plain files only --------------------------------------------------------
    @staticmethod
    def write(directory: Path, settings: Settings, catalog: pd.DataFrame, features: np.ndarray,
              projection: FittedProjection | None = None) -> Path:
        """features: the backbone's (the projection, if any, is saved beside them as two arrays)."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "settings.json").write_text(json.dumps(vars(settings), indent=2))
        np.save(directory / "features.npy", features.astype(np.float32))
        catalog.to_csv(directory / "catalog.csv", index=False)
        if projection is not None:
            projection.save(directory / "projection.npz")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "Searcher":
        directory = Path(directory)
        settings = Settings(**json.loads((directory / "settings.json").read_text()))
        catalog = pd.read_csv(directory / "catalog.csv", dtype=str, keep_default_na=False)
        projection = directory / "projection.npz"
        return cls(settings, catalog, np.load(directory / "features.npy"),
                   FittedProjection.load(projection) if projection.exists() else None)

    # -- search ------------------------------------------------------------------------------
    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """Photos → vectors in the searched space (the backbone's, projected if the model has a projection)."""
        arrays = [np.asarray(self.preprocess(img), dtype=np.uint8) for img in images]
        emb = self.backbone.embed(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))
        return self.projection.transform(emb) if self.projection is not None else emb

    def predict_category(self, query_emb: np.ndarray) -> str:
        """An upload has no label: majority vote of its nearest catalog neighbours (serving.category_votes)."""
        _, idx = self.index.search(query_emb[None], int(self.settings.category_votes))
        return self.catalog[self.category_level].iloc[idx[0][idx[0] >= 0]].value_counts().index[0]

    def path_of(self, item_ids) -> list[str]:
        """Image files of catalog items (for in-process callers such as the page)."""
        paths = self.catalog.set_index("item_id")["path"]
        return [paths[i] for i in item_ids]

    @property
    def can_search_text(self) -> bool:
        return self.backbone.can_embed_text

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Words → vectors in the searched space (the text tower's, projected like the photos)."""
        texts = [str(t).strip() for t in texts]
        if not all(texts):
            raise BadQuery("an empty text query")
        if any(len(t) > MAX_TEXT_CHARS for t in texts):
            raise BadQuery(f"a text query longer than {MAX_TEXT_CHARS} characters")
        try:
            emb = self.backbone.embed_text(texts)
        except HarnessError as exc:
            raise BadQuery(str(exc)) from None
        return self.projection.transform(emb) if self.projection is not None else emb

    @property
    def max_k(self) -> int:
        """The most answers one query may ask for: serving.max_k, and never more than the catalog."""
        return min(int(self.settings.max_k), len(self.catalog))

    def check_k(self, k) -> int:
        """k of a request (None: the model's own): 1..max_k, refused before any decoding or allocation."""
        k = self.settings.k if k is None else whole_number(k, "k")
        if not 1 <= k <= self.max_k:
            raise BadQuery(f"k must be between 1 and {self.max_k} (serving.max_k={self.settings.max_k}, "
                           f"catalog {len(self.catalog)} products), got {k}")
        return k

    def check_rows(self, n: int) -> None:
        if n > self.settings.max_rows:
            raise BadQuery(f"{n} queries in one request; at most {self.settings.max_rows} (serving.max_rows)")

    def search(self, images: list, k: int | None = None, within_category: bool = False,
               rerank_column: str | None = None, rerank_weight: float = 0.0) -> list[pd.DataFrame]:
        """One table per photo: rank, item_id, labels, image (relative path), distance, similarity,
        [business score]."""
        k = self.check_k(k)
        self.check_rows(len(images))
        return self._rank(self.embed([decode_upload(v, self.preprocess.decode_scale) for v in images]), "the query photo", k, within_category,
                          rerank_column, rerank_weight)

    def search_text(self, texts: list[str], k: int | None = None, within_category: bool = False,
                    rerank_column: str | None = None, rerank_weight: float = 0.0) -> list[pd.DataFrame]:
        """One table per text ("red floral summer dress"), as for photos; needs a backbone with a text tower."""
        k = self.check_k(k)
        self.check_rows(len(texts))
        return self._rank(self.embed_texts(texts), "the text query", k, within_category, rerank_column,
                          rerank_weight)

    def _rank(self, query_emb: np.ndarray, what: str, k: int, within_category, rerank_column,
              rerank_weight) -> list[pd.DataFrame]:
        try:
            self.metric.check(query_emb, what)
        except HarnessError as exc:
            raise BadQuery(str(exc)) from None
        out = []
        for emb in query_emb:
            predicted = self.predict_category(emb) if within_category else None
            # Both bounded by configuration, whatever the request: k by max_k, the candidates by the catalog.
            depth = min(max(k, int(self.settings.rerank_candidates)), len(self.catalog)) if rerank_column else k
            dist, idx = self.index.search(emb[None], depth, None if predicted is None else [predicted])
            found = idx[0] >= 0
            table = self.catalog.iloc[idx[0][found]].drop(columns=["path"])
            table["image"] = [self.images[i] for i in idx[0][found]]
            table["distance"] = dist[0][found]
            table["similarity"] = 1.0 / (1.0 + table["distance"])  # monotone, comparable across metrics
            if rerank_column:
                table = rerank(table, rerank_column, rerank_weight)
            table = table.head(k)
            table.insert(0, "rank", np.arange(1, len(table) + 1))
            if predicted is not None:
                table["predicted_category"] = predicted
            out.append(table.reset_index(drop=True))
        return out


def rerank(table: pd.DataFrame, column: str, weight: float) -> pd.DataFrame:
    """Business re-ranking: score = (1 − w)·similarity + w·business, both min-max scaled over the candidates."""
    if column not in table:
        raise BadQuery(f"rerank_column={column!r} is not a catalog column")
    business = pd.to_numeric(table[column], errors="coerce").fillna(0.0)

    def scale(s):
        span = s.max() - s.min()
        return (s - s.min()) / span if span > 0 else s * 0

    table = table.assign(business_score=business)
    table["score"] = (1 - weight) * scale(table["similarity"]) + weight * scale(business)
    return table.sort_values(["score", "distance"], ascending=[False, True], kind="stable")
