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


# -- decoding at the scale the preprocessing needs (JPEG DCT scaling) -----------------------------

def shrink_to(size: int):
    from harness.preprocess import Resize

    return Resize(size=size).decode_scale


def test_scaled_decoding_keeps_the_robust_decoder():
    out = decode_image(encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG"), shrink_to(8))
    assert out.mode == "RGB" and out.size == (8, 8) and out.getpixel((4, 4))[0] > 200 and out.getpixel((4, 4))[1] < 60
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display: the factor holds for either orientation
    assert decode_image(encode(Image.new("RGB", (400, 200), (255, 0, 0)), "JPEG", exif=exif.tobytes()),
                        shrink_to(50)).size == (50, 100)
    data = encode(Image.new("RGB", (640, 640), (0, 128, 0)), "JPEG", progressive=True)
    assert decode_image(data, shrink_to(80)).size == (80, 80)
    with pytest.raises(BadImage, match="truncated"):
        decode_image(data[: len(data) // 2], shrink_to(80))
    for data, reason in ((b"", "empty"), (b"not a picture", "not an image")):
        with pytest.raises(BadImage, match=reason):
            decode_image(data, shrink_to(80))


def test_a_jpeg_bomb_is_refused_before_any_scaled_decoding():
    """The header's size is checked (Image.open), not the scaled size: 144 Mpixel claimed in 1 kB."""
    data = bytearray(encode(Image.new("RGB", (8, 8)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5: sof + 9] = (12_000).to_bytes(2, "big") * 2  # height, width
    with pytest.raises(BadImage, match="bomb"):
        decode_image(bytes(data), shrink_to(8))


@pytest.mark.parametrize("name", ["resize", "pad", "center_crop"])
def test_a_decoded_size_is_never_below_what_the_preprocessing_needs(name):
    from harness.preprocess import CenterCrop, Pad, Resize

    pre = {"resize": Resize, "pad": Pad, "center_crop": CenterCrop}[name](size=224)
    rng = np.random.default_rng(0)
    shrunk = 0
    for width, height in rng.integers(120, 2400, size=(12, 2)):
        width, height = int(width), int(height)
        out = decode_image(encode(Image.new("RGB", (width, height), (90, 30, 200)), "JPEG"), pre.decode_scale)
        needed = pre.needs(width, height)
        assert out.width >= min(width, width * needed) and out.height >= min(height, height * needed)
        assert pre(out).size == (224, 224)
        if out.size != (width, height):
            shrunk += 1
            # the smallest scale that still suffices: one more halving would go below
            assert out.width / 2 < width * needed or out.height / 2 < height * needed
    assert shrunk  # large photos do decode smaller


def test_scaled_decoding_is_in_the_fingerprint_and_can_be_turned_off(tmp_path):
    from harness.data.images import content_hash, read_image
    from harness.preprocess import Resize, Roi

    assert Resize(size=224).fingerprint()["decode"] == "scaled"
    assert "decode" not in Resize(size=224, scaled_decode=False).fingerprint()  # the features stored before
    assert "decode" not in Roi(size=224).fingerprint() and Roi(size=224).decode_scale is None
    path = tmp_path / "big.jpg"
    path.write_bytes(encode(Image.new("RGB", (1200, 1600), (10, 200, 30)), "JPEG"))
    scaled, digest = read_image(str(path), Resize(size=224).decode_scale)
    full, same = read_image(str(path), Resize(size=224, scaled_decode=False).decode_scale)
    assert scaled.size == (300, 400) and full.size == (1200, 1600)
    assert digest == same == content_hash(path.read_bytes())  # the hash is of the file's bytes


def test_a_decode_gap_keeps_more_pixels():
    from harness.preprocess import Resize

    data = encode(Image.new("RGB", (1080, 1440), (10, 200, 30)), "JPEG")
    assert decode_image(data, Resize(size=224).decode_scale).size == (270, 360)   # 1/4: the smallest >= 224
    assert decode_image(data, Resize(size=224, decode_gap=2).decode_scale).size == (540, 720)  # >= 448
    assert Resize(size=224, decode_gap=2).fingerprint()["decode"] == "scaled:2"
