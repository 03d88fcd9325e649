"""Fashion-MNIST as a catalog: training images are the catalog, test images the queries.

The images are written once as PNG files under the cache folder so that every dataset goes through
the same decode → preprocess → extract path as a real product catalog. Fashion-MNIST negated Zalando's
product photos (step 6 of its conversion); `photo=True` (default) negates them back, so a product is dark
on a white studio background like a catalog photo, the look ImageNet networks and the background
trimming (`preprocess=roi|pad`) expect (the README has what it changes).
"""
from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from harness.data.catalog import Catalog, check_limit, stratified_order
from harness.errors import HarnessError

log = logging.getLogger(__name__)

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(name: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        for candidate in (d / name, d / f"{name}.gz", d / "FashionMNIST" / "raw" / name):
            if candidate.exists():
                return candidate
    return None


def load_arrays(split: str, search_dirs: list[Path], download_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) and labels from local idx files, else torchvision's download."""
    img_name, lab_name = FILES[split]
    img_path, lab_path = _find(img_name, search_dirs), _find(lab_name, search_dirs)
    if img_path and lab_path:
        return _read_idx(img_path), _read_idx(lab_path)
    from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST

    try:
        ds = TorchvisionFashionMNIST(str(download_dir), train=split == "train", download=True)
    except Exception as exc:  # offline: say where the files can come from
        raise HarnessError(
            "Fashion-MNIST is not available and could not be downloaded "
            f"({type(exc).__name__}). On Debian install it offline with "
            "`apt-get install dataset-fashion-mnist` (files in /usr/share/datasets/fashion-mnist), "
            "or set dataset.search_dirs to a folder holding the idx files."
        ) from None
    return ds.data.numpy(), ds.targets.numpy()


class FashionMNIST:
    """`dataset=fashion_mnist`: a stratified `catalog_size` from train, `query_size` from test."""

    def __init__(self, cache_dir: str, search_dirs=(), categories: dict | None = None,
                 catalog_size: int = 5000, query_size: int = 1000,
                 levels=("category", "subcategory"), limit: int | None = None, seed: int = 0,
                 photo: bool = True):
        self.cache_dir = Path(cache_dir)
        self.search_dirs = [Path(d) for d in search_dirs] + [self.cache_dir]
        self.categories = dict(categories or {})
        self.sizes = {"train": catalog_size, "test": query_size}
        self.levels, self.limit, self.seed, self.photo = list(levels), check_limit(limit), seed, photo

    def _split(self, split: str) -> pd.DataFrame:
        images, labels = load_arrays(split, self.search_dirs, self.cache_dir)
        subcategory = pd.Series([CLASSES[i] for i in labels])
        chosen = np.sort(stratified_order(subcategory, self.seed)[: self.sizes[split]])
        out_dir = self.cache_dir / ("photo" if self.photo else "png") / split
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        for i in chosen:
            path = out_dir / f"{i:05d}.png"
            if not path.exists():
                Image.fromarray(255 - images[i] if self.photo else images[i], mode="L").save(path)
            rows.append({"path": str(path), "item_id": f"{split}-{i:05d}",
                         "subcategory": CLASSES[labels[i]],
                         "category": self.categories.get(CLASSES[labels[i]], CLASSES[labels[i]]),
                         "split": "catalog" if split == "train" else "query"})
        return pd.DataFrame(rows)

    def load(self) -> Catalog:
        items = pd.concat([self._split("train"), self._split("test")], ignore_index=True)
        return Catalog.from_table(items, self.levels, "fashion_mnist").limit(self.limit, self.seed)
