import numpy as np
from PIL import Image

from harness.preprocess import CenterCrop, Pad, Resize, Roi, foreground_box


def product(size=(60, 120), box=(20, 70, 40, 100), colour=(200, 0, 0)):
    img = Image.new("RGB", size, (250, 250, 250))
    img.paste(colour, box)
    return img


def test_every_preprocess_outputs_a_square_of_the_configured_size():
    for pre in (Resize(32), Pad(32), CenterCrop(32), Roi(32)):
        assert pre(product()).size == (32, 32)


def test_pad_keeps_aspect_ratio_with_background_colour():
    out = np.asarray(Pad(120)(product()))
    assert tuple(out[60, 5]) == (250, 250, 250)   # side padding is background
    assert tuple(out[85, 60]) == (200, 0, 0)      # product where it was


def test_roi_trims_background_around_product():
    assert foreground_box(product(), margin=0) == (20, 70, 40, 100)
    out = np.asarray(Roi(30, margin=0)(product()))
    red = (out[..., 0] > 150) & (out[..., 1] < 60)
    assert red.mean() > 0.6  # the product now fills the frame (2:3 box padded to a square)
