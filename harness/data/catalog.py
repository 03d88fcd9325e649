"""Catalogs: one table of images that every dataset, protocol, evaluator and the searcher share.

The column contract, checked once when a catalog is made (`Catalog.__post_init__`):

| column       | meaning                                                                    |
|--------------|----------------------------------------------------------------------------|
| `path`       | the image file (absolute); required, never empty                          |
| `item_id`    | unique id of the row; default: the path relative to the dataset root      |
| each level   | a label column named in `dataset.levels`, as text ("" where unknown)      |
| `product_id` | optional: the product a photo shows (several photos, one product); default: the item id |
| `split`      | optional: `catalog`, `query` or `both` (all-versus-all: a query searching every other image) — a dataset's own split, `protocol=predefined` |
| `distractor` | optional bool: non-fashion images that join every catalog, never queries  |
| `x_1, y_1, x_2, y_2` | optional: the product's box in pixels of the full-size photo (all four, or all empty); `preprocess.crop=bbox` crops to it |

Any other column (colour, margin, ...) rides along: the searcher shows it and can re-rank by it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness.errors import HarnessError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
SPLITS = ("catalog", "query", "both")
BOX_COLUMNS = ("x_1", "y_1", "x_2", "y_2")


@dataclass
class Catalog:
    items: pd.DataFrame
    levels: list[str]
    source: str = "catalog"   # named in every error about this table (a manifest file, a folder)
    root: str | None = None   # served results show paths relative to it

    def __post_init__(self):
        self.levels = list(self.levels)
        self._check()

    def __len__(self) -> int:
        return len(self.items)

    @classmethod
    def from_table(cls, table: pd.DataFrame, levels, source: str, root: str | Path | None = None) -> "Catalog":
        """Normalise a raw table (labels as text, default item ids), then check it."""
        items = table.copy()
        if "path" in items:
            items["path"] = items["path"].fillna("").astype(str)
        for level in levels:
            if level in items:
                items[level] = items[level].fillna("").astype(str)
        if "path" in items:
            default_ids = [_relative(p, root) for p in items["path"]]
            if "item_id" not in items:
                items["item_id"] = default_ids
            else:
                ids = items["item_id"].fillna("").astype(str)
                items["item_id"] = ids.where(ids != "", pd.Series(default_ids, index=items.index))
        return cls(items.reset_index(drop=True), list(levels), source, str(root) if root is not None else None)

    def _check(self) -> None:
        items, src = self.items, self.source
        if items.empty:
            raise HarnessError(f"Dataset {src} holds no images.")
        if "path" not in items:
            raise HarnessError(f"{src} has no 'path' column; columns: {', '.join(map(str, items.columns))}.")
        empty = items["path"].astype(str).str.len() == 0
        if empty.any():
            raise HarnessError(f"{src}: column 'path' is empty in {int(empty.sum())} row(s), "
                               f"first at row {int(np.flatnonzero(empty)[0])}.")
        missing = [lv for lv in self.levels if lv not in items]
        if missing:
            choices = ", ".join(str(c) for c in items.columns if c != "path")
            raise HarnessError(f"Unknown label column(s) {missing} in dataset.levels for {src}. "
                               f"Available columns: {choices}.")
        if "item_id" not in items:
            raise HarnessError(f"{src} has no 'item_id' column.")
        duplicated = items["item_id"].duplicated(keep=False)
        if duplicated.any():
            first = items.loc[duplicated, "item_id"].iloc[0]
            raise HarnessError(f"{src}: column 'item_id' must be unique (one row per photo); "
                               f"{int(duplicated.sum())} rows share an id, e.g. {first!r}.")
        if "split" in items:
            bad = ~items["split"].isin(SPLITS)
            if bad.any():
                raise HarnessError(f"{src}: column 'split' must be one of {', '.join(SPLITS)}; "
                                   f"found {items.loc[bad, 'split'].iloc[0]!r}.")
        if "distractor" in items and items["distractor"].dtype != bool:
            raise HarnessError(f"{src}: column 'distractor' must be true/false.")
        boxes(items, src)

    @property
    def is_distractor(self) -> np.ndarray:
        return self.items["distractor"].to_numpy(bool) if "distractor" in self.items else np.zeros(len(self), bool)

    def subset(self, rows) -> "Catalog":
        """The catalog restricted to `rows` (positions or a bool mask), renumbered from 0."""
        return Catalog(self.items.iloc[np.asarray(rows)].reset_index(drop=True) if np.asarray(rows).dtype != bool
                       else self.items[np.asarray(rows)].reset_index(drop=True), self.levels, self.source, self.root)

    def limit(self, n: int | None, seed: int) -> "Catalog":
        """A deterministic stratified subsample of n images (by the finest level), in catalog order."""
        if n is None or n >= len(self):
            return self
        return self.subset(np.sort(stratified_order(self.items[self.levels[-1]], seed)[:n]))


def _relative(path: str, root) -> str:
    if root is None:
        return path
    try:
        return Path(path).relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return path


def check_limit(limit) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise HarnessError(f"dataset.limit must be a whole number >= 1, or null; got {limit!r}.")
    return limit


def stratified_order(labels: pd.Series, seed: int) -> np.ndarray:
    """A seeded permutation in which every prefix holds each label in proportion to its size.

    Each item's key is (its shuffled rank within its label + jitter) / label size, so the first n
    items of the order are a stratified sample of n, for every n.
    """
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(labels))
    lab = labels.to_numpy()[shuffled]
    frame = pd.DataFrame({"label": lab})
    rank = frame.groupby("label", sort=False).cumcount().to_numpy()
    size = frame.groupby("label", sort=False)["label"].transform("size").to_numpy()
    key = (rank + rng.random(len(lab))) / size
    return shuffled[np.argsort(key, kind="stable")]


def read_table(root: str | Path) -> tuple[pd.DataFrame, str]:
    """(table, source): `manifest.csv` in root, or else a folder tree root/category/subcategory/*.jpg."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise HarnessError(f"Dataset root {root} does not exist or is not a folder (set dataset.root=DIR).")
    manifest = root / "manifest.csv"
    if manifest.exists():
        try:
            table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise HarnessError(f"{manifest} is not a readable CSV file ({str(exc).splitlines()[0]}).") from None
        if "path" in table:
            table["path"] = [str((root / p).resolve()) if p else "" for p in table["path"]]
        return table, str(manifest)
    rows = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            parts = path.relative_to(root).parts[:-1]
            rows.append({"path": str(path.resolve()),
                         "category": parts[0] if len(parts) > 0 else "",
                         "subcategory": parts[1] if len(parts) > 1 else (parts[0] if parts else "")})
    return pd.DataFrame(rows, columns=["path", "category", "subcategory"]), str(root)


class FolderOrManifest:
    """A product catalog on disk (`dataset=products`)."""

    def __init__(self, root: str, levels=("category", "subcategory"), limit: int | None = None,
                 seed: int = 0, distractors: str | None = None):
        self.root, self.levels, self.limit, self.seed = root, list(levels), check_limit(limit), seed
        self.distractors = distractors

    def load(self) -> Catalog:
        if self.root is None:
            raise HarnessError("dataset=products needs dataset.root=DIR (a folder with manifest.csv or "
                               "category/subcategory/*.jpg).")
        table, source = read_table(self.root)
        root = Path(self.root).expanduser().resolve()
        catalog = Catalog.from_table(table, self.levels, source, root).limit(self.limit, self.seed)
        if not self.distractors:
            return catalog
        # Non-fashion images join the catalog as distractors; protocols never make them queries.
        extra, extra_source = read_table(self.distractors)
        for lv in self.levels:
            extra[lv] = extra[lv].replace("", "distractor") if lv in extra else "distractor"
        distractors = Catalog.from_table(extra, self.levels, extra_source, Path(self.distractors).expanduser().resolve())
        items = pd.concat([catalog.items.assign(distractor=False),
                           distractors.items.assign(item_id="distractor/" + distractors.items["item_id"],
                                                    distractor=True)], ignore_index=True)
        return Catalog(items, catalog.levels, source, catalog.root)


def boxes(items: pd.DataFrame, source: str = "catalog") -> list | None:
    """Each row's box (x_1, y_1, x_2, y_2) as floats, or None for a row without one; None when the
    table has no box columns. A partial, non-numeric or empty box stops with one line naming its row."""
    present = [c for c in BOX_COLUMNS if c in items]
    if not present:
        return None
    if len(present) < len(BOX_COLUMNS):
        raise HarnessError(f"{source}: a box needs all of {', '.join(BOX_COLUMNS)}; "
                           f"only {', '.join(present)} given.")
    raw = items[list(BOX_COLUMNS)]
    # missing (a row of a table joined to one without boxes) is empty, whatever the column's dtype
    text = raw.astype(object).where(raw.notna(), "").astype(str).apply(lambda col: col.str.strip())
    given = text != ""
    values = pd.DataFrame({c: pd.to_numeric(text[c].where(given[c]), errors="coerce") for c in BOX_COLUMNS})
    some, every = given.any(axis=1), given.all(axis=1)
    bad = (some & ~every) | (every & (values.isna().any(axis=1) | ~np.isfinite(values.fillna(0)).all(axis=1)))
    bad |= every & ~bad & ((values["x_2"] <= values["x_1"]) | (values["y_2"] <= values["y_1"]))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise HarnessError(f"{source}: row {row} has the box ({', '.join(text.iloc[row])}); a box is four numbers "
                           "x_1 < x_2, y_1 < y_2 (pixels), or four empty fields.")
    return [tuple(float(v) for v in r) if ok else None
            for r, ok in zip(values.itertuples(index=False), every.to_numpy())]


def product_ids(items: pd.DataFrame) -> pd.Series:
    """Each row's product: the `product_id` column where given (and not empty), else the item id."""
    ids = items["item_id"].astype(str)
    if "product_id" not in items:
        return ids
    given = items["product_id"].fillna("").astype(str)
    return given.where(given != "", ids)
