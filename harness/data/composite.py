"""Consumer-style query photos made from studio photos: the product cut out of its studio background and
pasted onto a cluttered photo at a random scale and place, part of it covered, its true box known.

`composite(product, scene, occluder, rng)` is one such photo; `experiments/composite_queries.py` writes
a query set of them (`protocol=queries`), each naming its catalog product, so same-product Recall@k
measures how well a preprocessing finds the product in clutter. Everything is drawn from the `rng`
given: the same seed, the same photos and the same ground truth.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from harness.preprocess import border_colour


def cutout(img: Image.Image, tolerance: int = 24) -> np.ndarray:
    """Boolean mask of a studio photo's product: what differs from the border colour, as one solid
    region (the largest connected one, its holes filled: a white shirt on white keeps its middle)."""
    arr = np.asarray(img).astype(np.int16)
    mask = (np.abs(arr - np.array(border_colour(img), np.int16)).max(axis=2) > tolerance).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return np.ones(mask.shape, bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    solid = (labels == largest).astype(np.uint8)
    outside = solid.copy()
    flood = np.zeros((solid.shape[0] + 2, solid.shape[1] + 2), np.uint8)
    for y, x in ((0, 0), (0, solid.shape[1] - 1), (solid.shape[0] - 1, 0), (solid.shape[0] - 1, solid.shape[1] - 1)):
        if outside[y, x] == 0:
            cv2.floodFill(outside, flood, (x, y), 2)
    return outside != 2  # everything the border's flood does not reach: the product and its holes


def cover(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`img` scaled to cover `size` (width, height) and centre-cropped to it."""
    scale = max(size[0] / img.width, size[1] / img.height)
    img = img.resize((max(size[0], round(img.width * scale)), max(size[1], round(img.height * scale))), Image.BILINEAR)
    left, top = (img.width - size[0]) // 2, (img.height - size[1]) // 2
    return img.crop((left, top, left + size[0], top + size[1]))


@dataclass
class Composite:
    image: Image.Image
    box: tuple[int, int, int, int]   # the pasted product's box (x_1, y_1, x_2, y_2), exact, in the image's pixels
    mask: np.ndarray                 # (height, width) bool: the product's pixels still visible
    occluded: float                  # share of the product's pixels covered


def composite(product: Image.Image, scene: Image.Image, occluder: Image.Image, rng: np.random.Generator,
              size: tuple[int, int] = (480, 640), scale: tuple[float, float] = (0.45, 0.85),
              occlusion: tuple[float, float] = (0.0, 0.3), tolerance: int = 24) -> Composite:
    """The product of a studio photo on `scene` (covered to `size`), its height a `scale` share of the
    photo's, anywhere it fits; a patch of `occluder` over a share `occlusion` of its box's width or height,
    from a random side."""
    width, height = size
    canvas = np.asarray(cover(scene.convert("RGB"), size)).copy()
    mask = cutout(product, tolerance)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    left, top, right, bottom = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
    piece, piece_mask = product.crop((left, top, right, bottom)), mask[top:bottom, left:right]
    factor = min(rng.uniform(*scale) * height / piece.height, 0.95 * width / piece.width)
    pw, ph = max(1, round(piece.width * factor)), max(1, round(piece.height * factor))
    piece = np.asarray(piece.convert("RGB").resize((pw, ph), Image.BILINEAR))
    piece_mask = cv2.resize(piece_mask.astype(np.uint8), (pw, ph), interpolation=cv2.INTER_NEAREST).astype(bool)
    x, y = int(rng.integers(0, width - pw + 1)), int(rng.integers(0, height - ph + 1))
    region = canvas[y:y + ph, x:x + pw]
    region[piece_mask] = piece[piece_mask]
    visible = np.zeros((height, width), bool)
    visible[y:y + ph, x:x + pw] = piece_mask
    total = int(visible.sum())
    share = rng.uniform(*occlusion)
    if share > 0:
        side = rng.integers(4)  # 0 left, 1 right, 2 top, 3 bottom
        ow, oh = (max(1, round(share * pw)), ph) if side < 2 else (pw, max(1, round(share * ph)))
        ox = x if side in (0, 2, 3) else x + pw - ow
        oy = y if side in (0, 1, 2) else y + ph - oh
        canvas[oy:oy + oh, ox:ox + ow] = np.asarray(cover(occluder.convert("RGB"), (ow, oh)))
        visible[oy:oy + oh, ox:ox + ow] = False
    occluded = 1 - visible.sum() / total if total else 0.0
    return Composite(Image.fromarray(canvas), (x, y, x + pw, y + ph), visible, float(occluded))
