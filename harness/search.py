"""k-nearest-neighbour search for every Distance, exact or approximate, in bounded memory.

    index = build_index(ref_emb, metric, index="exact")   # or "ivf", "hnsw"
    distances, indices = index.search(query_emb, k)        # (Q, k) each, nearest first

    grouped = GroupedIndex(ref_emb, metric, groups=labels) # one index per label, built on demand
    distances, indices = grouped.search(query_emb, k, query_groups=query_labels)

Exact search computes distance blocks with the metric's own kernel (BLAS or SIMD) and keeps the k
smallest per query, ties broken by catalog position; approximate indexes are FAISS's. An index class
registers itself under its `name` (`search.index=<name>`); its constructor's keyword arguments are
the `search.params` it accepts, and any other key is refused.
"""
from __future__ import annotations

import inspect

import faiss
import numpy as np
import torch

from harness.errors import HarnessError
from harness.metrics.distances import Distance, as_matrix
from harness.metrics.retrieval import order_key

CHUNK_BYTES = 256 << 20  # distance block held at once


def top_k(distances: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise k smallest of a (Q, N) block, sorted by (distance, column)."""
    k = min(k, distances.shape[1])
    if 4 * k >= distances.shape[1]:  # deep rankings (evaluators): a full stable sort beats select + lexsort
        # Sorting (distance, column) packed in one uint64 is a stable argsort at half the cost. numpy, not
        # torch.sort: torch's threads would wait here for OpenBLAS's, still spinning after the GEMM.
        keys = order_key(distances).astype(np.uint64) << np.uint64(32)
        keys |= np.arange(distances.shape[1], dtype=np.uint64)
        part = (np.sort(keys, axis=1)[:, :k] & np.uint64(0xFFFFFFFF)).astype(np.int64)
        return np.take_along_axis(distances, part, axis=1), part
    # torch.topk is a parallel partial selection, far faster than np.argpartition on wide blocks. It
    # picks any of the items tied at the k-th place; one more than k shows which rows have such a tie,
    # and those rows are redone by the rule (common with chebyshev on ReLU6 features).
    dist, part = torch.topk(torch.from_numpy(distances), k + 1, dim=1, largest=False, sorted=False)
    dist, part = dist.numpy(), part.numpy()
    order = np.lexsort((part, dist), axis=1)
    dist, part = np.take_along_axis(dist, order, axis=1), np.take_along_axis(part, order, axis=1)
    for q in np.flatnonzero(dist[:, k] == dist[:, k - 1]):
        row = distances[q]
        cols = np.flatnonzero(row <= dist[q, k - 1])
        cols = cols[np.lexsort((cols, row[cols]))][:k]
        part[q, :k], dist[q, :k] = cols, row[cols]
    return dist[:, :k], part[:, :k]


class Index:
    name = ""                     # search.index=<name>
    faiss_metrics: tuple = ()     # approximate indexes: the FAISS metrics they serve; () = any Distance
    registry: dict[str, type["Index"]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            Index.registry[cls.name] = cls

    def __init__(self, ref_emb: np.ndarray, metric: Distance):
        self.metric = metric
        ref = as_matrix(ref_emb, "ref_emb")
        metric.check(ref, "ref_emb")
        self.dim = ref.shape[1]
        self.shift = metric.offset(ref) if len(ref) else None
        self.ref = self.prepare(self._centre(ref))

    def _centre(self, x: np.ndarray) -> np.ndarray:
        return x - self.shift if self.shift is not None else x

    def prepare(self, ref_emb: np.ndarray) -> np.ndarray:
        return self.metric.transform(ref_emb)

    def search(self, query_emb, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, indices), each (Q, min(k, N)), nearest first; indices are catalog positions."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise HarnessError(f"k must be a whole number >= 1, got {k!r}.")
        query = as_matrix(query_emb, "query_emb", self.dim)
        self.metric.check(query, "query_emb")
        query = self.metric.transform(self._centre(query))
        k_eff = min(int(k), len(self.ref))
        if len(query) == 0 or k_eff == 0:
            return np.empty((len(query), k_eff), np.float32), np.empty((len(query), k_eff), np.int64)
        d, i = self._search(query, k_eff)
        return d.astype(np.float32, copy=False), i.astype(np.int64, copy=False)

    def _search(self, query: np.ndarray, k: int):
        raise NotImplementedError


class ExactIndex(Index):
    """Every catalog vector compared with each query."""
    name = "exact"

    def __init__(self, ref_emb, metric):
        super().__init__(ref_emb, metric)

    def prepare(self, ref_emb):
        return self.metric.prepare_ref(ref_emb)

    def _search(self, query, k):
        step = max(1, CHUNK_BYTES // (4 * len(self.ref)))
        out_d, out_i = [], []
        for s in range(0, len(query), step):
            q = query[s:s + step]
            scores, idx = top_k(self.metric.scores(q, self.ref), k)
            out_d.append(self.metric.to_distance(scores, q))
            out_i.append(idx)
        return np.concatenate(out_d), np.concatenate(out_i)


class IVFIndex(Index):
    """Inverted lists over k-means cells, scanning `nprobe` of `nlist` cells per query.

    The lists hold compressed codes (`codec`: FAISS's SQ8 by default, 4x smaller than float32), so a
    scan reads little memory; the `rerank` × k best candidates are then re-ranked with the exact
    distance, so returned distances are exact and only the candidate set is approximate.
    """
    name = "ivf"
    faiss_metrics = (faiss.METRIC_L2, faiss.METRIC_INNER_PRODUCT)

    def __init__(self, ref_emb, metric, nlist: int | None = None, nprobe: int = 8, codec: str = "SQ8",
                 rerank: int = 4, train_size: int = 100_000, seed: int = 0):
        super().__init__(ref_emb, metric)
        n, d = self.ref.shape
        nlist = nlist or max(1, min(4096, int(4 * np.sqrt(n))))
        self.rerank = max(1, int(rerank))
        try:
            self.faiss = faiss.index_factory(d, f"IVF{nlist},{codec}", metric.faiss_metric)
        except RuntimeError:
            raise HarnessError(f"search.params.codec={codec!r} is not a FAISS codec (SQ8, SQ4, Flat, PQ<m>, ...).") from None
        rng = np.random.default_rng(seed)
        self.faiss.train(self.ref[rng.choice(n, min(n, max(train_size, 39 * nlist)), replace=False)])
        self.faiss.add(self.ref)
        self.nprobe = nprobe

    @property
    def nprobe(self) -> int:
        return faiss.extract_index_ivf(self.faiss).nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        faiss.extract_index_ivf(self.faiss).nprobe = min(int(value), faiss.extract_index_ivf(self.faiss).nlist)

    def _search(self, query, k):
        _, candidates = self.faiss.search(query, min(len(self.ref), k * self.rerank))
        # Exact distances for the candidates (-1: fewer found), then the k best of them; in query blocks,
        # because deep rankings (the ranking evaluator) ask for thousands of candidates per query.
        step = max(1, CHUNK_BYTES // (4 * candidates.shape[1] * self.ref.shape[1]))
        scores = np.empty(candidates.shape, np.float32)
        for s in range(0, len(query), step):
            block = candidates[s:s + step]
            picked = self.ref[np.where(block >= 0, block, 0)]  # (q, C, D), transformed already: for the
            # metrics IVF serves, transform is idempotent, so prepare_ref gives the exact index's catalog side
            prepared = self.metric.prepare_ref(picked.reshape(-1, picked.shape[2])).reshape(*picked.shape[:2], -1)
            scores[s:s + step] = [self.metric.scores(q[None], c)[0] for q, c in zip(query[s:s + step], prepared)]
        scores[candidates < 0] = np.inf
        best, order = top_k(scores, k)
        return self.metric.to_distance(best, query), np.take_along_axis(candidates, order, axis=1)


class HNSWIndex(Index):
    """Hierarchical navigable small-world graph."""
    name = "hnsw"
    faiss_metrics = (faiss.METRIC_L2, faiss.METRIC_INNER_PRODUCT)

    def __init__(self, ref_emb, metric, hnsw_m: int = 32, ef_construction: int = 80, ef_search: int = 64):
        super().__init__(ref_emb, metric)
        self.faiss = faiss.IndexHNSWFlat(self.ref.shape[1], hnsw_m, metric.faiss_metric)
        self.faiss.hnsw.efConstruction = ef_construction
        self.faiss.add(self.ref)
        self.faiss.hnsw.efSearch = ef_search

    def _search(self, query, k):
        raw, idx = self.faiss.search(query, k)
        return np.where(idx >= 0, self.metric.from_faiss(raw), np.inf), idx  # FAISS pads with -1 and a sentinel


def index_class(index: str, metric: Distance, params: dict) -> type[Index]:
    """The index class for `search.index`, after checking its parameters and the metric."""
    if index not in Index.registry:
        raise HarnessError(f"search.index={index!r}: choose one of {', '.join(Index.registry)}.")
    cls = Index.registry[index]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "ref_emb", "metric")]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise HarnessError(f"search.params: unknown key(s) {', '.join(unknown)} for search.index={index}; "
                           f"accepted: {', '.join(accepted) or 'none'}.")
    if cls.faiss_metrics and metric.faiss_metric not in cls.faiss_metrics:
        raise HarnessError(f"search.index={index} cannot compute the {metric!r} distance (FAISS serves "
                           f"euclidean, cosine and correlation); use search.index=exact.")
    return cls


def build_index(ref_emb, metric: Distance, index: str = "exact", **params) -> Index:
    return index_class(index, metric, params)(ref_emb, metric, **params)


class GroupedIndex:
    """Search the whole catalog, or only the catalog items of the query's group (the study's
    per-category index): one index per group, built on first use. The harness's evaluation and the
    served searcher both search through it."""

    def __init__(self, ref_emb, metric: Distance, groups=None, index: str = "exact", **params):
        self.ref = as_matrix(ref_emb, "ref_emb")
        index_class(index, metric, params)  # a bad setting fails here, not on the first query
        self.metric, self.kind, self.params = metric, index, params
        self.groups = None if groups is None else np.asarray(groups)
        if self.groups is not None and len(self.groups) != len(self.ref):
            raise HarnessError(f"groups has {len(self.groups)} entries for {len(self.ref)} catalog vectors.")
        self._indexes: dict = {}

    def _part(self, group):
        if group not in self._indexes:
            rows = np.arange(len(self.ref)) if group is None else np.flatnonzero(self.groups == group)
            built = build_index(self.ref[rows], self.metric, self.kind, **self.params) if len(rows) else None
            self._indexes[group] = (rows, built)
        return self._indexes[group]

    def search(self, query_emb, k: int, query_groups=None) -> tuple[np.ndarray, np.ndarray]:
        """(distances, indices), each (Q, k): positions in ref_emb, nearest first; -1 and inf where the
        query's group has fewer than k items."""
        query = as_matrix(query_emb, "query_emb", self.ref.shape[1])
        if query_groups is None:
            parts = [(np.arange(len(query)), None)]
        else:
            if self.groups is None:
                raise HarnessError("query_groups given, but the index was built without groups.")
            query_groups = np.asarray(query_groups)
            parts = [(np.flatnonzero(query_groups == g), g) for g in dict.fromkeys(query_groups.tolist())]
        distances = np.full((len(query), k), np.inf, dtype=np.float32)
        indices = np.full((len(query), k), -1, dtype=np.int64)
        for positions, group in parts:
            rows, index = self._part(group)
            if index is None:
                continue
            d, i = index.search(query[positions], k)
            distances[positions, : d.shape[1]] = d
            indices[positions, : i.shape[1]] = np.where(i >= 0, rows[np.maximum(i, 0)], -1)
        return distances, indices
