"""Robust image decoding: every odd-but-valid file becomes an RGB PIL image, every broken one a BadImage."""
from __future__ import annotations

import hashlib
import io
import math
import os
import stat
import warnings
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class BadImage(Exception):
    """The file cannot be used as a catalog image; the message says why in a few words."""


def content_hash(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _to_8bit(img: Image.Image) -> Image.Image:
    # 16-bit and 32-bit integer/float greyscale: PIL's convert("L") clips instead of scaling.
    arr = np.asarray(img, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return Image.fromarray(((arr - lo) * scale).astype(np.uint8), mode="L")


Scale = Callable[[int, int], float]  # (width, height) -> the factor a preprocessing needs (<= 1: may shrink)
Box = tuple[float, float, float, float]  # (x_1, y_1, x_2, y_2): pixels of the full-size photo as displayed


def region_key(digest: str, box: Box | None) -> str:
    """What a region's features are stored under: the file's content hash, or (a box given) the hash of
    that and the box, so a photo cropped two ways, or re-annotated, is two entries of the store."""
    if box is None:
        return digest
    return content_hash(f"{digest}|{','.join(f'{v:g}' for v in box)}".encode())


def decode_image(data: bytes, scale: Scale | None = None, box: Box | None = None) -> Image.Image:
    """Decode bytes to an RGB image; raise BadImage for empty, truncated, non-image or bomb files.

    `scale`: what the preprocessing that follows needs of the image, as a factor of its size. A JPEG is
    then decoded with DCT scaling (1/2, 1/4 or 1/8, libjpeg's) to the smallest size that is still at
    least that factor of the original on both sides, never below; other formats decode in full. The
    size checks (bombs) see the file's full size either way.
    `box`: the image is cropped to it (clipped to the photo; a box outside it is a BadImage), and
    `scale` is asked about the box's size, since that is what the preprocessing then sees."""
    if not data:
        raise BadImage("empty file")
    try:
        with warnings.catch_warnings():
            # Treat PIL's size warning as an error too: a 90-180 Mpixel "photo" is a bomb for us.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)  # animated GIF/WebP/APNG: the first frame stands for the product
            full = img.size
            if scale is not None and img.format == "JPEG":
                # A preprocessing's needs are symmetric in width and height, so an EXIF rotation
                # still to come does not change the factor.
                region = (box[2] - box[0], box[3] - box[1]) if box is not None else img.size
                factor = min(1.0, float(scale(*region)))
                if factor < 0.5:  # DCT scaling halves at least
                    img.draft(None, (math.ceil(img.width * factor), math.ceil(img.height * factor)))
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise BadImage("not an image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"corrupt or truncated ({exc})") from None
    decoded = img.size
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not cost us a good picture
        pass
    if box is not None:
        if img.size != decoded:  # rotated a quarter turn: the displayed photo's sides swap
            full = full[::-1]
        img = _crop(img, box, img.width / full[0], img.height / full[1], full)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        img = _to_8bit(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels become white, the catalog's studio background.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def _crop(img: Image.Image, box: Box, sx: float, sy: float, full: tuple[int, int]) -> Image.Image:
    """`box` (full-size pixels) of an image decoded at (sx, sy) of its full size, clipped to the photo."""
    left, top = max(0, math.floor(box[0] * sx)), max(0, math.floor(box[1] * sy))
    right, bottom = min(img.width, math.ceil(box[2] * sx)), min(img.height, math.ceil(box[3] * sy))
    if right <= left or bottom <= top:
        raise BadImage(f"box ({', '.join(f'{v:g}' for v in box)}) is outside the {full[0]} x {full[1]} photo")
    return img.crop((left, top, right, bottom))


MAX_FILE_BYTES = 100 << 20  # no catalog photo is larger; a bigger "image" is not read


def _kind(mode: int) -> str | None:
    """Why a file of this mode is not read (None: a regular file)."""
    if stat.S_ISREG(mode):
        return None
    what = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device", stat.S_IFBLK: "a device",
            stat.S_IFDIR: "a folder"}.get(stat.S_IFMT(mode), "not a file")
    return f"not a regular file ({what})"


def read_bytes(path, limit: int = MAX_FILE_BYTES) -> bytes:
    """A regular file's bytes, at most `limit`. A FIFO, socket or device is refused without blocking:
    looked at before opening (a socket cannot be opened), opened non-blocking (a FIFO would wait for a
    writer), and checked again on the open descriptor (so nothing can be swapped in between)."""
    try:
        why = _kind(os.stat(path).st_mode)
        if why:
            raise BadImage(why)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise BadImage(f"unreadable ({exc.strerror})") from None
    try:
        why = _kind(os.fstat(fd).st_mode)
        if why:
            raise BadImage(why)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise BadImage(f"unreadable ({exc.strerror})") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise BadImage(f"file larger than {limit >> 20} MB")
    return data


def read_image(path: str, scale: Scale | None = None) -> tuple[Image.Image, str]:
    """Read a file, return (RGB image, content hash of its bytes); `scale`: see decode_image."""
    data = read_bytes(path)
    return decode_image(data, scale), content_hash(data)
