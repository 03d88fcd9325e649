"""build_index: an index over a catalog's vectors, exact unless told otherwise, its settings checked first."""
from __future__ import annotations

from harness.metrics.distances import Distance
from harness.search.base import Index, check_index
from harness.search.exact import ExactIndex


def build_index(ref_emb, metric: Distance, index=None, **params) -> Index:
    """`index` (default ExactIndex; a class or a partial) over `ref_emb`, its settings checked first."""
    index = index or ExactIndex
    check_index(index, metric, params)
    return index(ref_emb, metric, **params)
