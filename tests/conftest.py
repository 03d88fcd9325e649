"""Shared fixtures: the real Hydra config composed with overrides, and synthetic catalogs.

The synthetic catalog is coloured shapes on a white studio background: category = shape,
subcategory = colour, so retrieval quality is checkable (a red circle must find red circles).
"""
from __future__ import annotations

import atexit
import csv
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from harness import ROOT
from harness.tracking.models import load_served
from harness.config import compose_config

URI = "models:/fashion-visual-search@champion"

SHAPES = ["circle", "square", "triangle"]
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 220)}


def draw_product(shape: str, colour: tuple, rng: np.random.Generator, size=(72, 96)) -> Image.Image:
    img = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(img)
    w, h = size
    s = int(rng.integers(w // 3, w // 2))
    x, y = int(rng.integers(4, w - s - 4)), int(rng.integers(4, h - s - 4))
    jitter = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in colour)
    if shape == "circle":
        d.ellipse([x, y, x + s, y + s], fill=jitter)
    elif shape == "square":
        d.rectangle([x, y, x + s, y + s], fill=jitter)
    else:
        d.polygon([(x, y + s), (x + s, y + s), (x + s // 2, y)], fill=jitter)
    return img


def make_catalog(root: Path, per_class: int = 6, seed: int = 0, extra_columns: bool = True) -> Path:
    """root/images/*.jpg + manifest.csv: 3 shapes × 3 colours × per_class images."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for shape in SHAPES:
        for name, rgb in COLOURS.items():
            for i in range(per_class):
                rel = f"images/{shape}_{name}_{i}.jpg"
                draw_product(shape, rgb, rng).save(root / rel, quality=95)
                row = {"path": rel, "category": shape, "subcategory": f"{shape}-{name}",
                       "item_id": f"{shape}-{name}-{i}"}
                if extra_columns:
                    row["colour"] = name
                    row["margin"] = f"{rng.random():.3f}"
                rows.append(row)
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def free_port() -> int:
    """A loopback port nothing listens on (yet)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def catalog_dir(tmp_path) -> Path:
    return make_catalog(tmp_path / "catalog")


# Networks converted by OpenVINO are shared by the whole session (each would otherwise be converted again
# in every test's own folder); everything else a test writes stays under its tmp_path.
OPENVINO_CACHE = Path(tempfile.mkdtemp(prefix="harness-openvino-"))
# gone with the session: the networks of one full run fill 2.2 GB, and each session makes a new folder
atexit.register(shutil.rmtree, OPENVINO_CACHE, ignore_errors=True)
SHARED = (f"paths.openvino={OPENVINO_CACHE}",)


@pytest.fixture
def cfg_factory(tmp_path):
    """compose(*overrides): the project's real config, writing everything under tmp_path."""

    def _compose(*overrides: str):
        return compose_config(f"paths.root={tmp_path}", "extract.progress=false", "extract.num_workers=0",
                              *SHARED, *overrides)

    return _compose


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """One real run on a synthetic catalog; its model registered as the champion."""
    root = tmp_path_factory.mktemp("served")
    catalog = make_catalog(root / "catalog")
    subprocess.run([sys.executable, "-m", "harness", "dataset=products", f"dataset.root={catalog}",
                    f"paths.root={root}", "extract.progress=false", "extract.num_workers=0", *SHARED],
                   cwd=ROOT, check=True, capture_output=True, timeout=600)
    model, searcher, _ = load_served(compose_config(f"paths.root={root}"))
    return {"root": root, "catalog": catalog, "model": model, "searcher": searcher}


@pytest.fixture(scope="session")
def served_clip(tmp_path_factory):
    """A served OpenCLIP model (small architecture, random weights): it can search by words."""
    root = tmp_path_factory.mktemp("served_clip")
    catalog = make_catalog(root / "catalog")
    subprocess.run([sys.executable, "-m", "harness", "dataset=products", f"dataset.root={catalog}",
                    "backbone=open_clip", "backbone.arch=ViT-S-32", "backbone.pretrained=null", "backbone.weights=random",
                    f"paths.root={root}", "extract.progress=false", "extract.num_workers=0", *SHARED],
                   cwd=ROOT, check=True, capture_output=True, timeout=600)
    model, searcher, _ = load_served(compose_config(f"paths.root={root}"))
    return {"root": root, "catalog": catalog, "model": model, "searcher": searcher}
