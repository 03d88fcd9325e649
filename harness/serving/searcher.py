"""Photo in, top-k catalog products out: the code the MLflow model, the demo and the API share.

A Searcher holds the extractor settings, the catalog index (features, item ids, labels, image
paths) and the metric. Built from a run's resolved config and features; saved as plain files
(`settings.json` + `features.npy` + `catalog.csv`), never pickled objects. Results name images by
item id and by their path relative to the catalog root: no absolute server path leaves it.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np
import pandas as pd
import torch
from PIL import Image

from harness.backbones import build_backbone
from harness.config import instantiate
from harness.data.images import BadImage, decode_image, read_bytes
from harness.errors import HarnessError
from harness.preprocess import build_preprocess
from harness.projections import FittedProjection
from harness.search import GroupedIndex

MAX_UPLOAD_BYTES = 10 << 20
MAX_TEXT_CHARS = 1000


class BadQuery(BadImage):
    """A query the searcher cannot answer (not an image, an empty text, words for a model without a
    text tower): the API's 400 and the page's message."""


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

    @classmethod
    def from_cfg(cls, cfg, root: str | None, run: dict) -> "Settings":
        from omegaconf import OmegaConf

        def plain(node):
            return OmegaConf.to_container(node, resolve=True)
        return cls(plain(cfg.backbone), plain(cfg.layer), plain(cfg.preprocess), plain(cfg.metric), int(cfg.k),
                   list(cfg.dataset.levels), run, root, int(cfg.serving.max_k), int(cfg.serving.max_rows),
                   int(cfg.serving.rerank_candidates))


def decode_upload(value) -> Image.Image:
    """An uploaded image → RGB image.

    Network inputs are base64 strings (a `data:` URL prefix is allowed) or raw bytes. A string is never
    taken for a file name: a client must not make the server read, or probe for, its files. In-process
    callers that want a file read pass a `pathlib.Path`. Sizes are checked before anything is read or
    decoded.
    """
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, np.ndarray):
        if value.dtype != np.uint8 or value.ndim not in (2, 3):
            raise BadImage("array images must be uint8 HxW or HxWxC")
        if value.nbytes > 4 * MAX_UPLOAD_BYTES:
            raise BadImage(f"array larger than {4 * MAX_UPLOAD_BYTES >> 20} MB")
        return Image.fromarray(value).convert("RGB")
    if isinstance(value, PurePath):
        data = _read_file(Path(value))
    elif isinstance(value, str):
        payload = value.split(",", 1)[-1] if value.startswith("data:") else value
        if len(payload) > 4 * -(-MAX_UPLOAD_BYTES // 3):  # base64 of more than MAX_UPLOAD_BYTES
            raise BadImage(f"file larger than {MAX_UPLOAD_BYTES >> 20} MB")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise BadImage("not base64-encoded image data") from None
    elif isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    else:
        raise BadImage(f"unsupported input type {type(value).__name__}")
    if len(data) > MAX_UPLOAD_BYTES:
        raise BadImage(f"file larger than {MAX_UPLOAD_BYTES >> 20} MB")
    return decode_image(data)


def _read_file(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_UPLOAD_BYTES:
            raise BadImage(f"file larger than {MAX_UPLOAD_BYTES >> 20} MB")
    except OSError as exc:
        raise BadImage(f"unreadable ({exc.strerror})") from None
    return read_bytes(path, MAX_UPLOAD_BYTES)


def whole_number(value, name: str) -> int:
    """A request's count (k, rows) as an int: whole numbers only (2.0 is 2; True, 2.5 and "5" are not)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, float, np.floating)):
        raise BadQuery(f"{name} must be a whole number, got {value!r}")
    if isinstance(value, (float, np.floating)) and not float(value).is_integer():
        raise BadQuery(f"{name} must be a whole number, got {value!r}")
    return int(value)


class Searcher:
    def __init__(self, settings: Settings, catalog: pd.DataFrame, features: np.ndarray,
                 projection: FittedProjection | None = None):
        self.settings, self.catalog = settings, catalog.reset_index(drop=True)
        self.projection = projection  # fitted on the served catalog; applied to it and to every query
        self.features = projection.transform(features) if projection is not None else features.astype(np.float32)
        self.backbone = build_backbone({"backbone": settings.backbone, "layer": settings.layer})
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

    def predict_category(self, query_emb: np.ndarray, votes: int = 10) -> str:
        """An upload has no label: majority vote of its nearest catalog neighbours."""
        _, idx = self.index.search(query_emb[None], votes)
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
        return self._rank(self.embed([decode_upload(v) for v in images]), "the query photo", k, within_category,
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
