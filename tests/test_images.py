"""Odd-but-valid files decode to correct RGB; broken ones raise BadImage with a reason."""
import io

import numpy as np
import pytest
from PIL import Image

from harness.data.images import BadImage, decode_image


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_cmyk_jpeg_becomes_rgb():
    out = decode_image(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"))  # pure red ink mix
    assert out.mode == "RGB" and out.getpixel((4, 4))[0] > 200 and out.getpixel((4, 4))[1] < 60


def test_16bit_greyscale_is_scaled_not_clipped():
    arr = np.tile(np.linspace(0, 65535, 16, dtype=np.uint16), (4, 1))
    out = np.asarray(decode_image(encode(Image.fromarray(arr), "PNG")))
    assert out.shape == (4, 16, 3) and out[0, 0, 0] == 0 and out[0, -1, 0] == 255 and 100 < out[0, 8, 0] < 160


def test_transparent_pixels_become_white_background():
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    img.putpixel((0, 0), (10, 200, 10, 255))
    out = decode_image(encode(img, "PNG"))
    assert out.getpixel((3, 3)) == (255, 255, 255) and out.getpixel((0, 0)) == (10, 200, 10)
    pal = img.convert("P")  # palette with a transparent index
    assert decode_image(encode(pal, "PNG", transparency=pal.getpixel((3, 3)))).getpixel((3, 3)) == (255, 255, 255)


def test_grayscale_and_tiny():
    out = decode_image(encode(Image.new("L", (1, 1), 77), "PNG"))
    assert out.mode == "RGB" and out.size == (1, 1) and out.getpixel((0, 0)) == (77, 77, 77)


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (20, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    assert decode_image(encode(img, "JPEG", exif=exif.tobytes())).size == (10, 20)


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (6, 6), c) for c in [(255, 0, 0), (0, 0, 255)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(data).getpixel((2, 2))[0] > 200


@pytest.mark.parametrize("data,reason", [
    (b"", "empty"),
    (b"this is a text file, not a picture", "not an image"),
], ids=["empty", "non-image"])
def test_broken_files(data, reason):
    with pytest.raises(BadImage, match=reason):
        decode_image(data)


def test_truncated_jpeg():
    data = encode(Image.new("RGB", (64, 64), (0, 128, 0)), "JPEG")
    with pytest.raises(BadImage, match="truncated"):
        decode_image(data[: len(data) // 2])


def test_decompression_bomb():
    data = encode(Image.new("1", (10_000, 10_000)), "PNG")  # 100 Mpixel, a few kB on disk
    with pytest.raises(BadImage, match="bomb"):
        decode_image(data)
