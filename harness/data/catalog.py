"""Catalogs: a table of images (absolute `path`, `item_id`, one column per label level)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness.errors import HarnessError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}


@dataclass
class Catalog:
    items: pd.DataFrame  # one row per image; columns path, item_id, <levels>, optional split
    levels: list[str]

    def __len__(self) -> int:
        return len(self.items)


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


def finalize(items: pd.DataFrame, levels: list[str], limit: int | None, seed: int, source: str) -> Catalog:
    """Checks shared by every dataset: non-empty, known label columns, item ids, stratified limit."""
    levels = list(levels)
    if items.empty:
        raise HarnessError(f"Dataset {source} holds no images.")
    missing = [lv for lv in levels if lv not in items.columns]
    if missing:
        choices = ", ".join(c for c in items.columns if c not in ("path",))
        raise HarnessError(
            f"Unknown label column(s) {missing} in dataset.levels for {source}. Available columns: {choices}."
        )
    items = items.copy()
    for lv in levels:
        items[lv] = items[lv].fillna("").astype(str)
    if "item_id" not in items.columns or items["item_id"].isna().all():
        items["item_id"] = [Path(p).stem for p in items["path"]]
    items["item_id"] = items["item_id"].astype(str)
    if limit is not None and 0 < limit < len(items):
        order = stratified_order(items[levels[-1]], seed)[:limit]
        items = items.iloc[np.sort(order)]
    return Catalog(items.reset_index(drop=True), levels)


def read_table(root: str | Path) -> pd.DataFrame:
    """`manifest.csv` in root, or else a folder tree root/category/subcategory/*.jpg."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise HarnessError(f"Dataset root {root} does not exist or is not a folder (set dataset.root=DIR).")
    manifest = root / "manifest.csv"
    if manifest.exists():
        table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
        if "path" not in table.columns:
            raise HarnessError(f"{manifest} has no 'path' column; columns: {', '.join(table.columns)}.")
        table["path"] = [str((root / p).resolve()) for p in table["path"]]
        return table
    rows = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            parts = path.relative_to(root).parts[:-1]
            rows.append(
                {
                    "path": str(path.resolve()),
                    "category": parts[0] if len(parts) > 0 else "",
                    "subcategory": parts[1] if len(parts) > 1 else (parts[0] if parts else ""),
                }
            )
    return pd.DataFrame(rows, columns=["path", "category", "subcategory"])


class FolderOrManifest:
    """A product catalog on disk (`dataset=products`)."""

    def __init__(self, root: str, levels=("category", "subcategory"), limit: int | None = None,
                 seed: int = 0, distractors: str | None = None):
        self.root, self.levels, self.limit, self.seed = root, list(levels), limit, seed
        self.distractors = distractors

    def load(self) -> Catalog:
        if self.root is None:
            raise HarnessError("dataset=products needs dataset.root=DIR (a folder with manifest.csv or category/subcategory/*.jpg).")
        catalog = finalize(read_table(self.root), self.levels, self.limit, self.seed, str(self.root))
        if not self.distractors:
            return catalog
        # Non-fashion images join the catalog as distractors; the run never uses them as queries.
        extra = read_table(self.distractors)
        for lv in self.levels:
            extra[lv] = extra[lv].fillna("distractor") if lv in extra else "distractor"
        if "item_id" not in extra or extra["item_id"].isna().all() or (extra["item_id"] == "").all():
            extra["item_id"] = [f"distractor-{Path(p).stem}" for p in extra["path"]]
        items = pd.concat([catalog.items.assign(distractor=False), extra.assign(distractor=True)],
                          ignore_index=True)
        return Catalog(items, catalog.levels)
