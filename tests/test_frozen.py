"""Frozen-feature recipes: flip averaging, label-aware catalog augmentation, alpha query expansion."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from harness.augment import ClassMean, FittedAugmentation
from harness.data import Catalog
from harness.errors import HarnessError
from harness.evaluate import evaluate, first_neighbours
from harness.evaluators import PrecisionAtK
from harness.metrics import Cosine
from harness.protocols import Fold
from harness.search import GroupedIndex
from harness.search.expansion import AlphaExpansion


def test_alpha_expansion_matches_a_hand_computed_query():
    query = np.array([[2.0, 0.0]])                  # length 2: the expanded query keeps it
    ref = np.array([[0.6, 0.8], [0.0, 5.0], [-1.0, 0.0]])
    # cos 0.6 → weight 0.6² = 0.36; cos 0 → 0; the third is not among the neighbours (-1)
    out = AlphaExpansion(n=3, alpha=2).expand(query, ref, np.array([[0, 1, -1]]))
    new = np.array([1.0, 0.0]) + 0.36 * np.array([0.6, 0.8])
    np.testing.assert_allclose(out[0], 2 * new / np.linalg.norm(new), rtol=1e-6)
    # a neighbour pointing away counts as zero, not negative; only the first n neighbours are read
    out = AlphaExpansion(n=1, alpha=1).expand(query, ref, np.array([[2, 0, 1]]))
    np.testing.assert_allclose(out[0], [2.0, 0.0], rtol=1e-6)


@pytest.mark.parametrize("n, alpha", [(0, 3), (2.5, 3), (True, 3), (5, -1), (5, float("nan")), (5, "3")])
def test_query_expansion_settings_are_checked(n, alpha):
    with pytest.raises(HarnessError, match="query_expansion"):
        AlphaExpansion(n=n, alpha=alpha)


def test_class_mean_moves_each_catalog_vector_halfway_to_its_label_mean(tmp_path):
    emb = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 6.0]])
    fitted = ClassMean(beta=1.0).fit(emb, ["b", "b", "a", "a"])
    assert fitted.labels.tolist() == ["a", "b"]
    np.testing.assert_allclose(fitted.means, [[0, 5], [1, 0]])
    moved = fitted.apply(emb, np.array(["b", "b", "a", "new"], dtype=object))
    np.testing.assert_allclose(moved, [[0.5, 0], [1.5, 0], [0, 4.5], [0, 6]])  # an unfitted label stays put
    np.testing.assert_allclose(ClassMean(beta=0).fit(emb, ["b", "b", "a", "a"]).apply(emb, ["b", "b", "a", "a"]), emb)
    fitted.save(tmp_path / "aug.npz")
    back = FittedAugmentation.load(tmp_path / "aug.npz")
    assert back.labels.tolist() == ["a", "b"] and back.beta == 1.0 and back.digest == fitted.digest
    assert ClassMean(beta=0.5).fit(emb, ["b", "b", "a", "a"]).digest != fitted.digest
    with pytest.raises(HarnessError, match="fitted on 2-D"):
        fitted.apply(np.zeros((1, 3)), ["a"])
    for beta in (-0.1, "1", True, float("inf")):
        with pytest.raises(HarnessError, match="augment.beta"):
            ClassMean(beta=beta)


def _catalog(labels, distractors=0) -> Catalog:
    items = pd.DataFrame({"path": [f"{i}.jpg" for i in range(len(labels) + distractors)],
                          "item_id": [str(i) for i in range(len(labels) + distractors)],
                          "category": list(labels) + ["distractor"] * distractors,
                          "distractor": [False] * len(labels) + [True] * distractors})
    return Catalog(items, ["category"], "test")


class Recording(ClassMean):
    def __init__(self):
        super().__init__(beta=1.0)
        self.fitted_on = []

    def fit(self, ref_emb, labels):
        self.fitted_on.append(np.asarray(ref_emb).copy())
        return super().fit(ref_emb, labels)


def test_the_augmentation_learns_from_the_folds_catalog_products_only_and_moves_no_query():
    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b", "c"], 6)
    emb = rng.normal(size=(len(labels) + 4, 8)).astype(np.float32)
    emb[:len(labels)] += np.repeat(np.eye(8)[:3] * 3, 6, axis=0)
    catalog = _catalog(labels, distractors=4)
    queries = np.array([0, 6, 12])
    refs = np.setdiff1d(np.arange(len(catalog)), queries)
    augment = Recording()
    result = evaluate(emb, catalog, [Fold(queries, refs)], Cosine(), [PrecisionAtK()], 3, augment=augment)
    products = refs[refs < len(labels)]
    assert len(augment.fitted_on) == 1
    np.testing.assert_array_equal(augment.fitted_on[0], emb[products])  # no query row, no distractor
    # the ranking is the plain search among the moved catalog vectors, the queries as they are
    moved = emb.copy()
    moved[products] = ClassMean().fit(emb[products], labels[products]).apply(emb[products], labels[products])
    _, pos = GroupedIndex(moved[refs], Cosine()).search(emb[queries], 3)
    np.testing.assert_array_equal(result.indices, refs[pos])


def test_augmentation_and_projection_refuse_an_all_versus_all_protocol():
    emb = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    fold = Fold(np.arange(12), np.arange(12), self_match=True)
    with pytest.raises(HarnessError, match="augment cannot be fitted with an all-versus-all"):
        evaluate(emb, _catalog(np.repeat(["a", "b"], 6)), [fold], Cosine(), [PrecisionAtK()], 3, augment=ClassMean())


def test_expansion_in_an_all_versus_all_search_never_reads_the_querys_own_row():
    emb = np.array([[1.0, 0.0], [0.9, 0.1], [0.8, 0.3], [0.0, 1.0]], dtype=np.float32)
    refs = np.arange(4)
    grouped = GroupedIndex(emb, Cosine())
    pos = first_neighbours(grouped, emb, None, 2, refs, own=refs)
    assert pos.tolist() == [[1, 2], [0, 2], [1, 0], [2, 1]]
    fold = Fold(refs, refs, self_match=True)
    plain = evaluate(emb, _catalog(["a", "a", "a", "b"]), [fold], Cosine(), [PrecisionAtK()], 2)
    expanded = evaluate(emb, _catalog(["a", "a", "a", "b"]), [fold], Cosine(), [PrecisionAtK()], 2,
                        expansion=AlphaExpansion(n=2, alpha=3))
    assert (expanded.indices != refs[:, None]).all() and (plain.indices != refs[:, None]).all()
    # the expanded query of row 0 is row 0 + rows 1 and 2 weighted: searched again, as by hand
    by_hand = AlphaExpansion(n=2, alpha=3).expand(emb, emb, pos)
    _, again = grouped.search(by_hand, 3)
    np.testing.assert_array_equal(expanded.indices[0], [r for r in again[0] if r != 0][:2])


def test_flip_averages_each_image_with_its_mirror_under_its_own_fingerprint(cfg_factory):
    from harness.backbones import build_backbone

    common = ("backbone.precision=fp32", "runtime=torch")  # the real lite0 weights: features worth comparing
    plain, flip = build_backbone(cfg_factory(*common)), build_backbone(cfg_factory(*common, "tta=flip"))
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 3, 224, 224), dtype=np.uint8))
    once, mirrored = plain.embed(images), plain.embed(images.flip(3))
    assert np.abs(once - mirrored).max() > 0.05 * np.abs(once).max()  # a mirror image has other features
    np.testing.assert_allclose(flip.embed(images), (once + mirrored) / 2, rtol=1e-4, atol=1e-5 * np.abs(once).max())
    assert flip.fingerprint["tta"] == "flip" and "tta" not in plain.fingerprint
    with pytest.raises(HarnessError, match="tta must be one of none, flip"):
        build_backbone(cfg_factory("backbone.weights=random", "backbone.tta=rotate"))


def test_a_fused_backbone_is_its_members_unit_vectors_side_by_side(cfg_factory, catalog_dir, tmp_path):
    from harness.backbones import build_backbone
    from harness.extract import extract
    from harness.preprocess import build_preprocess
    from harness.serving.searcher import Searcher, Settings
    from harness.store import FeatureStore

    common = ("backbone=fused_lite", "backbone.precision=fp32", "runtime=torch")
    cfg = cfg_factory(*common, "dataset=products", f"dataset.root={catalog_dir}")
    fused = build_backbone(cfg)
    assert fused.input_size == 300 and [m.input_size for m in fused.members] == [300, 240, 260]
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (2, 3, 300, 300), dtype=np.uint8))
    emb = fused.embed(images)
    assert emb.shape == (2, 3 * 1280)
    np.testing.assert_allclose(np.linalg.norm(emb.reshape(2, 3, 1280), axis=2), 1, rtol=1e-5)
    # the first member runs at the shared size: exactly lite0@300, GeM, flip-averaged, on its own
    lite0 = build_backbone(cfg_factory("backbone.precision=fp32", "runtime=torch", "backbone.input_size=300",
                                       "layer.pooling=gem", "tta=flip"))
    alone = lite0.embed(images)
    np.testing.assert_allclose(emb[:, :1280], alone / np.linalg.norm(alone, axis=1, keepdims=True), rtol=1e-4, atol=1e-6)
    # every member is in the fingerprint; another member size is another extractor
    assert [m["arch"] for m in fused.fingerprint["members"]] == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    other = build_backbone(cfg_factory(*common, "backbone.members.1.input_size=224"))
    assert other.fingerprint != fused.fingerprint and other.input_size == 300
    # stored and served as one extractor: an upload embeds as its catalog photo was embedded
    items = pd.read_csv(catalog_dir / "manifest.csv").head(6)
    items["path"] = [str(catalog_dir / p) for p in items["path"]]
    feats = extract(items["path"].tolist(), fused, build_preprocess(cfg.preprocess, fused),
                    FeatureStore(str(tmp_path / "f.sqlite")), num_workers=0, progress=False)
    searcher = Searcher(Settings.from_cfg(cfg, str(catalog_dir), {"run_id": "t"}), items, feats.emb)
    from PIL import Image
    np.testing.assert_allclose(searcher.embed([Image.open(items["path"].iloc[2])])[0], feats.emb[2], rtol=1e-4, atol=1e-5)
    with pytest.raises(HarnessError, match="at least two members"):
        build_backbone(cfg_factory(*common, "backbone.members=[]"))
