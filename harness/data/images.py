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


def decode_image(data: bytes, scale: Scale | None = None) -> Image.Image:
    """Decode bytes to an RGB image; raise BadImage for empty, truncated, non-image or bomb files.

    `scale`: what the preprocessing that follows needs of the image, as a factor of its size. A JPEG is
    then decoded with DCT scaling (1/2, 1/4 or 1/8, libjpeg's) to the smallest size that is still at
    least that factor of the original on both sides, never below; other formats decode in full. The
    size checks (bombs) see the file's full size either way."""
    if not data:
        raise BadImage("empty file")
    try:
        with warnings.catch_warnings():
            # Treat PIL's size warning as an error too: a 90-180 Mpixel "photo" is a bomb for us.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)  # animated GIF/WebP/APNG: the first frame stands for the product
            if scale is not None and img.format == "JPEG":
                factor = min(1.0, float(scale(*img.size)))
                if factor < 0.5:  # DCT scaling halves at least
                    img.draft(None, (math.ceil(img.width * factor), math.ceil(img.height * factor)))
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise BadImage("not an image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"corrupt or truncated ({exc})") from None
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not cost us a good picture
        pass
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        img = _to_8bit(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels become white, the catalog's studio background.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


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
