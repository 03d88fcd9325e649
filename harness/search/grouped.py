"""One index per group (the study's per-category index), or one for the whole catalog."""
from __future__ import annotations

import numpy as np

from harness.errors import HarnessError
from harness.metrics.distances import Distance, as_matrix
from harness.search.base import check_index
from harness.search.build import build_index
from harness.search.exact import ExactIndex


class GroupedIndex:
    """Search the whole catalog, or only the catalog items of the query's group (the study's
    per-category index): one index per group, built on first use. The harness's evaluation and the
    served searcher both search through it."""

    def __init__(self, ref_emb, metric: Distance, groups=None, index=None, whole=None, **params):
        """`whole`: the whole catalog's index when it is built already (a served structure, restored)."""
        self.ref = as_matrix(ref_emb, "ref_emb")
        index = index or ExactIndex
        check_index(index, metric, params)  # a bad setting fails here, not on the first query
        self.metric, self.kind, self.params = metric, index, params
        self.groups = None if groups is None else np.asarray(groups)
        if self.groups is not None and len(self.groups) != len(self.ref):
            raise HarnessError(f"groups has {len(self.groups)} entries for {len(self.ref)} catalog vectors.")
        self._indexes: dict = {} if whole is None else {None: (np.arange(len(self.ref)), whole)}

    def _part(self, group):
        if group not in self._indexes:
            rows = np.arange(len(self.ref)) if group is None else np.flatnonzero(self.groups == group)
            built = build_index(self.ref[rows], self.metric, self.kind, **self.params) if len(rows) else None
            self._indexes[group] = (rows, built)
        return self._indexes[group]

    def _filtered(self, query, k, group, allowed: np.ndarray):
        """The top k of the items of `group` that `allowed` keeps, exactly, whatever the configured index:
        a filter is a request's, and the k best among the matching items is what it asks for (an
        approximate structure would miss some, and one trained for each filter costs more than the scan).
        The whole catalog's index scores just those rows (its catalog side is prepared once)."""
        keep = allowed if group is None else allowed & (self.groups == group)
        _, whole = self._part(None)
        return whole.search_rows(query, k, np.flatnonzero(keep)) if whole is not None else None

    def search(self, query_emb, k: int, query_groups=None, allowed=None) -> tuple[np.ndarray, np.ndarray]:
        """(distances, indices), each (Q, k): positions in ref_emb, nearest first; -1 and inf where the
        query's group (or the items `allowed`, a boolean mask over ref_emb) has fewer than k items."""
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
        if allowed is not None:
            allowed = np.asarray(allowed, dtype=bool)
            if allowed.shape != (len(self.ref),):
                raise HarnessError(f"allowed has shape {allowed.shape} for {len(self.ref)} catalog vectors.")
        for positions, group in parts:
            if allowed is not None:
                found = self._filtered(query[positions], k, group, allowed)
                if found is not None:
                    distances[positions], indices[positions] = found
                continue
            rows, index = self._part(group)
            if index is None:
                continue
            d, i = index.search(query[positions], k)
            distances[positions, : d.shape[1]] = d
            indices[positions, : i.shape[1]] = np.where(i >= 0, rows[np.maximum(i, 0)], -1)
        return distances, indices
