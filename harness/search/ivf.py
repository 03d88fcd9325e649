"""search=ivf: FAISS inverted lists, candidates re-ranked with the exact distance."""
from __future__ import annotations

import faiss
import numpy as np

from harness.errors import HarnessError
from harness.search.base import Index, top_k

ADD_BLOCK = 65536  # catalog rows transformed at once while adding (bounded temporaries)


class IVFIndex(Index):
    """Inverted lists over k-means cells, scanning `nprobe` of `nlist` cells per query.

    The lists hold compressed codes (`codec`: FAISS's SQ8 by default, 4x smaller than float32), so a
    scan reads little memory; the `rerank` × k best candidates are then re-ranked with the exact
    distance, so returned distances are exact and only the candidate set is approximate.

    The lists name rows by `ids` (default: positions), so a served index keeps one structure across
    catalog versions: `move` removes the ids that left and adds the new rows in place (FAISS's
    remove_ids / add_with_ids), with the cells trained on the first version.
    """
    name = "ivf"
    faiss_metrics = (faiss.METRIC_L2, faiss.METRIC_INNER_PRODUCT)
    structure_settings = ("nlist", "codec", "train_size", "seed")  # what the persisted structure depends on

    def __init__(self, ref_emb, metric, nlist: int | None = None, nprobe: int = 8, codec: str = "SQ8",
                 rerank: int = 4, train_size: int = 100_000, seed: int = 0, ids: np.ndarray | None = None):
        super().__init__(ref_emb, metric)
        raw = np.asarray(ref_emb, dtype=np.float32)
        n, d = raw.shape
        nlist = nlist or max(1, min(4096, int(4 * np.sqrt(n))))
        try:
            self.faiss = faiss.index_factory(d, f"IVF{nlist},{codec}", metric.faiss_metric)
        except RuntimeError:
            raise HarnessError(f"search.index.codec={codec!r} is not a FAISS codec (SQ8, SQ4, Flat, PQ<m>, ...).") from None
        self._ids(ids, n)
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, min(n, max(train_size, 39 * nlist)), replace=False))
        self.faiss.train(self._transformed(raw[sample]))
        self._add(raw, np.arange(n))
        self.nprobe, self.rerank = nprobe, max(1, int(rerank))

    def _ids(self, ids, n: int) -> None:
        self.ids = None if ids is None else np.asarray(ids, dtype=np.int64)
        if self.ids is not None and (len(self.ids) != n or np.any(np.diff(self.ids) <= 0)):
            raise HarnessError(f"ids must be {n} ascending integers, one per catalog row.")

    def _transformed(self, raw: np.ndarray) -> np.ndarray:
        return self.metric.transform(self._centre(raw))

    def _add(self, raw: np.ndarray, rows: np.ndarray) -> None:
        for s in range(0, len(rows), ADD_BLOCK):
            block = rows[s:s + ADD_BLOCK]
            labels = block if self.ids is None else self.ids[block]
            self.faiss.add_with_ids(self._transformed(raw[block]), labels.astype(np.int64))

    # -- persistence (harness.index.structures) ------------------------------------------------
    def save(self, path) -> dict:
        """The structure to `path`; returns what `restore` needs besides it."""
        faiss.write_index(self.faiss, str(path))
        return {"shift": None if self.shift is None else self.shift.tolist()}

    @classmethod
    def restore(cls, ref_emb, metric, path, state: dict, ids: np.ndarray, nprobe: int = 8, rerank: int = 4,
                **_structure) -> "IVFIndex":
        """A saved structure over `ref_emb` (the rows it holds, by `ids`)."""
        self = cls.__new__(cls)
        shift = None if state.get("shift") is None else np.asarray(state["shift"], np.float32)
        Index.__init__(self, ref_emb, metric, shift=shift)
        self.faiss = faiss.read_index(str(path))
        self._ids(ids, len(self.ref))
        if self.faiss.ntotal != len(self.ref):
            raise HarnessError(f"the saved structure holds {self.faiss.ntotal} vectors for {len(self.ref)} rows.")
        self.nprobe, self.rerank = nprobe, max(1, int(rerank))
        return self

    @classmethod
    def move(cls, metric, path, state: dict, gone_ids: np.ndarray, new_emb: np.ndarray, new_ids: np.ndarray,
             out_path) -> dict:
        """The structure saved at `path`, in place: the rows `gone_ids` removed, `new_emb` (as searched)
        added under `new_ids` to the cells trained before; saved to `out_path`. Returns its state."""
        self = cls.__new__(cls)
        self.metric, self.ids = metric, None
        self.shift = None if state.get("shift") is None else np.asarray(state["shift"], np.float32)
        self.faiss = faiss.read_index(str(path))
        if len(gone_ids):
            self.faiss.remove_ids(faiss.IDSelectorBatch(np.asarray(gone_ids, dtype=np.int64)))
        new_emb = np.asarray(new_emb, dtype=np.float32)
        for s in range(0, len(new_emb), ADD_BLOCK):
            self.faiss.add_with_ids(self._transformed(new_emb[s:s + ADD_BLOCK]),
                                    np.asarray(new_ids[s:s + ADD_BLOCK], dtype=np.int64))
        return self.save(out_path)

    @property
    def nprobe(self) -> int:
        return faiss.extract_index_ivf(self.faiss).nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        faiss.extract_index_ivf(self.faiss).nprobe = min(int(value), faiss.extract_index_ivf(self.faiss).nlist)

    def _search(self, query, k):
        _, labels = self.faiss.search(query, min(len(self.ref), k * self.rerank))
        candidates = labels if self.ids is None else np.where(labels >= 0, np.searchsorted(self.ids, labels), -1)
        # Exact distances for the candidates (-1: fewer found), then the k best of them; in query blocks,
        # because deep rankings (the ranking evaluator) ask for thousands of candidates per query.
        step = max(1, self.chunk_bytes // (4 * candidates.shape[1] * self.ref.shape[1]))
        scores = np.empty(candidates.shape, np.float32)
        for s in range(0, len(query), step):
            block = candidates[s:s + step]
            picked = self.ref[np.where(block >= 0, block, 0)]  # (q, C, D+): the exact side of each candidate
            scores[s:s + step] = [self.metric.scores(q[None], c)[0] for q, c in zip(query[s:s + step], picked)]
        scores[candidates < 0] = np.inf
        best, order = top_k(scores, k)
        return self.metric.to_distance(best, query), np.take_along_axis(candidates, order, axis=1)
