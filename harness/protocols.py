"""Protocols decide which images are queries; the rest of the catalog is what they search.

`split(catalog)` returns the (possibly extended) catalog and a list of folds. A query never retrieves
itself: it is not in its fold's references, or (`self_match`, all-versus-all) it is and the search
leaves it out of its own ranking; distractors (`distractor` column) join
every fold's references and are never queries. A subclass only splits the products (`_split`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.data.catalog import Catalog, FolderOrManifest, stratified_order
from harness.errors import HarnessError


@dataclass
class Fold:
    query_idx: np.ndarray  # rows of catalog.items used as queries
    ref_idx: np.ndarray    # rows they search
    self_match: bool = False  # queries are among the references (all-versus-all): each skips itself


class Protocol:
    def split(self, catalog: Catalog) -> tuple[Catalog, list[Fold]]:
        is_distractor = catalog.is_distractor
        if not is_distractor.any():
            return self._split(catalog)
        products, folds = self._split(catalog.subset(~is_distractor))
        items = pd.concat([products.items.assign(distractor=False), catalog.items[is_distractor]],
                          ignore_index=True)
        extra = np.arange(len(products), len(items))
        return (Catalog(items, products.levels, products.source, products.root),
                [Fold(f.query_idx, np.concatenate([f.ref_idx, extra]), f.self_match) for f in folds])

    def _split(self, catalog: Catalog) -> tuple[Catalog, list[Fold]]:
        raise NotImplementedError


def restrict(catalog: Catalog, folds: list[Fold], keep: np.ndarray) -> tuple[Catalog, list[Fold]]:
    """The catalog without the rows where `keep` is False (unreadable images), folds renumbered."""
    if keep.all():
        return catalog, folds
    new_row = np.cumsum(keep) - 1
    return catalog.subset(keep), [Fold(new_row[f.query_idx[keep[f.query_idx]]], new_row[f.ref_idx[keep[f.ref_idx]]],
                                       f.self_match) for f in folds]


def _fold_from_mask(is_query: np.ndarray) -> Fold:
    return Fold(np.flatnonzero(is_query), np.flatnonzero(~is_query))


class Holdout(Protocol):
    """A seeded, stratified `query_fraction` of the catalog are queries."""

    def __init__(self, query_fraction: float = 0.1, seed: int = 0):
        if not 0 < query_fraction < 1:
            raise HarnessError(f"protocol.query_fraction must be in (0, 1), got {query_fraction}.")
        self.query_fraction, self.seed = query_fraction, seed

    def _split(self, catalog):
        n = len(catalog)
        n_query = max(1, int(round(self.query_fraction * n)))
        order = stratified_order(catalog.items[catalog.levels[-1]], self.seed)
        is_query = np.zeros(n, dtype=bool)
        is_query[order[:n_query]] = True
        return catalog, [_fold_from_mask(is_query)]


class Predefined(Protocol):
    """The dataset's own split column (Fashion-MNIST: train = catalog, test = queries; a benchmark's
    `both` rows are queries and references at once, all-versus-all)."""

    def _split(self, catalog):
        if "split" not in catalog.items.columns:
            raise HarnessError("protocol=predefined needs a dataset with a 'split' column (catalog/query/both); "
                               "use protocol=holdout, kfold or queries instead.")
        split = catalog.items["split"].to_numpy()
        both = split == "both"
        fold = Fold(np.flatnonzero((split == "query") | both), np.flatnonzero((split == "catalog") | both), bool(both.any()))
        if not len(fold.query_idx) or not len(fold.ref_idx):
            raise HarnessError(f"{catalog.source}: its split column names no {'query' if not len(fold.query_idx) else 'catalog'} image.")
        return catalog, [fold]


class Queries(Protocol):
    """A separate query set (`protocol.root`), laid out like the catalog, as the study's test folder.

    A query whose `product_id` names a catalog photo's product (its `item_id` where the catalog has no
    `product_id`) is scored by same-product Recall@k (`evaluator=product`). `labels`: a CSV `level,
    query_label, catalog_label` for a query set whose label vocabulary differs from the catalog's (a
    consumer set's "sneakers" for the shop's "Sports Shoes"); a level it names is mapped, a label it
    does not name is kept."""

    def __init__(self, root: str | None = None, labels: str | None = None):
        self.root, self.labels = root, labels

    def _split(self, catalog):
        if not self.root:
            raise HarnessError("protocol=queries needs protocol.root=DIR holding the query images.")
        queries = FolderOrManifest(self.root, catalog.levels).load()
        if self.labels:
            queries = Catalog(map_labels(queries.items, self.labels, catalog.levels), catalog.levels,
                              queries.source, queries.root)
        items = pd.concat([catalog.items.assign(split="catalog"),
                           queries.items.assign(split="query", item_id="query/" + queries.items["item_id"])],
                          ignore_index=True)
        return Predefined()._split(Catalog(items, catalog.levels, catalog.source, catalog.root))


def map_labels(items: pd.DataFrame, path: str, levels: list[str]) -> pd.DataFrame:
    """`items` with each level's labels mapped by the CSV at `path` (level, query_label, catalog_label)."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise HarnessError(f"protocol.labels={path} is not a readable CSV file ({str(exc).splitlines()[0]}).") from None
    columns = ["level", "query_label", "catalog_label"]
    if list(table.columns[:3]) != columns:
        raise HarnessError(f"protocol.labels={path} must have the columns {', '.join(columns)}; "
                           f"it has {', '.join(map(str, table.columns))}.")
    unknown = sorted(set(table["level"]) - set(levels))
    if unknown:
        raise HarnessError(f"protocol.labels={path} maps level {unknown[0]!r}, not one of dataset.levels ({', '.join(levels)}).")
    twice = table[table.duplicated(["level", "query_label"], keep=False)]
    if len(twice):
        raise HarnessError(f"protocol.labels={path} maps {twice['level'].iloc[0]} {twice['query_label'].iloc[0]!r} "
                           "more than once.")
    items = items.copy()
    for level, rows in table.groupby("level"):
        items[level] = items[level].replace(dict(zip(rows["query_label"], rows["catalog_label"])))
    return items


class KFold(Protocol):
    """Stratified, seeded k-fold: every image is a query once, against all other folds."""

    def __init__(self, folds: int = 10, seed: int = 0):
        if folds < 2:
            raise HarnessError(f"protocol.folds must be at least 2, got {folds}.")
        self.folds, self.seed = folds, seed

    def _split(self, catalog):
        if self.folds > len(catalog):
            raise HarnessError(f"protocol.folds={self.folds} is more than the {len(catalog)} images of the catalog.")
        order = stratified_order(catalog.items[catalog.levels[-1]], self.seed)
        assignment = np.empty(len(catalog), dtype=int)
        assignment[order] = np.arange(len(catalog)) % self.folds
        return catalog, [_fold_from_mask(assignment == f) for f in range(self.folds)]
