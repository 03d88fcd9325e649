"""timm and OpenCLIP backbones: built from one YAML, tapped with their own APIs, searchable by words.

Random weights and tiny or small architectures (timm's test_vit / test_convnext, OpenCLIP's ViT-S-32):
nothing is downloaded."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from harness.backbones import build_backbone
from harness.errors import HarnessError
from harness.extract import extract
from harness.preprocess import build_preprocess
from harness.store import FeatureStore

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FAMILIES = {
    "timm-vit": ["backbone=timm", "backbone.arch=test_vit"],
    "timm-convnext": ["backbone=timm", "backbone.arch=test_convnext"],
    "open_clip": ["backbone=open_clip", "backbone.arch=ViT-S-32", "backbone.pretrained=null"],
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_builds_embeds_at_its_size_and_is_stored_then_reused(cfg_factory, catalog_dir, tmp_path, family):
    cfg = cfg_factory(*FAMILIES[family], "backbone.weights=random")
    backbone = build_backbone(cfg)
    preprocess = build_preprocess(cfg.preprocess, backbone)
    assert preprocess.size == backbone.input_size and preprocess.interpolation == backbone.interpolation == "bicubic"
    paths = sorted(str(p) for p in (catalog_dir / "images").glob("*.jpg"))[:6]
    store = FeatureStore(str(tmp_path / "f.sqlite"))
    first = extract(paths, backbone, preprocess, store, batch_size=4, num_workers=0, progress=False)
    again = extract(paths, build_backbone(cfg), build_preprocess(cfg.preprocess, backbone), store, batch_size=4,
                    num_workers=0, progress=False)
    assert first.extracted == 6 and again.extracted == 0 and first.emb.shape == (6, backbone.dim)
    np.testing.assert_array_equal(again.emb, first.emb)
    assert backbone.fingerprint["family"] == family.split("-")[0] and backbone.fingerprint["arch"] == cfg.backbone.arch


def _normalised(backbone, images):
    return ((images.float() / 255 - torch.tensor(backbone.mean).view(1, 3, 1, 1))
            / torch.tensor(backbone.std).view(1, 3, 1, 1))


def test_vit_tokens_pooled_by_cls_and_mean_as_by_hand(cfg_factory):
    import timm

    base = ["backbone=timm", "backbone.arch=test_vit", "backbone.weights=random", "backbone.precision=fp32"]
    cls = build_backbone(cfg_factory(*base, "layer.name=features", "layer.pooling=cls"))
    mean = build_backbone(cfg_factory(*base, "layer.name=features", "layer.pooling=mean"))
    head = build_backbone(cfg_factory(*base))  # penultimate: forward_head(pre_logits=True)
    images = torch.randint(0, 255, (3, 3, cls.input_size, cls.input_size), dtype=torch.uint8)
    torch.manual_seed(0)
    reference = timm.create_model("test_vit", pretrained=False).eval()
    with torch.inference_mode():
        tokens = reference.forward_features(_normalised(cls, images))  # (N, 1 + patches, C)
        pre_logits = reference.forward_head(tokens, pre_logits=True)
    assert cls.prefix_tokens == 1
    np.testing.assert_allclose(cls.embed(images), tokens[:, 0].numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(mean.embed(images), tokens[:, 1:].mean(1).numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(head.embed(images), pre_logits.numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(HarnessError, match="does not pool tokens"):
        build_backbone(cfg_factory(*base, "layer.name=features", "layer.pooling=gap")).dim


def test_open_clip_image_and_text_share_one_space(cfg_factory):
    backbone = build_backbone(cfg_factory(*FAMILIES["open_clip"], "backbone.weights=random", "backbone.precision=fp32"))
    images = torch.randint(0, 255, (2, 3, backbone.input_size, backbone.input_size), dtype=torch.uint8)
    image_emb, text_emb = backbone.embed(images), backbone.embed_text(["a red dress", "black leather boots"])
    assert image_emb.shape == (2, 384) and text_emb.shape == (2, 384) and backbone.can_embed_text
    with torch.inference_mode():  # the image embedding is CLIP's encode_image, unchanged
        expected = backbone.clip.encode_image(_normalised(backbone, images))
    np.testing.assert_allclose(image_emb, expected.numpy(), rtol=1e-5, atol=1e-5)
    lite = build_backbone(cfg_factory())
    with pytest.raises(HarnessError, match="has no text tower"):
        lite.embed_text(["a red dress"])


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and empty caches, whatever the machine running the tests can reach."""
    import huggingface_hub.constants as hf

    from harness.backbones import hub

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    hub.use_hub.cache_clear()
    yield tmp_path
    hub.use_hub.cache_clear()


@pytest.mark.parametrize("preset,model", [("dinov2_small", "timm model vit_small_patch14_dinov2.lvd142m"),
                                          ("clip_vit_b32", "OpenCLIP model ViT-B-32"),
                                          ("fashion_siglip", "OpenCLIP model hf-hub:Marqo/marqo-fashionSigLIP")])
def test_offline_weights_give_one_clear_message(cfg_factory, offline, preset, model):
    with pytest.raises(HarnessError) as err:
        build_backbone(cfg_factory(f"backbone={preset}")).dim
    message = str(err.value)
    assert message.startswith(f"Cannot load {model}: its files are not in the Hugging Face cache ({offline / 'hf' / 'hub'}")
    assert "TORCH_HOME" in message and "backbone.weights=PATH" in message and "\n" not in message


def test_text_queries_through_the_searcher_and_its_model(tmp_path, catalog_dir, cfg_factory):
    from harness.data.images import BadImage
    from harness.serving.searcher import Searcher, Settings

    def searcher(*overrides):
        cfg = cfg_factory("dataset=products", f"dataset.root={catalog_dir}", *overrides)
        backbone = build_backbone(cfg)
        items = pd.read_csv(catalog_dir / "manifest.csv")
        items["path"] = [str(catalog_dir / p) for p in items["path"]]
        feats = extract(items["path"].tolist(), backbone, build_preprocess(cfg.preprocess, backbone),
                        FeatureStore(str(tmp_path / "f.sqlite")), num_workers=0, progress=False)
        return Searcher(Settings.from_cfg(cfg, str(catalog_dir), {"run_id": "t"}), items, feats.emb)

    clip = searcher(*FAMILIES["open_clip"], "backbone.weights=random")
    [table] = clip.search_text(["a red circle"], k=4)
    assert list(table["rank"]) == [1, 2, 3, 4] and set(table["image"]) <= set(pd.read_csv(catalog_dir / "manifest.csv")["path"])
    # the text embedding is searched like an image embedding: the same neighbours as a direct search
    expected = clip.index.search(clip.embed_texts(["a red circle"]), 4)[1][0]
    assert table["item_id"].tolist() == clip.catalog["item_id"].iloc[expected].tolist()
    with pytest.raises(BadImage, match="empty text"):
        clip.search_text(["  "])
    lite = searcher()
    with pytest.raises(BadImage, match="has no text tower"):
        lite.search_text(["a red circle"])
