"""preprocess.crop=bbox: each catalog photo cropped to its box (x_1, y_1, x_2, y_2) before preprocessing.

The photos are painted so that the box holds one colour field and the rest another: a crop that
misses by a pixel, a box read in the wrong coordinates or after the wrong rotation shows in the pixels."""
from __future__ import annotations

import io
from contextlib import closing

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from harness.data.catalog import Catalog, boxes
from harness.data.images import BadImage, content_hash, decode_image, region_key
from harness.errors import HarnessError
from harness.preprocess import CenterCrop, Pad, Resize


def painted(size, box, inside=(200, 30, 40), outside=(20, 160, 220)) -> Image.Image:
    img = Image.new("RGB", size, outside)
    img.paste(Image.new("RGB", (box[2] - box[0], box[3] - box[1]), inside), box[:2])
    return img


def encode(img, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_a_box_crops_exactly_its_pixels():
    box = (7, 5, 19, 28)
    out = decode_image(encode(painted((40, 32), box)), box=box)
    assert out.size == (12, 23) and set(out.getdata()) == {(200, 30, 40)}
    assert decode_image(encode(painted((40, 32), box)), box=(0, 0, 500, 500)).size == (40, 32)  # clipped
    with pytest.raises(BadImage, match=r"box \(50, 0, 60, 10\) is outside the 40 x 32 photo"):
        decode_image(encode(painted((40, 32), box)), box=(50, 0, 60, 10))


def test_a_box_is_in_the_displayed_photo_s_pixels():
    """EXIF orientation 6 (displayed rotated 90° clockwise): the box names the upright photo's pixels."""
    upright_box = (4, 10, 16, 30)
    upright = painted((20, 40), upright_box)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the camera wrote: 40 x 20
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode_image(encode(stored, "JPEG", quality=100, exif=exif.tobytes()), box=upright_box)
    assert out.size == (12, 20)
    assert np.abs(np.asarray(out, int)[2:-2, 2:-2] - (200, 30, 40)).max() < 24  # JPEG's edges aside


@pytest.mark.parametrize("pre", [Resize(size=224), Pad(size=224), CenterCrop(size=224)], ids=lambda p: p.name)
def test_a_scaled_decode_of_a_box_is_never_below_what_the_preprocessing_needs(pre):
    """The DCT scale is chosen for the box, not the photo: a small box of a large photo decodes finer."""
    rng = np.random.default_rng(1)
    for _ in range(8):
        width, height = (int(v) for v in rng.integers(1200, 2400, size=2))
        bw, bh = (int(v) for v in rng.integers(250, 900, size=2))
        left, top = int(rng.integers(0, width - bw)), int(rng.integers(0, height - bh))
        box = (left, top, left + bw, top + bh)
        data = encode(painted((width, height), box), "JPEG", quality=95)
        out = decode_image(data, pre.decode_scale, box)
        needed = pre.needs(bw, bh)
        assert out.width >= min(bw, bw * needed) - 1 and out.height >= min(bh, bh * needed) - 1
        whole = decode_image(data, pre.decode_scale)
        assert whole.width <= out.width * width / bw + 8  # the photo alone would have decoded coarser or the same
        centre = np.asarray(out, int)[out.height // 4: -out.height // 4, out.width // 4: -out.width // 4]
        assert np.abs(centre - (200, 30, 40)).max() < 24


def test_boxes_are_checked_once_with_the_row_named():
    base = pd.DataFrame({"path": ["/a.jpg", "/b.jpg", "/c.jpg"], "category": ["x", "x", "y"]})
    table = base.assign(x_1=["1", "", "2"], y_1=["2", "", "3"], x_2=["10", "", "9"], y_2=["12", "", "8"])
    assert boxes(Catalog.from_table(table, ["category"], "m.csv").items) == [(1, 2, 10, 12), None, (2, 3, 9, 8)]
    assert boxes(base) is None
    joined = pd.concat([base.iloc[:1], table.iloc[2:]], ignore_index=True)  # a table without boxes joined: NaN
    assert boxes(joined) == [None, (2, 3, 9, 8)]
    assert boxes(joined.astype({"x_1": float})) == [None, (2, 3, 9, 8)]
    for change, message in [({"x_2": ["10", "", "1"]}, "row 2 has the box"),
                            ({"y_1": ["2", "5", "3"]}, "row 1 has the box"),
                            ({"x_1": ["a", "", "2"]}, "row 0 has the box")]:
        with pytest.raises(HarnessError, match=message) as err:
            Catalog.from_table(table.assign(**change), ["category"], "m.csv")
        assert "\n" not in str(err.value)
    with pytest.raises(HarnessError, match="a box needs all of x_1, y_1, x_2, y_2; only x_1, y_1 given"):
        Catalog.from_table(base.assign(x_1="1", y_1="2"), ["category"], "m.csv")


def test_crop_is_a_setting_of_every_preprocessing_and_in_the_fingerprint(cfg_factory):
    from harness.pipeline import build

    for name in ("resize", "pad", "center_crop", "roi"):
        pre = build(cfg_factory(f"preprocess={name}", "preprocess.crop=bbox", "backbone.weights=random")).preprocess
        assert pre.crop == "bbox" and pre.fingerprint()["crop"] == "bbox"
    assert "crop" not in Resize(size=224).fingerprint()  # the whole photos' features stored before
    with pytest.raises(HarnessError, match="preprocess.crop must be one of none, bbox, got 'box'"):
        build(cfg_factory("preprocess.crop=box", "backbone.weights=random"))
    assert region_key("abc", None) == "abc" and region_key("abc", (1, 2, 3, 4)) != region_key("abc", (1, 2, 3, 5))


def inshop(root, box):
    """Three In-shop photos (two products), every photo painted with its box; the listings exactly."""
    names = ["img/MEN/Denim/id_00000001/01_1_front.jpg", "img/MEN/Denim/id_00000001/02_2_side.jpg",
             "img/WOMEN/Dresses/id_00000002/01_1_front.jpg"]
    status = ["query", "gallery", "gallery"]
    for n, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        painted((64, 80), box[n], inside=(40 + 80 * n, 200, 30)).save(root / name, quality=100)
    (root / "Eval").mkdir()
    (root / "Anno").mkdir()
    (root / "Eval/list_eval_partition.txt").write_text(
        "3\nimage_name item_id evaluation_status\n" + "".join(
            f"{name} {name.split('/')[3]} {s}\n" for name, s in zip(names, status)))
    (root / "Anno/list_bbox_inshop.txt").write_text(
        "3\nimage_name clothes_type pose_type x_1 y_1 x_2 y_2\n" + "".join(
            f"{name} 1 1 {' '.join(map(str, b))}\n" for name, b in zip(names, box)))
    return names


def test_inshop_boxes_crop_the_photos_the_network_sees(tmp_path, cfg_factory):
    """crop=bbox on the originals embeds exactly what crop=none embeds of copies cut to the boxes."""
    from harness.pipeline import build

    box = [(8, 10, 40, 60), (20, 4, 60, 70), (0, 0, 30, 30)]
    names = inshop(tmp_path / "inshop", box)
    cut = tmp_path / "cut"
    for name, b in zip(names, box):
        (cut / name).parent.mkdir(parents=True, exist_ok=True)
        Image.open(tmp_path / "inshop" / name).crop(b).save(cut / name, "PNG")  # lossless: the same pixels
    common = ("dataset=inshop", "k=1", "backbone.weights=random", "backbone.input_size=64", "runtime=torch",
              "preprocess.scaled_decode=false")
    pipe = build(cfg_factory(*common, f"dataset.root={tmp_path / 'inshop'}", "preprocess.crop=bbox"))
    catalog, _ = pipe.data()
    with closing(pipe.open_store()) as store:
        cropped = pipe.extract(catalog, store)
    assert cropped.valid.all()
    hashes = [content_hash((tmp_path / "inshop" / n).read_bytes()) for n in names]
    by_id = catalog.items.set_index("path")
    assert [by_id.loc[str(tmp_path / "inshop" / n), "content_hash"] for n in names] == \
        [region_key(h, tuple(map(float, b))) for h, b in zip(hashes, box)]     # stored under the region
    pixels = [np.asarray(pipe.preprocess(decode_image((cut / n).read_bytes())), np.uint8) for n in names]
    reference = pipe.backbone.embed(torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous())
    order = [catalog.items["path"].tolist().index(str(tmp_path / "inshop" / n)) for n in names]
    scale = np.abs(reference).max()  # random weights: tiny features, so compared relative to their size
    assert np.abs(cropped.emb[order] - reference).max() <= 1e-4 * scale
    whole = build(cfg_factory(*common, f"dataset.root={tmp_path / 'inshop'}"))
    with closing(whole.open_store()) as store:  # the whole photos: other features, under other keys
        full = whole.extract(whole.data()[0], store)
    assert full.fingerprint != cropped.fingerprint and full.hashes[order[0]] == hashes[0]
    assert np.abs(full.emb - cropped.emb).max() > 0.05 * scale


def test_crop_bbox_on_a_catalog_without_boxes_is_one_line(catalog_dir, cfg_factory):
    from harness.run import run

    with pytest.raises(HarnessError, match=r"preprocess.crop=bbox crops to each photo's box, but .* has no x_1") as err:
        run(cfg_factory("dataset=products", f"dataset.root={catalog_dir}", "preprocess.crop=bbox",
                        "backbone.weights=random", "runtime=torch", "tracker=none"))
    assert "\n" not in str(err.value)


def test_a_moved_box_is_a_changed_item_of_the_served_index(cfg_factory, catalog_dir):
    """A manifest's boxes: `python -m harness.index update` embeds again exactly the photo whose box moved."""
    from harness.index.lifecycle import build as build_index
    from harness.index.lifecycle import open_index, update
    from harness.pipeline import build

    manifest = pd.read_csv(catalog_dir / "manifest.csv", dtype=str)
    manifest = manifest.assign(x_1="4", y_1="6", x_2="60", y_2="80")
    manifest.loc[1, ["x_1", "y_1", "x_2", "y_2"]] = ""            # a photo without a box is used whole
    manifest.to_csv(catalog_dir / "manifest.csv", index=False)
    cfg = cfg_factory("dataset=products", f"dataset.root={catalog_dir}", "backbone.weights=random",
                      "backbone.input_size=64", "runtime=torch", "tracker=none", "preprocess.crop=bbox")
    assert build_index(build(cfg))["embedded"] == len(manifest)
    moved = manifest["item_id"].iloc[2]
    manifest.loc[2, "x_2"] = "40"
    manifest.to_csv(catalog_dir / "manifest.csv", index=False)
    result = update(build(cfg))
    assert (result["added"], result["changed"], result["removed"], result["embedded"]) == (0, 1, 0, 1)
    snap = open_index(cfg).read()
    full = open_index(cfg).read(build_index(build(cfg))["version"])  # a full build of the catalog as it is now
    np.testing.assert_array_equal(dict(zip(snap.items["item_id"], snap.vectors))[moved],
                                  dict(zip(full.items["item_id"], full.vectors))[moved])
