"""k-nearest-neighbour search: `base` (the Index contract, top-k, checks), one module per index."""
from harness.search.base import CHUNK_BYTES, Index, check_index, top_k
from harness.search.build import build_index
from harness.search.exact import ExactIndex
from harness.search.grouped import GroupedIndex

__all__ = ["CHUNK_BYTES", "ExactIndex", "GroupedIndex", "Index", "build_index", "check_index", "top_k"]
