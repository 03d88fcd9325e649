from urllib.error import URLError

import numpy as np
import pytest
import torch
from harness.backbones import build_backbone
from harness.errors import HarnessError


def make(cfg_factory, *overrides):
    return build_backbone(cfg_factory(*overrides))


@pytest.mark.parametrize("name,layer,dim", [
    ("vgg16", "penultimate", 4096), ("vgg16", "fc1", 4096), ("resnet50", "penultimate", 2048),
    ("resnet50", "logits", 1000), ("efficientnet_lite0", "penultimate", 1280),
])
def test_feature_dims(cfg_factory, name, layer, dim):
    weights = [] if name == "efficientnet_lite0" else ["backbone.weights=random"]
    bb = make(cfg_factory, f"backbone={name}", f"layer={layer}", *weights)
    out = bb.embed(torch.randint(0, 255, (2, 3, 224, 224), dtype=torch.uint8))
    assert out.shape == (2, dim) and out.dtype == np.float32 and bb.dim == dim


def test_graph_node_and_pooling_choices(cfg_factory):
    bb = make(cfg_factory, "backbone=resnet50", "backbone.weights=random", "layer.name=layer3", "layer.pooling=gem")
    assert bb.dim == 1024
    bb = make(cfg_factory, "backbone=resnet50", "backbone.weights=random", "layer.name=nope")
    with pytest.raises(HarnessError, match="Unknown layer"):
        bb.dim  # the network, and so the layer check, comes on first use


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="bf16 convolutions need oneDNN")
def test_bf16_weights_cast_once_give_the_autocast_features(cfg_factory):
    bb = make(cfg_factory, "backbone=resnet50", "backbone.weights=random", "backbone.precision=bf16", "runtime=torch")
    x = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    features = bb.embed(x)
    convs = [m for m in bb.runtime.network.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.weight.dtype == torch.bfloat16 for m in convs)
    with torch.inference_mode():  # the plain autocast path: fp32 weights, cast by autocast on every call
        for m in bb.runtime.network.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.to(torch.float32)
    np.testing.assert_array_equal(bb.embed(x), features)


def test_random_weights_are_reproducible(cfg_factory):
    x = torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8)
    a = make(cfg_factory, "backbone=resnet50", "backbone.weights=random", "backbone.precision=fp32").embed(x)
    b = make(cfg_factory, "backbone=resnet50", "backbone.weights=random", "backbone.precision=fp32").embed(x)
    np.testing.assert_array_equal(a, b)


def test_offline_imagenet_weights_give_one_clear_message(cfg_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise URLError("network is unreachable")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    with pytest.raises(HarnessError) as err:
        make(cfg_factory, "backbone=vgg16").dim
    msg = str(err.value)
    assert "vgg16-397923af.pth" in msg and str(tmp_path / "torch" / "hub" / "checkpoints") in msg
    assert "backbone.weights=PATH" in msg


def test_local_weights_file(cfg_factory, tmp_path):
    torch.manual_seed(3)
    from torchvision.models import resnet18
    torch.save(resnet18().state_dict(), tmp_path / "r18.pth")
    # A YAML-less torchvision model: the backbone group's arch is just an argument.
    bb = make(cfg_factory, "backbone=resnet50", "backbone.arch=resnet18", f"backbone.weights={tmp_path / 'r18.pth'}")
    assert bb.dim == 512 and bb.fingerprint["weights"].startswith("file:")


def test_tapped_logits_equal_the_torchvision_forward(cfg_factory):
    """The layer tap, BN folding and normalisation must not change what the network computes."""
    bb = make(cfg_factory, "backbone=resnet50", "backbone.weights=random", "layer=logits", "backbone.precision=fp32")
    images = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    torch.manual_seed(0)
    from torchvision.models import resnet50
    reference = resnet50().eval()
    x = (images.float() / 255 - torch.tensor(bb.mean).view(1, 3, 1, 1)) / torch.tensor(bb.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference(x).numpy()
    np.testing.assert_allclose(bb.embed(images), expected, rtol=1e-3, atol=1e-3)
