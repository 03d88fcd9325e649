"""Colour and texture similarity between each query and its neighbours (the study's Tables 11-14).

Colour: RGB histogram (OpenCV calcHist) correlation, as compareHist's CORREL. Texture: uniform LBP
histogram (scikit-image) chi-squared distance, Σ (a−b)² / (a+b). Each image's histograms are
computed once and kept in the feature store under their own fingerprint, like any feature.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
from PIL import Image

from harness.data.images import BadImage, read_image
from harness.errors import HarnessError
from harness.evaluators.base import EvalContext, Evaluator
from harness.preprocess import foreground_box


# OpenCV and scikit-image are imported where an image is first described: once its histograms are in
# the store (every run after the first), a run needs neither, and OpenCV is slow to import.

def color_hist(rgb: np.ndarray, bins: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Normalised RGB histogram, of the pixels `mask` keeps where given."""
    import cv2

    mask = None if mask is None else mask.astype(np.uint8)
    h = cv2.calcHist([rgb], [0, 1, 2], mask, [bins] * 3, [0, 256] * 3).ravel()
    return h / max(h.sum(), 1)


def lbp_hist(rgb: np.ndarray, points: int, radius: float, mask: np.ndarray | None = None) -> np.ndarray:
    """Normalised uniform-LBP histogram, of the pixels `mask` keeps where given."""
    import cv2
    from skimage.feature import local_binary_pattern

    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    codes = local_binary_pattern(gray, points, radius, method="uniform").astype(np.int64)
    codes = codes[mask.astype(bool)] if mask is not None else codes.ravel()
    h = np.bincount(codes, minlength=points + 2).astype(np.float32)
    return h / max(h.sum(), 1)


def correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation of histograms (OpenCV's HISTCMP_CORREL)."""
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    return np.where(den > 0, (a * b).sum(-1) / np.where(den > 0, den, 1), 0.0)


def chi2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    s = a + b
    return np.where(s > 0, (a - b) ** 2 / np.where(s > 0, s, 1), 0.0).sum(-1)


class ColorTexture(Evaluator):
    lower_is_better = ("texture_chi2",)

    REGIONS = {"full": [("", 0)], "roi": [("_roi", 1)], "both": [("", 0), ("_roi", 1)],
               "segment": [("_segment", 2)], "all": [("", 0), ("_roi", 1), ("_segment", 2)]}

    def __init__(self, region: str = "full", bins: int = 8, lbp_points: int = 8, lbp_radius: float = 1.0,
                 size: int = 128, roi_tolerance: int = 24):
        if region not in self.REGIONS:
            raise ValueError(f"evaluator.region must be one of {', '.join(self.REGIONS)}, got {region!r}")
        self.region, self.bins, self.points, self.radius = region, bins, lbp_points, lbp_radius
        self.size, self.tolerance = size, roi_tolerance
        params = {k: v for k, v in vars(self).items() if k != "region"}
        if self.segmented:  # a third block: the histograms stored before it came had two
            params["segment"] = True
        self.fingerprint = "hist-" + hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
        self.n_color = bins ** 3
        self.block = self.n_color + lbp_points + 2  # one region's [colour, LBP]

    @property
    def segmented(self) -> bool:
        return any(suffix == "_segment" for suffix, _ in self.REGIONS[self.region])

    def _describe(self, path: str) -> np.ndarray:
        """[colour, LBP] of the whole image, of the ROI trim's crop, and (segment) of GrabCut's mask
        (`preprocess=segment`'s): only the product's pixels, the background left out of both."""
        img, _ = read_image(path)
        out = []
        for crop in (img, img.crop(foreground_box(img, self.tolerance))):
            rgb = np.asarray(crop.resize((self.size, self.size)), dtype=np.uint8)
            out += [color_hist(rgb, self.bins), lbp_hist(rgb, self.points, self.radius)]
        if self.segmented:
            from harness.segment import Segment, mask_box

            mask = Segment(tolerance=self.tolerance).mask(img)
            box = mask_box(mask) or (0, 0, img.width, img.height)
            rgb = np.asarray(img.crop(box).resize((self.size, self.size)), dtype=np.uint8)
            keep = np.asarray(Image.fromarray(mask[box[1]:box[3], box[0]:box[2]]).resize((self.size, self.size)))
            out += [color_hist(rgb, self.bins, keep), lbp_hist(rgb, self.points, self.radius, keep)]
        return np.concatenate(out).astype(np.float32)

    def histograms(self, ctx: EvalContext, rows: np.ndarray) -> dict[int, np.ndarray]:
        # Images are known by content (a hash) where the caller says so, else by path.
        column = "content_hash" if "content_hash" in ctx.items else "path"
        hashes = ctx.items[column].to_numpy()
        paths = ctx.items["path"].to_numpy()
        memory = ctx.cached(("histograms", self.fingerprint), dict)
        wanted = {int(r): hashes[r] for r in np.unique(rows[rows >= 0])}
        missing = [h for h in set(wanted.values()) if h not in memory]
        if missing and ctx.store is not None and column == "content_hash":
            memory.update(ctx.store.get(self.fingerprint, missing))
        new = {}
        for row, h in wanted.items():
            if h not in memory and h not in new:
                try:
                    new[h] = self._describe(paths[row])
                except BadImage:
                    continue
        if new and ctx.store is not None and column == "content_hash":
            ctx.store.put(self.fingerprint, list(new), np.stack(list(new.values())))
        memory.update(new)
        return {row: memory[h] for row, h in wanted.items() if h in memory}

    def evaluate(self, ctx):
        hists = self.histograms(ctx, np.concatenate([ctx.query_rows, ctx.indices.ravel()]))
        if any(int(r) not in hists for r in ctx.query_rows):
            raise HarnessError("evaluator=color_texture could not read some query images again.")
        dim = self.block
        q = np.stack([hists[r] for r in ctx.query_rows])                       # (Q, 2·dim)
        nb = np.zeros(ctx.indices.shape + (q.shape[1],), np.float32)           # (Q, k, 2·dim)
        found = ctx.indices >= 0
        nb[found] = np.stack([hists[r] for r in ctx.indices[found]])
        out = {}
        for suffix, block in self.REGIONS[self.region]:
            offset = block * dim
            c = slice(offset, offset + self.n_color)
            t = slice(offset + self.n_color, offset + dim)
            colour = correlation(q[:, None, c], nb[..., c])
            texture = chi2(q[:, None, t], nb[..., t])
            colour[~found], texture[~found] = np.nan, np.nan
            out[f"color_correlation{suffix}_mean"] = float(np.nanmean(colour))
            out[f"texture_chi2{suffix}_mean"] = float(np.nanmean(texture))
            for i in range(ctx.k):
                out[f"color_correlation{suffix}_rank_{i + 1}"] = float(np.nanmean(colour[:, i]))
                out[f"texture_chi2{suffix}_rank_{i + 1}"] = float(np.nanmean(texture[:, i]))
        return out
