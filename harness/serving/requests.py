"""What one request may contain and cost: uploads decoded safely, counts checked, search options.

Network inputs are base64 strings or raw bytes, never file names; sizes are checked before anything
is read or decoded; `SearchOptions` is the one definition of what a request may set, shared by the
MLflow model, the page and the model's signature.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, fields
from pathlib import Path, PurePath

import numpy as np
from PIL import Image

from harness.data.images import BadImage, decode_image, read_bytes

MAX_UPLOAD_BYTES = 10 << 20
MAX_TEXT_CHARS = 1000


class BadQuery(BadImage):
    """A query the searcher cannot answer (not an image, an empty text, words for a model without a
    text tower): the API's 400 and the page's message."""


def decode_upload(value, scale=None) -> Image.Image:
    """An uploaded image → RGB image.

    Network inputs are base64 strings (a `data:` URL prefix is allowed) or raw bytes. A string is never
    taken for a file name: a client must not make the server read, or probe for, its files. In-process
    callers that want a file read pass a `pathlib.Path`. Sizes are checked before anything is read or
    decoded.
    """
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, np.ndarray):
        if value.dtype != np.uint8 or value.ndim not in (2, 3):
            raise BadImage("array images must be uint8 HxW or HxWxC")
        if value.nbytes > 4 * MAX_UPLOAD_BYTES:
            raise BadImage(f"array larger than {4 * MAX_UPLOAD_BYTES >> 20} MB")
        return Image.fromarray(value).convert("RGB")
    if isinstance(value, PurePath):
        data = _read_file(Path(value))
    elif isinstance(value, str):
        payload = value.split(",", 1)[-1] if value.startswith("data:") else value
        if len(payload) > 4 * -(-MAX_UPLOAD_BYTES // 3):  # base64 of more than MAX_UPLOAD_BYTES
            raise BadImage(f"file larger than {MAX_UPLOAD_BYTES >> 20} MB")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise BadImage("not base64-encoded image data") from None
    elif isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    else:
        raise BadImage(f"unsupported input type {type(value).__name__}")
    if len(data) > MAX_UPLOAD_BYTES:
        raise BadImage(f"file larger than {MAX_UPLOAD_BYTES >> 20} MB")
    return decode_image(data, scale)  # scale: the preprocessing's, as for catalog images


def _read_file(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_UPLOAD_BYTES:
            raise BadImage(f"file larger than {MAX_UPLOAD_BYTES >> 20} MB")
    except OSError as exc:
        raise BadImage(f"unreadable ({exc.strerror})") from None
    return read_bytes(path, MAX_UPLOAD_BYTES)


def json_text(value, max_chars: int, name: str, expected: str):
    """A request's JSON-valued field: a string is parsed (its length bounded first); anything else is
    returned as given, for the caller to check its shape."""
    if not isinstance(value, str):
        return value
    if len(value) > max_chars:
        size = f"{max_chars >> 20} MB" if max_chars >= 1 << 20 else f"{max_chars} characters"
        raise BadQuery(f"{name} longer than {size}")
    try:
        return json.loads(value)
    except ValueError:
        raise BadQuery(f"{name} must be {expected}") from None


def whole_number(value, name: str) -> int:
    """A request's count (k, rows) as an int: whole numbers only (2.0 is 2; True, 2.5 and "5" are not)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, float, np.floating)):
        raise BadQuery(f"{name} must be a whole number, got {value!r}")
    if isinstance(value, (float, np.floating)) and not float(value).is_integer():
        raise BadQuery(f"{name} must be a whole number, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class SearchOptions:
    """What one request may set (REST params, the page's controls), with its defaults: the one definition
    the MLflow model, the page and the model's signature share."""
    k: int = 5
    within_category: bool = False
    rerank_column: str = ""
    rerank_weight: float = 0.0
    filters: str = ""  # a JSON object (harness.serving.filters), e.g. {"category": "Footwear"}
    collapse_duplicates: bool = False  # one answer per near-duplicate group (the model's dedup groups)
    items: bool = False  # shop the look: one answer list per product the photo shows (Searcher.search_items)
    point: str = ""      # "x,y": only the item at that pixel of the photo (where the shopper clicked)

    @classmethod
    def parse(cls, searcher, params: dict | None = None) -> "SearchOptions":
        """A request's params, checked (k first: bounds before anything is decoded); None: the model's own."""
        params = params or {}
        k = searcher.check_k(params.get("k"))
        column = params.get("rerank_column") or ""
        if not isinstance(column, str):
            raise BadQuery("the business column must be a string")
        try:
            weight = float(params.get("rerank_weight") or 0.0)
        except (TypeError, ValueError):
            raise BadQuery(f"rerank_weight must be a number, got {params.get('rerank_weight')!r}") from None
        filters = params.get("filters") or ""
        searcher.filter.mask(filters)  # shape and columns checked with the other bounds, before any decoding
        if isinstance(filters, dict):
            filters = json.dumps(filters)
        collapse = params.get("collapse_duplicates")
        collapse = False if collapse is None else collapse
        if not isinstance(collapse, (bool, np.bool_)):
            raise BadQuery(f"collapse_duplicates must be true or false, got {collapse!r}")
        items = params.get("items")
        items = False if items is None else items
        if not isinstance(items, (bool, np.bool_)):
            raise BadQuery(f"items must be true or false, got {items!r}")
        point = params.get("point") or ""
        options = cls(k, bool(params.get("within_category", False)), column, weight, filters, bool(collapse),
                      bool(items), point)
        options.clicked  # a malformed point is refused with the other bounds
        return options

    @property
    def clicked(self) -> tuple[float, float] | None:
        """`point` as (x, y) pixels, or None."""
        if not self.point:
            return None
        parts = str(self.point).split(",") if isinstance(self.point, str) else []
        try:
            x, y = (float(v) for v in parts)
        except ValueError:
            x = y = float("nan")
        if not (np.isfinite(x) and np.isfinite(y) and x >= 0 and y >= 0):
            raise BadQuery(f"point must be 'x,y' (two pixel coordinates >= 0), got {str(self.point)[:40]!r}")
        return x, y

    def kwargs(self) -> dict:
        return {"k": self.k, "within_category": self.within_category, "rerank_column": self.rerank_column or None,
                "rerank_weight": self.rerank_weight, "filters": self.filters or None,
                "collapse_duplicates": self.collapse_duplicates}

    @classmethod
    def spec(cls) -> list[tuple[str, type, object]]:
        """(name, type, default) per option: what the served model's signature declares."""
        return [(f.name, {"int": int, "bool": bool, "str": str, "float": float}[f.type], f.default) for f in fields(cls)]
