"""k-nearest-neighbour search for every Distance, exact or approximate, in bounded memory.

    index = build_index(ref_emb, metric, index="exact")   # or "ivf", "hnsw"
    distances, indices = index.search(query_emb, k)        # (Q, k) each, nearest first

Exact search computes distance blocks with the metric's own kernel (BLAS or SIMD) and keeps the k
smallest per query, ties broken by catalog position; approximate indexes are FAISS's.
"""
from __future__ import annotations

import faiss
import numpy as np
import torch

from harness.errors import HarnessError
from harness.metrics.distances import Distance
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
    # torch.topk is a parallel partial selection: ~15x faster than np.argpartition on (1000, 100k). It
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
    def __init__(self, ref_emb: np.ndarray, metric: Distance):
        self.metric = metric
        self.ref = self.prepare(ref_emb)

    def prepare(self, ref_emb: np.ndarray) -> np.ndarray:
        return self.metric.transform(ref_emb)

    def __len__(self) -> int:
        return len(self.ref)

    def search(self, query_emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        query = self.metric.transform(query_emb)
        k_eff = min(k, len(self.ref))
        if len(query) == 0 or k_eff == 0:
            return np.empty((len(query), k_eff), np.float32), np.empty((len(query), k_eff), np.int64)
        d, i = self._search(query, k_eff)
        return d.astype(np.float32, copy=False), i.astype(np.int64, copy=False)

    def _search(self, query: np.ndarray, k: int):
        raise NotImplementedError


class _FaissIndex(Index):
    def _search(self, query, k):
        raw, idx = self.faiss.search(query, k)
        return np.where(idx >= 0, self.metric.from_faiss(raw), np.inf), idx  # FAISS pads with -1 and a sentinel


class ExactIndex(Index):
    def __init__(self, ref_emb, metric, **_):
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


def _ann_metric(metric: Distance, kind: str) -> int:
    # FAISS's IVF and HNSW are tuned for L2 and inner product; the others gain little from them.
    if metric.faiss_metric not in (faiss.METRIC_L2, faiss.METRIC_INNER_PRODUCT):
        raise HarnessError(f"search.index={kind} supports euclidean, cosine and correlation; "
                           f"use search.index=exact for {metric!r}.")
    return metric.faiss_metric


class IVFIndex(Index):
    """Inverted lists over k-means cells, scanning `nprobe` of `nlist` cells per query.

    The lists hold compressed codes (`codec`: FAISS's SQ8 by default, 4x smaller than float32), so a
    scan reads little memory; the `rerank` × k best candidates are then re-ranked with the exact
    distance, so returned distances are exact and only the candidate set is approximate.
    """

    def __init__(self, ref_emb, metric, nlist: int | None = None, nprobe: int = 8, codec: str = "SQ8",
                 rerank: int = 4, train_size: int = 100_000, seed: int = 0, **_):
        super().__init__(ref_emb, metric)
        n, d = self.ref.shape
        nlist = nlist or max(1, min(4096, int(4 * np.sqrt(n))))
        self.rerank = max(1, int(rerank))
        self.faiss = faiss.index_factory(d, f"IVF{nlist},{codec}", _ann_metric(metric, "ivf"))
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


class HNSWIndex(_FaissIndex):
    """Hierarchical navigable small-world graph."""

    def __init__(self, ref_emb, metric, hnsw_m: int = 32, ef_construction: int = 80,
                 ef_search: int = 64, **_):
        super().__init__(ref_emb, metric)
        self.faiss = faiss.IndexHNSWFlat(self.ref.shape[1], hnsw_m, _ann_metric(metric, "hnsw"))
        self.faiss.hnsw.efConstruction = ef_construction
        self.faiss.add(self.ref)
        self.faiss.hnsw.efSearch = ef_search


INDEXES = {"exact": ExactIndex, "ivf": IVFIndex, "hnsw": HNSWIndex}


def build_index(ref_emb: np.ndarray, metric: Distance, index: str = "exact", **params) -> Index:
    if index not in INDEXES:
        raise HarnessError(f"search.index={index!r}: choose one of {', '.join(INDEXES)}.")
    return INDEXES[index](np.asarray(ref_emb), metric, **params)
