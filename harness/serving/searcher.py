"""Photo in, top-k catalog products out: the code the MLflow model, the demo and the API share.

A Searcher holds the extractor settings, the catalog (item ids, labels, image paths, features) and the
metric. A model logged by a run names its catalog's index version (harness.index): `settings.json` and
the fitted projection are all it carries, never pickled objects, and with `index.follow` it answers
from the index's current version, switching to a new one (an update, a roll-back) while it serves:
the new version is loaded beside the old one, then swapped in one assignment, and every request reads
one version from start to end. Results name images by item id and by their path relative to the
catalog root: no absolute server path leaves it.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from harness.augment import FittedAugmentation
from harness.backbones import build_backbone
from harness.config import instantiate
from harness.errors import HarnessError
from harness.index.store import IndexStore, Snapshot
from harness.index.milvus import from_reference
from harness.index.structures import Structures, persistent
from harness.preprocess import build_preprocess
from harness.projections import FittedProjection
from harness.runtimes.calibration import Calibration
from harness.search import ExactIndex, GroupedIndex
from harness.serving.filters import CatalogFilter, parse_filters
from harness.serving.products import COMBINES, DISTANCES, AnswerKeys, Term, combine, fuse, parse_terms, product_distance
from harness.serving.requests import MAX_TEXT_CHARS, MAX_UPLOAD_BYTES, BadQuery, SearchOptions, decode_upload, whole_number
from harness.serving.settings import Settings

__all__ = ["MAX_UPLOAD_BYTES", "BadQuery", "SearchOptions", "Searcher", "Settings", "decode_upload", "whole_number"]

log = logging.getLogger(__name__)
HIDDEN = ("content_hash",)  # the index's bookkeeping, not an answer's column
DUPLICATES = "duplicates.csv"
AUGMENTATION = "augmentation.npz"
WEIGHTS = "weights.pt"


@dataclass(frozen=True)
class Served:
    """One catalog version as searched: everything a request reads, swapped as a whole."""
    catalog: pd.DataFrame
    features: np.ndarray
    index: GroupedIndex
    images: list
    filter: CatalogFilter
    version: int | None
    ids: np.ndarray | None = None   # the index's row id of each catalog row (what Milvus answers with)
    keys: AnswerKeys | None = None  # each row's product and near-duplicate group

    @property
    def local(self) -> bool:
        """Searched in this process (else in Milvus: no vectors here)."""
        return self.index is not None


class Searcher:
    def __init__(self, settings: Settings, catalog: pd.DataFrame, features: np.ndarray,
                 projection: FittedProjection | None = None, index: IndexStore | None = None,
                 version: int | None = None, follow: bool = False, poll_seconds: float = 1.0,
                 snapshot: Snapshot | None = None, duplicates: pd.DataFrame | None = None,
                 augmentation: FittedAugmentation | None = None):
        """`duplicates`: near-duplicate groups (item_id, group: python -m harness.dedup's table) that
        collapse_duplicates keeps one answer of. `augmentation`: the catalog augmentation fitted on the
        served catalog (augment=class_mean), applied to its items by their label (settings.augment's
        level), also to items added later; `settings.query_expansion`: how each photo query is expanded."""
        self.settings = settings
        self.products = {"distance": "best", "query": "mean", **(settings.products or {})}
        if self.products["distance"] not in DISTANCES or self.products["query"] not in COMBINES:
            raise HarnessError(f"serving.products: distance must be one of {', '.join(DISTANCES)} and query one of "
                               f"{', '.join(COMBINES)}; got {self.products}.")
        self.duplicates = duplicates
        self.projection = projection  # fitted on the served catalog; applied to it and to every query
        self.metric = instantiate(settings.metric)
        self.category_level = settings.levels[0]
        self.source, self.follow, self.poll_seconds = index, follow and index is not None, poll_seconds
        self.kind = instantiate(settings.search) if settings.search else ExactIndex
        # index.backend=milvus: the whole search (filters, predicted category) runs in Milvus
        self.remote = from_reference(settings.index, index, settings.metric, projection)
        self.augmentation = augmentation
        self.expansion = instantiate(settings.query_expansion) if settings.query_expansion else None
        if self.remote is not None and (augmentation is not None or self.expansion is not None):
            raise HarnessError("augment and query_expansion are served with index.backend=faiss (they move and read "
                               "the catalog's vectors in this process); index.backend=milvus serves neither.")
        if augmentation is not None and not (settings.augment or {}).get("level") in catalog:
            raise HarnessError(f"the catalog augmentation's label column {(settings.augment or {}).get('level')!r} "
                               "is not a column of the served catalog.")
        self.served = self._serve(catalog, features, version, snapshot)
        # Models logged before the layer reached the backbone by interpolation (and before runtimes were a
        # group) carry the layer beside it and the runtime inside it.
        backbone = {"layer": settings.layer["name"], "pooling": settings.layer["pooling"],
                    **{k: v for k, v in settings.backbone.items() if k != "runtime"}}
        self.backbone = build_backbone({"backbone": backbone, "runtime": settings.runtime_spec()})
        self.preprocess = build_preprocess(settings.preprocess, self.backbone)
        if settings.calibration:
            self.backbone.calibrate(Calibration.from_record(settings.calibration), self.preprocess)
        # Ready now (OpenVINO: converted for one image), so the first shopper does not
        # wait for it or see a weights error late.
        self.backbone.prepare(1)
        self.backbone.dim
        self._checked, self._loading, self._refused = time.monotonic(), threading.Lock(), None

    def _serve(self, catalog: pd.DataFrame, features: np.ndarray, version: int | None,
               snapshot: Snapshot | None = None) -> Served:
        catalog = catalog.drop(columns=[c for c in HIDDEN if c in catalog]).reset_index(drop=True)
        images, ids = [self._relative(p) for p in catalog["path"]], None if snapshot is None else snapshot.ids
        if self.remote is not None:
            self.remote.sync(version)  # normally done by the run or the CLI already ("held")
            return Served(catalog, features, None, images, CatalogFilter(catalog), version, ids,
                          AnswerKeys.of(catalog, self.duplicates))
        features = self.projection.transform(features) if self.projection is not None else features.astype(np.float32)
        if self.augmentation is not None:
            features = self.augmentation.apply(features, catalog[self.settings.augment["level"]].to_numpy(object))
        whole = None
        if snapshot is not None and self.source is not None and persistent(self.kind) and self.augmentation is None:
            # the run's approximate structure, kept with the index version (moved in place on updates;
            # with a catalog augmentation the structure is built when a version is loaded instead)
            whole = Structures(self.source, self.settings.metric, self.settings.search,
                               self.projection).open(snapshot, features)
        index = GroupedIndex(features, self.metric, groups=catalog[self.category_level].to_numpy(),
                             index=self.kind, whole=whole)
        return Served(catalog, features, index, images, CatalogFilter(catalog), version, ids,
                      AnswerKeys.of(catalog, self.duplicates))

    # What a request reads: one version, taken once (self.served may be replaced meanwhile).
    @property
    def catalog(self) -> pd.DataFrame:
        return self.served.catalog

    @property
    def features(self) -> np.ndarray:
        return self.served.features

    @property
    def index(self) -> GroupedIndex:
        return self.served.index

    @property
    def filter(self) -> CatalogFilter:
        return self.served.filter

    @property
    def version(self) -> int | None:
        return self.served.version

    # -- following the index ------------------------------------------------------------------
    def current(self) -> Served:
        """The version to answer from; when following the index, a new current version found at most
        `poll_seconds` ago starts loading in the background (requests go on with the old one)."""
        if self.follow and time.monotonic() - self._checked >= self.poll_seconds:
            self._checked = time.monotonic()
            try:
                latest = self.source.current()
            except HarnessError as exc:
                log.warning("index %s: %s", self.source.dir, exc)
                latest = None
            if latest not in (None, self.served.version, self._refused) and self._loading.acquire(blocking=False):
                threading.Thread(target=self._load, args=(latest,), daemon=True).start()
        return self.served

    def reload(self, version: int | None = None) -> int:
        """Load the index's current version (or `version`) and serve it; returns the version served."""
        with self._loading:
            self._swap(version if version is not None else self.source.current())
        return self.served.version

    def _load(self, version: int) -> None:
        try:
            self._swap(version)
        except Exception as exc:  # a version that cannot be read is never served; the old one goes on
            self._refused = version  # (and it is not read again until the index moves on)
            log.warning("index %s version %s not served: %s", self.source.dir, version, exc)
        finally:
            self._loading.release()

    def _swap(self, version: int) -> None:
        snapshot = self.source.read(version, vectors=self.remote is None)
        if foreign := self.foreign(self.settings, snapshot):
            raise HarnessError(foreign)
        self.served = self._serve(snapshot.items, snapshot.vectors, snapshot.version, snapshot)
        log.info("serving index %s version %d (%d items)", self.source.dir, snapshot.version, len(snapshot.items))

    def _relative(self, path: str) -> str:
        try:
            return Path(path).relative_to(self.settings.root).as_posix() if self.settings.root else Path(path).name
        except ValueError:
            return Path(path).name

    # -- persistence: plain files only --------------------------------------------------------
    @staticmethod
    def write(directory: Path, settings: Settings, projection: FittedProjection | None = None,
              duplicates: pd.DataFrame | None = None, augmentation: FittedAugmentation | None = None,
              augment_level: str | None = None, weights: Path | None = None) -> Path:
        """settings (naming the index version), the projection, if any, as two arrays, the near-duplicate
        groups, if any, as a CSV, and the catalog augmentation, if any, as arrays; the settings record
        the digests of the last two; `weights`: a network's weights file, carried as weights.pt."""
        directory.mkdir(parents=True, exist_ok=True)
        if weights is not None:
            shutil.copyfile(weights, directory / WEIGHTS)
            settings.weights = {"file": WEIGHTS, "sha256": hashlib.sha256((directory / WEIGHTS).read_bytes()).hexdigest()}
            settings.backbone = {**settings.backbone, "weights": WEIGHTS}  # resolved in the model's folder
        if augmentation is not None:
            augmentation.save(directory / AUGMENTATION)
            settings.augment = {"file": AUGMENTATION, "level": augment_level,
                                "sha256": hashlib.sha256((directory / AUGMENTATION).read_bytes()).hexdigest()}
        if duplicates is not None:
            data = duplicates[["item_id", "group"]].to_csv(index=False).encode()
            (directory / DUPLICATES).write_bytes(data)
            settings.duplicates = {"file": DUPLICATES, "sha256": hashlib.sha256(data).hexdigest(), "groups": int(duplicates["group"].nunique())}
        (directory / "settings.json").write_text(json.dumps(vars(settings), indent=2))
        if projection is not None:
            projection.save(directory / "projection.npz")
        return directory

    @staticmethod
    def read_duplicates(directory: Path, record: dict | None) -> pd.DataFrame | None:
        """The model's near-duplicate groups, checked against the digest its settings recorded."""
        if not record:
            return None
        data = (directory / record["file"]).read_bytes()
        if hashlib.sha256(data).hexdigest() != record["sha256"]:
            raise HarnessError(f"{directory / record['file']}: its content does not match the digest the model "
                               "recorded; the model is not served with altered duplicate groups.")
        return pd.read_csv(io.BytesIO(data), dtype={"item_id": str, "group": np.int64}, keep_default_na=False)

    @classmethod
    def load(cls, directory: str | Path) -> "Searcher":
        directory = Path(directory)
        settings = Settings(**json.loads((directory / "settings.json").read_text()))
        projection = directory / "projection.npz"
        projection = FittedProjection.load(projection) if projection.exists() else None
        duplicates = cls.read_duplicates(directory, settings.duplicates)
        augmentation = cls.read_augmentation(directory, settings.augment)
        if settings.weights:
            path = directory / settings.weights["file"]
            if hashlib.sha256(path.read_bytes()).hexdigest() != settings.weights["sha256"]:
                raise HarnessError(f"{path}: its content does not match the digest the model recorded; the model is "
                                   "not served with an altered network.")
            settings.backbone = {**settings.backbone, "weights": str(path)}
        if settings.index is None:  # a model logged before indexes: its catalog inside it
            catalog = pd.read_csv(directory / "catalog.csv", dtype=str, keep_default_na=False)
            return cls(settings, catalog, np.load(directory / "features.npy"), projection, duplicates=duplicates,
                       augmentation=augmentation)
        ref = settings.index
        store = IndexStore(ref["root"], ref["name"])
        follow, vectors = bool(ref.get("follow", True)), ref.get("backend", "faiss") != "milvus"
        snapshot = store.read(None if follow else ref["version"], vectors=vectors)
        if foreign := cls.foreign(settings, snapshot):
            if snapshot.version == ref["version"]:
                raise HarnessError(foreign)
            log.warning("%s; serving the model's own version %s until the index moves on", foreign, ref["version"])
            snapshot = store.read(ref["version"], vectors=vectors)
        return cls(settings, snapshot.items, snapshot.vectors, projection, store, snapshot.version, follow,
                   snapshot=snapshot, duplicates=duplicates, augmentation=augmentation)

    @staticmethod
    def foreign(settings: Settings, snapshot: Snapshot) -> str | None:
        """Why the model cannot serve `snapshot`: its vectors are another extractor's than the one the
        model embeds queries with (another fingerprint); None when it can, or when either side predates
        the record."""
        want, have = (settings.index or {}).get("fingerprint"), snapshot.manifest.get("fingerprint")
        if not want or not have or want == have:
            return None
        return (f"index {settings.index['name']} version {snapshot.version} holds another extractor's vectors "
                f"(fingerprint {have}; this model's queries are {want}): not served")

    @staticmethod
    def read_augmentation(directory: Path, record: dict | None) -> FittedAugmentation | None:
        """The model's catalog augmentation, checked against the digest its settings recorded."""
        if not record:
            return None
        path = directory / record["file"]
        if hashlib.sha256(path.read_bytes()).hexdigest() != record["sha256"]:
            raise HarnessError(f"{path}: its content does not match the digest the model recorded; the model is "
                               "not served with an altered catalog augmentation.")
        return FittedAugmentation.load(path)

    # -- search ------------------------------------------------------------------------------
    def embed(self, images: list[Image.Image], served: Served | None = None) -> np.ndarray:
        """Photos → vectors in the searched space (the backbone's, projected if the model has a projection),
        each expanded with its nearest items of `served` (default: the current version) where the model
        expands queries."""
        arrays = [np.asarray(self.preprocess(img), dtype=np.uint8) for img in images]
        emb = self.backbone.embed(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))
        emb = self.projection.transform(emb) if self.projection is not None else emb
        if self.expansion is None:
            return emb
        served = served or self.current()
        _, pos = served.index.search(emb, min(self.expansion.n, len(served.catalog)))
        return self.expansion.expand(emb, served.features, pos)

    def predict_category(self, query_emb: np.ndarray, served: Served | None = None) -> str:
        """An upload has no label: majority vote of its nearest catalog neighbours (serving.category_votes)."""
        served = served or self.served
        _, idx = self._neighbours(served, query_emb, int(self.settings.category_votes))
        return served.catalog[self.category_level].iloc[idx[0][idx[0] >= 0]].value_counts().index[0]

    def _neighbours(self, served: Served, emb: np.ndarray, k: int, group=None, where=None, only=None):
        """(distances, catalog positions) of one query's k nearest, among the items of `group` (the
        predicted category) that `where` keeps: a mask over the catalog (in process) or the parsed
        conditions (Milvus, where the same conditions run on the collection's fields); `only`: these
        catalog positions alone."""
        if served.local:
            if only is not None:
                mask = np.zeros(len(served.catalog), dtype=bool)
                mask[only] = True
                where = mask if where is None else where & mask
            return served.index.search(emb[None], k, None if group is None else [group], where)
        also = {} if group is None else {self.category_level: group}
        if only is not None:
            also["item_id"] = served.catalog["item_id"].iloc[only].astype(str).tolist()
        d, rid = self.remote.search(emb[None], k, served.version, where, lambda c: served.filter.text(c)[1],
                                    (self.settings.index or {}).get("milvus_search"), also or None)
        pos = np.searchsorted(served.ids, np.maximum(rid, 0))
        pos = np.minimum(pos, len(served.ids) - 1)
        if np.any((rid >= 0) & (served.ids[pos] != rid)):
            raise HarnessError(f"Milvus answered rows that version {served.version} of the index does not hold.")
        return d, np.where(rid >= 0, pos, -1)

    def _answers(self, served: Served, emb: np.ndarray, want: int, group, where, collapse: bool):
        """(catalog rows, distances) of one query's `want` nearest distinct products (one photo each: its
        best), near-duplicates collapsed if asked. Searches deeper only where products have several
        photos (or groups several items), never past the depth that surely holds `want` of them."""
        keys, n = served.keys, len(served.catalog)
        mean = self.products["distance"] == "mean" and not keys.one_per_product
        final, want = want, max(want, int(self.settings.rerank_candidates)) if mean else want
        fetch = min(want, n)
        most = min(n, keys.depth(want, collapse))
        while True:
            d, i = self._neighbours(served, emb, fetch, group, where)
            found = i[0] >= 0
            rows, dist = i[0][found], d[0][found]
            keep = keys.distinct(rows, want, collapse)
            if len(keep) >= want or fetch >= most or len(rows) < fetch:
                break
            fetch = min(most, 4 * fetch)
        rows, dist = rows[keep], dist[keep]
        if mean and len(rows):  # the rerank_candidates products nearest by their best photo, re-scored
            rows, dist = self._mean_distance(served, emb, rows, dist, group, where)
        return rows[:final], dist[:final]

    def _mean_distance(self, served: Served, emb, rows, best, group, where):
        """The candidates re-scored by the mean distance over all their photos that may be answers
        (ties: the nearer best photo); each still shown by its best photo."""
        product = served.keys.product
        photos = np.flatnonzero(np.isin(product, product[rows]))
        d, i = self._neighbours(served, emb, len(photos), group, where, only=photos)
        found = i[0] >= 0
        mean = product_distance(i[0][found], d[0][found], product, "mean")
        means = np.array([mean[p] for p in product[rows]])
        order = np.lexsort((best, means))
        return rows[order], means[order].astype(np.float32)

    def _query_table(self, served: Served, vectors: np.ndarray, weights, k: int, within_category: bool,
                     rerank_column, rerank_weight, allowed, collapse: bool) -> pd.DataFrame:
        """One query's answers: a vector, or (fuse) several terms each answered and merged by
        weighted reciprocal-rank fusion."""
        predicted = self.predict_category(combine(vectors, weights) if len(vectors) > 1 else vectors[0], served) \
            if within_category else None
        # Both bounded by configuration, whatever the request: k by max_k, the candidates by the catalog.
        depth = min(max(k, int(self.settings.rerank_candidates)), len(served.catalog)) if rerank_column else k
        fused = None
        if len(vectors) == 1:
            rows, dist = self._answers(served, vectors[0], depth, predicted, allowed, collapse)
        else:
            product = served.keys.product
            lists = [self._answers(served, v, depth, predicted, allowed, collapse) for v in vectors]
            score = fuse([product[r].tolist() for r, _ in lists], weights)
            nearest = {}  # product → (distance, row): its nearest photo to any term
            for r, d in lists:
                for row, dd in zip(r.tolist(), d.tolist()):
                    p = product[row]
                    if p not in nearest or dd < nearest[p][0]:
                        nearest[p] = (dd, row)
            order = sorted(score, key=lambda p: (-score[p], nearest[p][0], nearest[p][1]))
            rows = np.array([nearest[p][1] for p in order], dtype=np.int64)
            keep = served.keys.distinct(rows, depth, collapse)  # photos of two lists may be one group
            rows = rows[keep]
            dist = np.array([nearest[product[r]][0] for r in rows], dtype=np.float32)
            fused = np.array([score[product[r]] for r in rows])
        table = served.catalog.iloc[rows].drop(columns=["path"])
        table["image"] = [served.images[i] for i in rows]
        table["distance"] = dist
        table["similarity"] = 1.0 / (1.0 + table["distance"])  # monotone, comparable across metrics
        if fused is not None:
            table["fused_score"] = fused
        if rerank_column:
            table = rerank(table, rerank_column, rerank_weight)
        table = table.head(k)
        table.insert(0, "rank", np.arange(1, len(table) + 1))
        if predicted is not None:
            table["predicted_category"] = predicted
        if served.version is not None:
            table["index_version"] = served.version  # which catalog version answered
        return table.reset_index(drop=True)

    def path_of(self, item_ids) -> list[str]:
        """Image files of catalog items (for in-process callers such as the page); KeyError for an id
        the served version does not hold."""
        paths = self.current().catalog.set_index("item_id")["path"]
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
               rerank_column: str | None = None, rerank_weight: float = 0.0, filters=None,
               collapse_duplicates: bool = False) -> list[pd.DataFrame]:
        """One table per photo: rank, item_id, labels, image (relative path), distance, similarity,
        [business score]: k distinct products. `filters` (harness.serving.filters): only matching items
        are searched; `collapse_duplicates`: one answer per near-duplicate group."""
        served = self.current()  # one version for the whole request
        k = self.check_k(k)
        self.check_rows(len(images))
        allowed = self._where(served, filters)  # checked before any photo is decoded
        return self._rank(self._embed_uploads(images, served), "the query photo", k, within_category,
                          rerank_column, rerank_weight, allowed, served, collapse_duplicates)

    def search_items(self, image, k: int | None = None, within_category: bool = False,
                     rerank_column: str | None = None, rerank_weight: float = 0.0, filters=None,
                     collapse_duplicates: bool = False, point: tuple[float, float] | None = None) -> list[pd.DataFrame]:
        """Shop the look: one table per product the photo shows (the preprocessing's `items`: GrabCut's
        regions with `segment`, the detections with `detect`, else the whole photo), each with `item` (0,
        1, ... largest or likeliest first) and `item_box` [left, top, right, bottom] in the upload's pixels;
        `point` (x, y), where a shopper clicked: only the smallest item there. At most serving.max_rows
        items are searched."""
        served = self.current()
        k = self.check_k(k)
        allowed = self._where(served, filters)
        img = decode_upload(image)  # in full: the boxes are the upload's own pixels
        boxes = self.preprocess.items(img)[: int(self.settings.max_rows)]
        if point is not None:
            x, y = point
            inside = [b for b in boxes if b[0] <= x < b[2] and b[1] <= y < b[3]]
            if not inside:
                raise BadQuery(f"no item found at ({x:g}, {y:g}) of the {img.width} x {img.height} photo; "
                               f"{len(boxes)} item(s) at {', '.join(str(list(b)) for b in boxes)}")
            boxes = [min(inside, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))]
        tables = self._rank(self.embed([img.crop(b) for b in boxes], served), "the query photo", k, within_category,
                            rerank_column, rerank_weight, allowed, served, collapse_duplicates)
        return [t.assign(item=n, item_box=[list(box)] * len(t)) for n, (box, t) in enumerate(zip(boxes, tables))]

    def search_text(self, texts: list[str], k: int | None = None, within_category: bool = False,
                    rerank_column: str | None = None, rerank_weight: float = 0.0, filters=None,
                    collapse_duplicates: bool = False) -> list[pd.DataFrame]:
        """One table per text ("red floral summer dress"), as for photos; needs a backbone with a text tower."""
        served = self.current()
        k = self.check_k(k)
        self.check_rows(len(texts))
        allowed = self._where(served, filters)
        return self._rank(self.embed_texts(texts), "the text query", k, within_category, rerank_column,
                          rerank_weight, allowed, served, collapse_duplicates)

    def search_embeddings(self, query_emb: np.ndarray, k: int | None = None, within_category: bool = False,
                          rerank_column: str | None = None, rerank_weight: float = 0.0, filters=None,
                          collapse_duplicates: bool = False) -> list[pd.DataFrame]:
        """One table per vector already in the searched space (as `embed` returns them)."""
        served = self.current()
        k = self.check_k(k)
        query_emb = np.atleast_2d(np.asarray(query_emb, dtype=np.float32))
        self.check_rows(len(query_emb))
        return self._rank(query_emb, "query_emb", k, within_category, rerank_column, rerank_weight,
                          self._where(served, filters), served, collapse_duplicates)

    def search_terms(self, terms, k: int | None = None, within_category: bool = False,
                     rerank_column: str | None = None, rerank_weight: float = 0.0, filters=None,
                     collapse_duplicates: bool = False) -> pd.DataFrame:
        """One query of several weighted terms (harness.serving.products): photos and words, negative
        weights for what to avoid, e.g. [{"image": b64, "weight": 1}, {"text": "no stripes", "weight": -0.3}].
        serving.products.query: `mean` combines their vectors; `fuse` answers each (positive) term and
        merges the answers. One table."""
        served = self.current()
        k = self.check_k(k)
        terms = parse_terms(terms, int(self.settings.max_rows))
        allowed = self._where(served, filters)
        for n, term in enumerate(terms, start=1):  # refused before any photo is decoded
            if term.kind == "text" and not self.can_search_text:
                raise BadQuery(f"term {n} (text {str(term.value)[:80]!r}): backbone {self.backbone.arch} has no text "
                               "tower, so it cannot embed words; send photos only")
        fusing = self.products["query"] == "fuse"
        if fusing and any(t.weight < 0 for t in terms):
            raise BadQuery("a negative weight needs serving.products.query=mean: fused answers cannot subtract")
        vectors = self._embed_terms(terms, served)
        try:
            self.metric.check(vectors, "the query terms")
        except HarnessError as exc:
            raise BadQuery(str(exc)) from None
        weights = [t.weight for t in terms]
        if not fusing or len(terms) == 1:
            vectors, weights = combine(vectors, weights)[None], [1.0]
        return self._query_table(served, vectors, weights, k, within_category, rerank_column, rerank_weight,
                                 allowed, bool(collapse_duplicates))

    def _embed_uploads(self, images: list, served: Served | None = None) -> np.ndarray:
        return self.embed([decode_upload(v, self.preprocess.decode_scale) for v in images], served)

    def _embed_terms(self, terms: list[Term], served: Served | None = None) -> np.ndarray:
        """(T, D) in the terms' order: the photos embedded in one batch, the words in another."""
        out = [None] * len(terms)
        for kind, embed in (("image", lambda v: self._embed_uploads(v, served)), ("text", self.embed_texts)):
            at = [n for n, t in enumerate(terms) if t.kind == kind]
            if at:
                for n, vector in zip(at, embed([terms[n].value for n in at])):
                    out[n] = vector
        return np.stack(out).astype(np.float32)

    def _where(self, served: Served, filters):
        """A request's filters, checked: a mask over the catalog, or (Milvus) the parsed conditions."""
        if served.local:
            return served.filter.mask(filters)
        self.remote.expression(served.version, filters, lambda c: served.filter.text(c)[1])  # BadQuery if not
        return parse_filters(filters) or None

    def _rank(self, query_emb: np.ndarray, what: str, k: int, within_category, rerank_column,
              rerank_weight, allowed, served: Served, collapse: bool = False) -> list[pd.DataFrame]:
        try:
            self.metric.check(query_emb, what)
        except HarnessError as exc:
            raise BadQuery(str(exc)) from None
        return [self._query_table(served, emb[None], [1.0], k, within_category, rerank_column, rerank_weight,
                                  allowed, bool(collapse)) for emb in query_emb]


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
