"""k-nearest-neighbour search for every Distance, exact or approximate, in bounded memory.

    index = build_index(ref_emb, metric)                 # ExactIndex; or IVFIndex, HNSWIndex, a partial
    distances, indices = index.search(query_emb, k)      # (Q, k) each, nearest first

An index is one `Index` subclass in its own module and one `conf/search/<name>.yaml` whose `index`
is `_target_: <the class>` with `_partial_: true` (it needs the catalog's vectors, which come later):
its constructor's keyword arguments are the settings it accepts (`search.index.<key>`), and
`check_index` refuses any other key, and a metric FAISS cannot compute, before a run starts.
"""
from __future__ import annotations

import functools
import inspect

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
    """A catalog of `ref_emb` vectors under `metric`, searched by `search(query_emb, k)`."""
    name = ""                     # what messages call it: its conf/search/<name>.yaml
    faiss_metrics: tuple = ()     # approximate indexes: the FAISS metrics they serve; () = any Distance
    chunk_bytes = CHUNK_BYTES     # distance block held at once (a test makes it small)

    def __init__(self, ref_emb: np.ndarray, metric: Distance, shift: np.ndarray | None = None):
        self.metric = metric
        ref = as_matrix(ref_emb, "ref_emb")
        metric.check(ref, "ref_emb")
        self.dim = ref.shape[1]
        # `shift`: a restored structure's own (the catalog mean it was built on), so its vectors and the
        # exact side agree; translation-invariant distances do not depend on which mean it is
        self.shift = shift if shift is not None else metric.offset(ref) if len(ref) else None
        self.ref = self.prepare(self._centre(ref))  # the exact index's catalog side, whatever the index

    def _centre(self, x: np.ndarray) -> np.ndarray:
        return x - self.shift if self.shift is not None else x

    def prepare(self, ref_emb: np.ndarray) -> np.ndarray:
        return self.metric.prepare_ref(ref_emb)

    def _query(self, query_emb, k) -> tuple[np.ndarray, int]:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise HarnessError(f"k must be a whole number >= 1, got {k!r}.")
        query = as_matrix(query_emb, "query_emb", self.dim)
        self.metric.check(query, "query_emb")
        return self.metric.transform(self._centre(query)), int(k)

    def search_rows(self, query_emb, k: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top k among catalog `rows` (positions; None: all of them), whatever the index: a filtered
        request's answer (the k best of the matching items, never fewer because an approximate structure
        missed some). (distances, indices) as `search`, -1 / inf past the rows there are."""
        query, k = self._query(query_emb, k)
        return self._exact(query, k, rows)

    def _exact(self, query: np.ndarray, k: int, rows: np.ndarray | None = None):
        """Transformed queries against the exact side, in blocks of at most chunk_bytes of scores."""
        sub = self.ref if rows is None else self.ref[rows]
        distances = np.full((len(query), k), np.inf, np.float32)
        indices = np.full((len(query), k), -1, np.int64)
        if len(sub) == 0 or len(query) == 0:
            return distances, indices
        step = max(1, self.chunk_bytes // (4 * len(sub)))
        for s in range(0, len(query), step):
            q = query[s:s + step]
            scores, idx = top_k(self.metric.scores(q, sub), k)
            distances[s:s + step, :idx.shape[1]] = self.metric.to_distance(scores, q)
            indices[s:s + step, :idx.shape[1]] = idx if rows is None else np.asarray(rows)[idx]
        return distances, indices

    def search(self, query_emb, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, indices), each (Q, min(k, N)), nearest first; indices are catalog positions."""
        query, k = self._query(query_emb, k)
        k_eff = min(int(k), len(self.ref))
        if len(query) == 0 or k_eff == 0:
            return np.empty((len(query), k_eff), np.float32), np.empty((len(query), k_eff), np.int64)
        d, i = self._search(query, k_eff)
        return d.astype(np.float32, copy=False), i.astype(np.int64, copy=False)

    def _search(self, query: np.ndarray, k: int):
        raise NotImplementedError




def _target(factory) -> type[Index]:
    return factory.func if isinstance(factory, functools.partial) else factory


def check_index(factory, metric: Distance, params: dict | None = None) -> None:
    """`factory` (an Index class or a partial of one, as `search.index` builds it) accepts its settings
    and can compute `metric`: one line if not, before anything is read."""
    cls = _target(factory)
    if not (isinstance(cls, type) and issubclass(cls, Index)):
        raise HarnessError(f"search.index must build an harness.search.base.Index subclass; got {cls!r}.")
    given = {**(factory.keywords if isinstance(factory, functools.partial) else {}), **(params or {})}
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "ref_emb", "metric", "ids")]
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise HarnessError(f"search.index: unknown key(s) {', '.join(unknown)} for search={cls.name}; "
                           f"accepted: {', '.join(accepted) or 'none'}.")
    if cls.faiss_metrics and metric.faiss_metric not in cls.faiss_metrics:
        raise HarnessError(f"search={cls.name} cannot compute the {metric!r} distance (FAISS serves "
                           f"euclidean, cosine and correlation); use search=exact.")
