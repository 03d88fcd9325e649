"""preprocess=segment: the product's mask and box found in the photo, then only its pixels, on the
studio background, cropped to the box, padded to a square and resized (the study's future work:
"segment images combined with dynamic cropping so that only regions of interest are given as inputs").

`Segment` finds the mask with OpenCV's GrabCut, no weights needed: initialised with the ROI trim's
box (`harness.preprocess.foreground_box`) where nine tenths of the photo's border is one colour (a
studio photo), else (a shopper's photo) with the photo inset by `inset` on every side. GrabCut runs on a copy whose long side
is `work_size` pixels (its cost grows with the pixel count; a mask needs no more) with OpenCV's random
generator seeded, so a photo always gives the same mask. On a studio photo the pixels unlike the
backdrop join the mask (`keep_contrast`), and regions under MIN_ITEM of the photo leave it. A subclass finds the mask another way by
overriding `mask` (`harness.detect.Detected`: a pretrained detector's).

The photo is decoded in full (the box is known only after decoding, and may be a small part of it).
"""
from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from harness.errors import HarnessError
from harness.preprocess import Preprocess, border_colour, foreground_box, pad_to_square


MIN_ITEM = 0.02  # a product is at least this share of the photo's pixels: smaller specks are not items


def mask_box(mask: np.ndarray, margin: float = 0.0) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of a boolean mask's pixels, widened by `margin` of its longer side."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    height, width = mask.shape
    pad = int(round(margin * max(width, height)))
    return (max(int(cols[0]) - pad, 0), max(int(rows[0]) - pad, 0),
            min(int(cols[-1]) + 1 + pad, width), min(int(rows[-1]) + 1 + pad, height))


def without_specks(mask: np.ndarray) -> np.ndarray:
    """The mask's regions of at least MIN_ITEM of the photo (all of it where none is): a speck far from
    the product would stretch its box and push the product off centre."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = [n for n in range(1, count) if stats[n, cv2.CC_STAT_AREA] >= MIN_ITEM * mask.size]
    return np.isin(labels, keep) if keep else mask


class Segment(Preprocess):
    """GrabCut's mask of the product; the pixels outside it painted `background`, the rest cropped
    to the mask's box (plus `margin`), padded and resized."""
    name = "segment"

    def __init__(self, size: int = 224, iterations: int = 3, work_size: int = 160, tolerance: int = 24,
                 margin: float = 0.02, inset: float = 0.05, background=(255, 255, 255),
                 keep_contrast: bool = True, interpolation: str = "bilinear", scaled_decode: bool = True,
                 decode_gap: float = 1.0, crop: str = "none"):
        super().__init__(size, interpolation, scaled_decode, decode_gap, crop)
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise HarnessError(f"preprocess.iterations must be a whole number >= 1, got {iterations!r}.")
        if isinstance(work_size, bool) or not isinstance(work_size, int) or work_size < 32:
            raise HarnessError(f"preprocess.work_size must be a whole number >= 32, got {work_size!r}.")
        if not 0 <= inset < 0.5:
            raise HarnessError(f"preprocess.inset must be in [0, 0.5), got {inset!r}.")
        background = tuple(background)
        if len(background) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in background):
            raise HarnessError(f"preprocess.background must be three whole numbers 0-255 (RGB), got {list(background)!r}.")
        self.iterations, self.work_size, self.tolerance = iterations, work_size, tolerance
        if not isinstance(keep_contrast, bool):
            raise HarnessError(f"preprocess.keep_contrast must be true or false, got {keep_contrast!r}.")
        self.margin, self.inset, self.background = margin, inset, list(background)
        self.keep_contrast = keep_contrast

    def studio(self, img: Image.Image) -> bool:
        """Nine tenths of the photo's border within `tolerance` of one colour: a studio backdrop."""
        arr = np.asarray(img).astype(np.int16)
        border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
        return (np.abs(border - np.array(border_colour(img), np.int16)).max(axis=1) <= self.tolerance).mean() >= 0.9

    def start(self, img: Image.Image) -> tuple[int, int, int, int]:
        """GrabCut's starting rectangle: the ROI trim's box on a studio photo, else the photo inset by
        `inset` (a cluttered border trims nothing meaningful)."""
        if self.studio(img):
            box = foreground_box(img, self.tolerance, 0.0)
            if box != (0, 0, img.width, img.height):
                return box
        dx, dy = round(self.inset * img.width), round(self.inset * img.height)
        return (dx, dy, img.width - dx, img.height - dy)

    def mask(self, img: Image.Image) -> np.ndarray:
        """Boolean (height, width): the product's pixels."""
        scale = min(1.0, self.work_size / max(img.size))
        small = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR) \
            if scale < 1 else img
        left, top, right, bottom = (round(v * scale) for v in self.start(img))
        # GrabCut needs background outside its rectangle and at least a pixel inside.
        left, top = min(max(left, 1), small.width - 2), min(max(top, 1), small.height - 2)
        right, bottom = max(min(right, small.width - 1), left + 1), max(min(bottom, small.height - 1), top + 1)
        labels = np.zeros((small.height, small.width), np.uint8)
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(0)  # GrabCut's colour models start from k-means: the same photo, the same mask
        try:
            cv2.grabCut(cv2.cvtColor(np.asarray(small), cv2.COLOR_RGB2BGR), labels,
                        (left, top, right - left, bottom - top), bgd, fgd, self.iterations, cv2.GC_INIT_WITH_RECT)
        except cv2.error:  # a flat photo (one colour: no model to fit): the rectangle is the product
            labels[top:bottom, left:right] = cv2.GC_PR_FGD
        found = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
        if not found.any():
            found[top:bottom, left:right] = True
        if scale < 1:
            found = cv2.resize(found.astype(np.uint8), img.size, interpolation=cv2.INTER_NEAREST).astype(bool)
        if self.keep_contrast and self.studio(img):
            # On a plain backdrop a pixel unlike it is product (or the model wearing it): GrabCut alone
            # drops low-contrast parts and bare skin, and the catalog's features drift from the ROI
            # trim's (README "Segmenting").
            arr = np.asarray(img).astype(np.int16)
            found |= np.abs(arr - np.array(border_colour(img), np.int16)).max(axis=2) > self.tolerance
        return without_specks(found)

    def cut(self, img: Image.Image, mask: np.ndarray) -> Image.Image:
        """The masked product on the background colour, cropped to its box."""
        background = tuple(self.background)
        arr = np.asarray(img).copy()
        arr[~mask] = background
        box = mask_box(mask, self.margin) or (0, 0, img.width, img.height)
        return Image.fromarray(arr).crop(box)

    def items(self, img):
        """Each connected region of the mask covering at least MIN_ITEM of the photo, largest first."""
        mask = self.mask(img)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        order = sorted(range(1, count), key=lambda n: -stats[n, cv2.CC_STAT_AREA])
        boxes = [mask_box(labels == n, self.margin) for n in order
                 if stats[n, cv2.CC_STAT_AREA] >= MIN_ITEM * mask.size]
        return boxes or [(0, 0, img.width, img.height)]

    def __call__(self, img):
        product = self.cut(img, self.mask(img))
        return pad_to_square(product, tuple(self.background)).resize((self.size, self.size), self.resample)

