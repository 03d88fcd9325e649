"""preprocess=segment (GrabCut) and the composite query generator, on synthetic photos with a known object."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from harness.data.composite import composite, cutout
from harness.errors import HarnessError
from harness.segment import Segment, mask_box


def textured(size, colour, rng, spread=18):
    return np.clip(np.array(colour) + rng.normal(0, spread, (size[1], size[0], 3)), 0, 255).astype(np.uint8)


def known_object(background, rng, size=(200, 260), ellipse=(50, 60, 150, 210)):
    """A reddish textured ellipse on `background` (an array or a colour): the photo and its true mask."""
    canvas = background if isinstance(background, np.ndarray) else textured(size, background, rng, 6)
    truth = Image.new("L", size, 0)
    ImageDraw.Draw(truth).ellipse(ellipse, fill=1)
    truth = np.asarray(truth).astype(bool)
    canvas = canvas.copy()
    canvas[truth] = textured(size, (190, 40, 50), rng)[truth]
    return Image.fromarray(canvas), truth


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_grabcut_finds_a_known_object_on_a_studio_background():
    img, truth = known_object((200, 200, 205), np.random.default_rng(0))
    seg = Segment(size=64)
    mask = seg.mask(img)
    assert iou(mask, truth) > 0.9
    box, true_box = mask_box(mask), mask_box(truth)
    assert max(abs(a - b) for a, b in zip(box, true_box)) <= 4
    assert np.array_equal(seg.mask(img), mask)  # seeded: the same photo, the same mask


def cluttered_photo():
    """An object on colourful stripes (no uniform border), and its true mask."""
    stripes = np.zeros((260, 200, 3), np.uint8)
    for n, x in enumerate(range(0, 200, 20)):
        stripes[:, x:x + 20] = [(30, 120, 200), (40, 170, 90), (220, 220, 60)][n % 3]
    return known_object(stripes, np.random.default_rng(1), ellipse=(40, 50, 160, 220))


def test_grabcut_finds_it_in_clutter_from_the_inset_photo():
    """No uniform border to trim: GrabCut starts from the photo inset by 5 % and still finds the object."""
    img, truth = cluttered_photo()
    seg = Segment(size=64)
    assert seg.start(img) == (10, 13, 190, 247)
    assert iou(seg.mask(img), truth) > 0.8


def two_tone_garment():
    """A studio photo of a garment half pale grey, half red: GrabCut alone drops pale pixels at its edge."""
    rng = np.random.default_rng(0)
    canvas = textured((200, 260), (250, 250, 250), rng, 3)
    pale, red = np.zeros((260, 200), bool), np.zeros((260, 200), bool)
    pale[20:240, 40:100], red[20:240, 100:160] = True, True
    canvas[pale] = textured((200, 260), (215, 215, 218), rng, 3)[pale]
    canvas[red] = textured((200, 260), (190, 40, 50), rng, 6)[red]
    return canvas


def test_on_a_studio_photo_every_pixel_unlike_the_backdrop_stays_in_the_mask():
    canvas = two_tone_garment()
    unlike = np.abs(canvas.astype(int) - 250).max(axis=2) > 24
    grabcut = Segment(size=64, keep_contrast=False).mask(Image.fromarray(canvas))
    assert not grabcut[unlike].all()                        # what keep_contrast is for
    assert Segment(size=64).mask(Image.fromarray(canvas))[unlike].all()


def test_keep_contrast_leaves_a_cluttered_photo_to_grabcut():
    img, _ = cluttered_photo()
    assert np.array_equal(Segment(size=64).mask(img), Segment(size=64, keep_contrast=False).mask(img))


def test_a_speck_far_from_the_product_does_not_stretch_its_box():
    canvas = two_tone_garment()
    canvas[4:7, 190:193] = 20  # a dark speck in the corner, unlike the backdrop
    mask = Segment(size=64, margin=0.0).mask(Image.fromarray(canvas))
    assert not mask[4:7, 190:193].any()
    assert max(abs(a - b) for a, b in zip(mask_box(mask), (40, 20, 160, 240))) <= 1  # the mask is scaled up


def test_keep_contrast_is_checked():
    with pytest.raises(HarnessError, match="keep_contrast"):
        Segment(keep_contrast="yes")


def test_segment_keeps_only_the_product_on_the_background_colour():
    img, truth = known_object((200, 200, 205), np.random.default_rng(2))
    seg = Segment(size=64, margin=0.0)
    cut = seg.cut(img, truth)
    left, top, right, bottom = mask_box(truth)
    assert cut.size == (right - left, bottom - top)
    arr, inside = np.asarray(cut), truth[top:bottom, left:right]
    assert (arr[~inside] == 255).all()                                       # outside the mask: white
    assert np.array_equal(arr[inside], np.asarray(img)[top:bottom, left:right][inside])
    assert seg(img).size == (64, 64)


def test_segment_settings_are_checked_and_fingerprinted(cfg_factory):
    from harness.pipeline import build

    pre = build(cfg_factory("preprocess=segment", "backbone.weights=random")).preprocess
    assert isinstance(pre, Segment) and pre.decode_scale is None   # decoded in full: the box comes after
    assert pre.fingerprint()["preprocess"] == "segment" and pre.fingerprint()["iterations"] == 3
    for override, message in [("preprocess.iterations=0", "iterations must be a whole number >= 1"),
                              ("preprocess.background=[255,255]", "background must be three whole numbers"),
                              ("preprocess.inset=0.6", r"inset must be in \[0, 0.5\)")]:
        with pytest.raises(HarnessError, match=message):
            build(cfg_factory("preprocess=segment", "backbone.weights=random", override))


def studio(size=(90, 120), box=(20, 30, 70, 100), colour=(200, 30, 40)):
    img = Image.new("RGB", size, (255, 255, 255))
    img.paste(Image.new("RGB", (box[2] - box[0], box[3] - box[1]), colour), box[:2])
    return img


def test_cutout_is_the_product_with_its_holes():
    img = studio()
    ImageDraw.Draw(img).rectangle((35, 50, 50, 70), fill=(255, 255, 255))  # a white patch inside the product
    mask = cutout(img)
    assert mask_box(mask) == (20, 30, 70, 100) and mask[60, 40] and mask.sum() == 50 * 70


def test_a_composite_s_ground_truth_is_exact_and_seeded():
    scene, occluder = Image.new("RGB", (300, 200), (20, 60, 200)), Image.new("RGB", (50, 50), (0, 255, 0))
    made = composite(studio(), scene, occluder, np.random.default_rng(3), size=(240, 320), occlusion=(0, 0))
    arr = np.asarray(made.image)
    red = (arr == (200, 30, 40)).all(axis=2)
    assert mask_box(red) == made.box and np.array_equal(red, made.mask) and made.occluded == 0
    left, top, right, bottom = made.box
    assert 0.45 * 320 - 1 <= bottom - top <= 0.85 * 320 + 1
    outside = np.ones(red.shape, bool)
    outside[top:bottom, left:right] = False
    assert (arr[outside] == (20, 60, 200)).all()                 # the scene, untouched, outside the box
    covered = composite(studio(), scene, occluder, np.random.default_rng(4), size=(240, 320), occlusion=(0.2, 0.3))
    green = (np.asarray(covered.image) == (0, 255, 0)).all(axis=2)
    total = green.sum() + covered.mask.sum()
    assert green.any() and not (green & covered.mask).any()
    assert covered.occluded == pytest.approx(green.sum() / total) and 0.2 - 0.01 <= covered.occluded <= 0.3 + 0.01
    again = composite(studio(), scene, occluder, np.random.default_rng(4), size=(240, 320), occlusion=(0.2, 0.3))
    assert np.array_equal(np.asarray(again.image), np.asarray(covered.image)) and again.box == covered.box


def test_composite_queries_score_by_product_through_the_pipeline(tmp_path, catalog_dir, cfg_factory):
    """experiments/composite_queries.py's set as protocol=queries: each query's product_id names its catalog
    photo, so same-product Recall@k counts exactly one relevant photo per query."""
    import importlib.util

    from harness import ROOT
    from harness.run import run

    spec = importlib.util.spec_from_file_location("composite_queries", ROOT / "experiments" / "composite_queries.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    scenes = tmp_path / "scenes"
    (scenes / "images").mkdir(parents=True)
    rng = np.random.default_rng(5)
    for n in range(3):
        Image.fromarray(textured((120, 90), (40 * n, 120, 200 - 40 * n), rng, 30)).save(scenes / f"images/s{n}.jpg")
    pd.DataFrame({"path": [f"images/s{n}.jpg" for n in range(3)]}).to_csv(scenes / "manifest.csv", index=False)
    table = module.write(catalog_dir, scenes, tmp_path / "queries", n=6, seed=0)
    again = module.write(catalog_dir, scenes, tmp_path / "again", n=6, seed=0)
    assert table.equals(again)                                                  # seeded
    catalog = pd.read_csv(catalog_dir / "manifest.csv", dtype=str)
    assert set(table["product_id"]) <= set(catalog["item_id"]) and len(table) == 6
    metrics = run(cfg_factory("dataset=products", f"dataset.root={catalog_dir}", "protocol=queries",
                              f"protocol.root={tmp_path / 'queries'}", "evaluator=product", "preprocess=segment",
                              "backbone.weights=random", "backbone.input_size=64", "runtime=torch", "tracker=none"))
    assert metrics["product_queries"] == 6 and metrics["n_queries"] == 6
    assert 0 <= metrics["product_recall_at_1"] <= metrics["product_recall_at_5"] <= 1


def test_colour_correlation_of_segmented_regions_leaves_the_background_out(tmp_path):
    """The same red object on a blue and on a green scene: whole photos correlate little, GrabCut's
    regions (evaluator.region=segment) almost fully; the whole-photo and ROI blocks are as before."""
    from harness.evaluators.base import EvalContext
    from harness.evaluators.color_texture import ColorTexture

    rng = np.random.default_rng(6)
    paths = []
    for n, scene in enumerate([(30, 60, 200), (40, 190, 60)]):
        img, _ = known_object(scene, rng)
        paths.append(str(tmp_path / f"{n}.png"))
        img.save(paths[-1])
    items = pd.DataFrame({"path": paths, "category": ["x", "x"]})
    ctx = EvalContext(items, ["category"], 1, np.array([0]), np.array([[1]]), np.array([[0.1]]))
    every = ColorTexture(region="all").evaluate(ctx)
    assert every["color_correlation_segment_mean"] > 0.9 > every["color_correlation_mean"] + 0.3
    assert ColorTexture(region="segment").evaluate(ctx)["color_correlation_segment_mean"] == \
        pytest.approx(every["color_correlation_segment_mean"])
    both = ColorTexture(region="both").evaluate(ctx)
    assert both["color_correlation_roi_mean"] == pytest.approx(every["color_correlation_roi_mean"])
    assert ColorTexture(region="both").fingerprint != ColorTexture(region="all").fingerprint
    assert ColorTexture(region="both").fingerprint == ColorTexture(region="full").fingerprint  # stored before


def test_the_detector_yaml_builds_with_random_weights_and_says_so_offline(cfg_factory, monkeypatch):
    from harness.detect import Detected
    from harness.pipeline import build

    pre = build(cfg_factory("preprocess=detect", "preprocess.weights=random", "preprocess.classes=[person,handbag]",
                            "preprocess.min_size=128", "backbone.weights=random")).preprocess
    assert isinstance(pre, Detected) and pre.fingerprint()["weights"] == "random"
    assert "_network" not in pre.fingerprint() and pre.fingerprint()["classes"] == [1, 31]
    img, _ = known_object((200, 200, 205), np.random.default_rng(7))
    mask = pre.mask(img)
    assert mask.shape == (img.height, img.width) and mask.any() and pre(img).size == (pre.size, pre.size)
    # whatever the random network finds, or GrabCut where it finds nothing: the same mask every time
    assert np.array_equal(pre.mask(img), mask)
    with pytest.raises(HarnessError, match="'shirt' is not a category of"):
        Detected(weights="random", classes=["shirt"])
    with pytest.raises(HarnessError, match="is not a torchvision detection model"):
        Detected(arch="resnet50", weights="random")

    def offline(*_, **__):
        raise OSError("network unreachable")

    import torchvision
    monkeypatch.setattr(torchvision.models.detection.MaskRCNN_ResNet50_FPN_V2_Weights.DEFAULT.__class__,
                        "get_state_dict", offline)
    with pytest.raises(HarnessError, match=r"COCO weights could not be read \(OSError: network unreachable\); put") as err:
        build(cfg_factory("preprocess=detect", "backbone.weights=random"))
    assert "\n" not in str(err.value)


def two_products():
    """A white photo with a red disc on the left and a blue square on the right: two items."""
    img = Image.new("RGB", (320, 200), (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.ellipse((20, 50, 110, 140), fill=(220, 30, 30))
    d.rectangle((200, 40, 290, 130), fill=(40, 60, 220))
    return img


def test_a_photo_with_two_products_gets_two_answer_lists(tmp_path, catalog_dir, cfg_factory):
    import base64
    import io

    from harness.extract import extract
    from harness.preprocess import build_preprocess
    from harness.serving.mlflow_model import VisualSearchModel
    from harness.serving.searcher import BadQuery, Searcher, Settings
    from harness.store import FeatureStore
    from harness.backbones import build_backbone

    cfg = cfg_factory("dataset=products", f"dataset.root={catalog_dir}", "preprocess=segment",
                      "backbone.weights=random", "backbone.input_size=64", "runtime=torch")
    backbone = build_backbone(cfg)
    items = pd.read_csv(catalog_dir / "manifest.csv")
    items["path"] = [str(catalog_dir / p) for p in items["path"]]
    feats = extract(items["path"].tolist(), backbone, build_preprocess(cfg.preprocess, backbone),
                    FeatureStore(str(tmp_path / "f.sqlite")), num_workers=0, progress=False)
    searcher = Searcher(Settings.from_cfg(cfg, str(catalog_dir), {"run_id": "t"}), items, feats.emb)
    photo = two_products()
    square, disc = searcher.preprocess.items(photo)                  # the larger first, 2 % (6 px) around each
    for found, true in ((square, (200, 40, 291, 131)), (disc, (20, 50, 111, 141))):
        assert all(abs(a - b) <= 8 for a, b in zip(found, true))
        assert found[0] <= true[0] and found[1] <= true[1] and found[2] >= true[2] and found[3] >= true[3]
    first, second = searcher.search_items(photo, k=3)
    assert first["item"].tolist() == [0] * 3 and first["item_box"].iloc[0] == list(square)
    assert second["item_box"].iloc[0] == list(disc) and len(second) == 3
    # each list is the search of its own crop
    [expected] = searcher.search([photo.crop(square)], k=3)
    assert first["item_id"].tolist() == expected["item_id"].tolist()
    [other] = searcher.search([photo.crop(disc)], k=3)
    [clicked] = searcher.search_items(photo, k=3, point=(60, 95))                    # the shopper clicks the disc
    assert clicked["item_id"].tolist() == other["item_id"].tolist() and clicked["item_box"].iloc[0] == list(disc)
    with pytest.raises(BadQuery, match=r"no item found at \(160, 10\) of the 320 x 200 photo; 2 item\(s\)"):
        searcher.search_items(photo, point=(160, 10))
    # through the served model: params items / point, one row per (item, rank)
    model = VisualSearchModel()
    model.searcher = searcher
    buf = io.BytesIO()
    photo.save(buf, "PNG")
    frame = pd.DataFrame({"image": [base64.b64encode(buf.getvalue()).decode()]})
    out = model.predict(None, frame, {"k": 3, "items": True})
    assert out["item"].tolist() == [0, 0, 0, 1, 1, 1] and out["query"].tolist() == [0, 0, 0, 1, 1, 1]
    assert model.predict(None, frame, {"k": 3, "point": "60,95"})["item_id"].tolist() == other["item_id"].tolist()
    assert "item" not in model.predict(None, frame, {"k": 3})                       # one list for the whole photo
    from mlflow.exceptions import MlflowException
    for params, message in [({"point": "250"}, "point must be 'x,y'"), ({"items": "yes"}, "items must be true or false")]:
        with pytest.raises((BadQuery, MlflowException), match=message):
            model.predict(None, frame, params)
    # the page: the photo with its numbered boxes first, then each item's answers; a click searches one
    import demo

    path = tmp_path / "two.png"
    photo.save(path)
    gallery, status, _ = demo.run_search(searcher, path, 3, False, "", 0.0, [], "http://shop/", items=True)
    drawn, caption = gallery[0]
    assert caption.startswith("2 item(s) found") and isinstance(drawn, Image.Image) and "2 item(s) in the photo" in status
    assert np.asarray(drawn)[square[1] + 1, (square[0] + square[2]) // 2].tolist() == [255, 0, 128]  # the box drawn
    assert [c.split(" · ")[0] for _, c in gallery[1:]] == ["item 1"] * 3 + ["item 2"] * 3
    gallery, status, _ = demo.run_search(searcher, path, 3, False, "", 0.0, [], "http://shop/", point=(60, 95))
    assert status.startswith("The item at (60, 95): top 3") and [c for _, c in gallery[1:]][0].startswith("#1 ")
    gallery, status, _ = demo.run_search(searcher, path, 3, False, "", 0.0, [], "http://shop/", point=(160, 10))
    assert gallery == [] and "no item found at (160, 10)" in status
