"""Preprocessing: PIL RGB image in, size×size PIL RGB image out. Normalisation belongs to the backbone."""
from __future__ import annotations

import numpy as np
from PIL import Image

from harness.errors import HarnessError


def border_colour(img: Image.Image) -> tuple[int, int, int]:
    """The median colour of the outermost pixels: the studio background of a catalog photo."""
    arr = np.asarray(img)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    return tuple(int(v) for v in np.median(border, axis=0))


def foreground_box(img: Image.Image, tolerance: int = 24, margin: float = 0.02):
    """Bounding box (left, top, right, bottom) of the pixels that differ from the border colour."""
    arr = np.asarray(img).astype(np.int16)
    bg = np.array(border_colour(img), dtype=np.int16)
    mask = np.abs(arr - bg).max(axis=2) > tolerance
    if not mask.any():
        return (0, 0, img.width, img.height)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    pad = int(round(margin * max(img.size)))
    return (max(int(cols[0]) - pad, 0), max(int(rows[0]) - pad, 0),
            min(int(cols[-1]) + 1 + pad, img.width), min(int(rows[-1]) + 1 + pad, img.height))


def pad_to_square(img: Image.Image, colour) -> Image.Image:
    side = max(img.size)
    canvas = Image.new("RGB", (side, side), colour)
    canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return canvas


RESAMPLING = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
              "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}


class Preprocess:
    """`size` and `interpolation` default to what the backbone was trained with (build_preprocess).
    `scaled_decode`: JPEGs are decoded at the smallest DCT scale that still gives this preprocessing
    at least `decode_gap` × `size` pixels where it needs them (`decode_scale`), never fewer (a gap of
    2 is Pillow's own `thumbnail` rule: closer to a full decode, slower).
    `crop`: `bbox` crops each catalog photo to its box first (the catalog's x_1, y_1, x_2, y_2 columns:
    In-shop's and OML's boxes); a photo without one, such as a shopper's upload, is used whole."""
    name = "base"
    CROPS = ("none", "bbox")

    def __init__(self, size: int = 224, interpolation: str = "bilinear", scaled_decode: bool = True,
                 decode_gap: float = 1.0, crop: str = "none"):
        if crop not in self.CROPS:
            raise HarnessError(f"preprocess.crop must be one of {', '.join(self.CROPS)}, got {crop!r}.")
        if interpolation not in RESAMPLING:
            raise HarnessError(f"preprocess.interpolation must be one of {', '.join(RESAMPLING)}, got {interpolation!r}.")
        if isinstance(decode_gap, bool) or not isinstance(decode_gap, (int, float)) or decode_gap < 1:
            raise HarnessError(f"preprocess.decode_gap must be a number >= 1, got {decode_gap!r}.")
        self.size, self.interpolation = int(size), interpolation
        self.resample = RESAMPLING[interpolation]
        self.scaled_decode, self.decode_gap = bool(scaled_decode), float(decode_gap)
        self.crop = crop

    def __call__(self, img: Image.Image) -> Image.Image:
        raise NotImplementedError

    def needs(self, width: int, height: int) -> float:
        """The factor of a width x height image this preprocessing needs to keep all its detail."""
        return 1.0

    def check(self) -> None:
        """What can be checked before any image is read (a model's weights); pipeline.build calls it."""

    def items(self, img: Image.Image) -> list[tuple[int, int, int, int]]:
        """The boxes (left, top, right, bottom) of the products a photo shows, largest or likeliest first:
        each is searched on its own (`Searcher.search_items`). Here: the whole photo, one product."""
        return [(0, 0, img.width, img.height)]

    @property
    def decode_scale(self):
        """What the decoder may shrink to (`harness.data.images.decode_image`), or None: decode in full."""
        if not self.scaled_decode or type(self).needs is Preprocess.needs:
            return None
        return lambda width, height: self.decode_gap * self.needs(width, height)

    def fingerprint(self) -> dict:
        out = {"preprocess": self.name,
               **{k: v for k, v in vars(self).items()
                  if k not in ("resample", "scaled_decode", "decode_gap", "crop") and not k.startswith("_")}}
        if self.crop != "none":  # every feature stored before crop became a setting was of the whole photo
            out["crop"] = self.crop
        if out["interpolation"] == "bilinear":
            del out["interpolation"]  # every feature stored before interpolation became a setting was bilinear
        if self.decode_scale is not None:  # large JPEGs decode to other pixels: their features are stored apart
            out["decode"] = "scaled" if self.decode_gap == 1 else f"scaled:{self.decode_gap:g}"
        return out


def build_preprocess(spec, backbone) -> "Preprocess":
    """The configured preprocessing, at the backbone's input size and interpolation unless set."""
    from harness.config import instantiate

    return instantiate(spec, size=spec.get("size") or backbone.input_size,
                       interpolation=spec.get("interpolation") or backbone.interpolation)


class Resize(Preprocess):
    """Stretch to size×size, as the study did."""
    name = "resize"

    def needs(self, width, height):
        return self.size / min(width, height)  # both sides stretched to size

    def __call__(self, img):
        return img.resize((self.size, self.size), self.resample)


class Pad(Preprocess):
    """Keep the aspect ratio: pad to a square with the background colour, then resize."""
    name = "pad"

    def needs(self, width, height):
        return self.size / max(width, height)  # the long side becomes size

    def __call__(self, img):
        return pad_to_square(img, border_colour(img)).resize((self.size, self.size), self.resample)


class CenterCrop(Preprocess):
    """ImageNet evaluation style: shorter side to size/crop_fraction, then the central size×size."""
    name = "center_crop"

    def __init__(self, size: int = 224, crop_fraction: float = 0.875, interpolation: str = "bilinear",
                 scaled_decode: bool = True, decode_gap: float = 1.0, crop: str = "none"):
        super().__init__(size, interpolation, scaled_decode, decode_gap, crop)
        self.crop_fraction = crop_fraction

    def needs(self, width, height):
        return round(self.size / self.crop_fraction) / min(width, height)  # the short side becomes size/crop

    def __call__(self, img):
        short = round(self.size / self.crop_fraction)
        scale = short / min(img.size)
        w, h = max(round(img.width * scale), self.size), max(round(img.height * scale), self.size)
        img = img.resize((w, h), self.resample)
        left, top = (w - self.size) // 2, (h - self.size) // 2
        return img.crop((left, top, left + self.size, top + self.size))


class Roi(Preprocess):
    """Trim the near-uniform background around the product, then pad to a square."""
    name = "roi"

    # The product's box is known only once decoded, and it may be a small part of the photo: decoded in full.

    def __init__(self, size: int = 224, tolerance: int = 24, margin: float = 0.02, interpolation: str = "bilinear",
                 scaled_decode: bool = True, decode_gap: float = 1.0, crop: str = "none"):
        super().__init__(size, interpolation, scaled_decode, decode_gap, crop)
        self.tolerance, self.margin = tolerance, margin

    def __call__(self, img):
        cropped = img.crop(foreground_box(img, self.tolerance, self.margin))
        return pad_to_square(cropped, border_colour(img)).resize((self.size, self.size), self.resample)
