"""The OpenVINO runtime: same features as torch fp32, converted once and cached, a fallback that says so."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from harness.backbones import build_backbone
from harness.errors import HarnessError
from harness.runtimes.torch_eager import TorchRuntime
from tests.test_families import FAMILIES

pytest.importorskip("openvino")


def images(n, size=224, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8))


@pytest.mark.parametrize("name,weights", [("resnet50", "random"), ("efficientnet_lite0", "imagenet")])
def test_openvino_features_equal_torch_fp32(cfg_factory, name, weights):
    common = [f"backbone={name}", f"backbone.weights={weights}", "backbone.precision=fp32"]
    torch_bb = build_backbone(cfg_factory(*common, "runtime=torch"))
    ov_bb = build_backbone(cfg_factory(*common, "runtime=openvino"))
    x = images(5)  # a batch shorter than the prepared one: padded, then cut
    ov_bb.prepare(4)
    expected, got = torch_bb.embed(x), ov_bb.embed(x)
    assert ov_bb.runtime.name == "openvino" and got.shape == expected.shape == (5, ov_bb.dim)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert ov_bb.fingerprint["runtime"] == "openvino" and "runtime" not in torch_bb.fingerprint


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_timm_and_open_clip_convert_through_the_same_hook(cfg_factory, family):
    common = [*FAMILIES[family], "backbone.weights=random", "backbone.precision=fp32"]
    torch_bb = build_backbone(cfg_factory(*common, "runtime=torch"))
    ov_bb = build_backbone(cfg_factory(*common, "runtime=openvino"))
    x = images(3, torch_bb.input_size)
    ov_bb.prepare(2)
    expected, got = torch_bb.embed(x), ov_bb.embed(x)
    assert ov_bb.runtime.name == "openvino" and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_the_converted_network_is_read_from_the_disk_cache(cfg_factory, tmp_path):
    cfg = cfg_factory("backbone=resnet50", "backbone.weights=random", "runtime=openvino",
                      "backbone.input_size=64", f"paths.openvino={tmp_path / 'ov'}")
    first, second = build_backbone(cfg), build_backbone(cfg)
    first.prepare(2)
    second.prepare(2)
    assert first.runtime.network.converted and not second.runtime.network.converted
    # IR, its key and digests, the conversion lock; no partial file, no compiled blob
    assert sorted(p.name.split(".", 1)[1] for p in (tmp_path / "ov").iterdir()) == ["bin", "json", "lock", "xml"]
    np.testing.assert_array_equal(first.embed(images(2, 64)), second.embed(images(2, 64)))


def test_a_network_that_does_not_convert_runs_with_torch_and_says_why(cfg_factory, monkeypatch, caplog):
    import openvino

    def refuse(*args, **kwargs):
        raise RuntimeError("Cannot convert op aten::mystery\nmore detail")

    monkeypatch.setattr(openvino, "convert_model", refuse)
    cfg = cfg_factory("backbone=resnet50", "backbone.weights=random", "backbone.input_size=64",
                      "backbone.precision=fp32", "paths.openvino=/tmp/harness-ov-never-written")
    backbone = build_backbone(cfg)
    assert backbone.runtime.name == "openvino"  # auto, OpenVINO installed, on a CPU
    with caplog.at_level(logging.WARNING):
        out = backbone.embed(images(3, 64))
    assert backbone.runtime.name == "torch" and "runtime" not in backbone.fingerprint and out.shape == (3, 2048)
    [record] = [r for r in caplog.records if "does not convert" in r.getMessage()]
    assert "Cannot convert op aten::mystery" in record.getMessage() and "\n" not in record.getMessage()
    torch_out = build_backbone(cfg_factory("backbone=resnet50", "backbone.weights=random", "backbone.input_size=64",
                                           "backbone.precision=fp32", "runtime=torch")).embed(images(3, 64))
    np.testing.assert_array_equal(out, torch_out)


def test_runtime_settings_are_checked(cfg_factory):
    with pytest.raises(Exception, match=r"(?s)Could not find 'runtime/tensorrt'.*auto.*inductor.*openvino.*torch"):
        cfg_factory("runtime=tensorrt")
    with pytest.raises(HarnessError, match="runtime=openvino runs on the CPU; this backbone is on cuda"):
        build_backbone(cfg_factory("runtime=openvino", "+backbone.device=cuda", "backbone.precision=fp32"))
    assert build_backbone(cfg_factory("runtime=inductor")).runtime.name == "inductor"


def test_the_searcher_embeds_an_upload_through_openvino(served):
    searcher = served["searcher"]
    assert searcher.backbone.runtime.name == "openvino" and searcher.backbone.runtime.network.batch == 1
    item = served["catalog"] / "images" / "square_green_2.jpg"
    [table] = searcher.search([item.read_bytes()], k=3)
    assert table["item_id"].iloc[0] == "square-green-2" and table["distance"].iloc[0] < 1e-3


def alter_weights(bin_path, factor=-0.5):
    """The weights of a cached IR changed in place: the same size, still a valid graph."""
    data = np.fromfile(bin_path, dtype=np.float32)
    data[len(data) // 4: len(data) // 2] *= factor
    data.tofile(bin_path)


def cached(tmp_path, name="resnet50"):
    xml = next((tmp_path / "ov").glob("*.xml"))
    return xml, xml.with_suffix(".bin"), xml.with_suffix(".json")


@pytest.fixture
def ov_cfg(cfg_factory, tmp_path):
    return cfg_factory("backbone=resnet50", "backbone.weights=random", "runtime=openvino",
                       "backbone.precision=fp32", "backbone.input_size=64", f"paths.openvino={tmp_path / 'ov'}")


def rebuilt_lines(caplog):
    return [r.getMessage() for r in caplog.records if "converting it again" in r.getMessage()]


@pytest.mark.parametrize("damage", ["altered weights", "truncated graph", "lost digests"])
def test_a_damaged_cached_network_is_converted_again_once_and_named(ov_cfg, tmp_path, caplog, damage):
    torch_features = build_backbone(ov_cfg, runtime=TorchRuntime()).embed(images(2, 64))
    build_backbone(ov_cfg).prepare(2)
    xml, weights, record = cached(tmp_path)
    if damage == "altered weights":
        alter_weights(weights)
    elif damage == "truncated graph":
        xml.write_bytes(xml.read_bytes()[:1000])
    else:
        record.unlink()
    with caplog.at_level(logging.WARNING):
        backbone = build_backbone(ov_cfg)
        backbone.prepare(2)
    [line] = rebuilt_lines(caplog)
    assert str(xml) in line and "\n" not in line
    assert backbone.runtime.name == "openvino" and backbone.runtime.network.rebuilt and backbone.runtime.network.converted
    np.testing.assert_allclose(backbone.embed(images(2, 64)), torch_features, rtol=1e-4, atol=1e-4)
    caplog.clear()
    again = build_backbone(ov_cfg)  # repaired for good: the next run reads it without a word
    again.prepare(2)
    assert not rebuilt_lines(caplog) and not again.runtime.network.converted


def test_altered_weights_with_matching_digests_are_caught_by_the_probe(ov_cfg, tmp_path, caplog):
    """Whatever changed the files and their record together: the output is compared with torch's."""
    import hashlib
    import json

    build_backbone(ov_cfg).prepare(2)
    xml, weights, record = cached(tmp_path)
    alter_weights(weights)
    manifest = json.loads(record.read_text())
    manifest["sha256"][weights.name] = hashlib.sha256(weights.read_bytes()).hexdigest()
    record.write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING):
        backbone = build_backbone(ov_cfg)
        backbone.prepare(2)
    [line] = rebuilt_lines(caplog)
    assert "answers a probe unlike torch (cosine" in line and backbone.runtime.network.rebuilt


def test_a_network_that_converts_to_other_numbers_is_refused(ov_cfg, monkeypatch, caplog):
    """Freshly converted and still unlike torch on the probe: never used, torch runs instead."""
    from harness.runtimes import openvino as runtime

    real_convert = runtime.OpenVINONetwork._convert

    def convert_wrongly(self, ov, embedder, key, probe):
        real_convert(self, ov, embedder, key, probe)
        alter_weights(self.xml.with_suffix(".bin"))

    monkeypatch.setattr(runtime.OpenVINONetwork, "_convert", convert_wrongly)
    with caplog.at_level(logging.WARNING):
        backbone = build_backbone(ov_cfg)
        out = backbone.embed(images(2, 64))
    assert backbone.runtime.name == "torch" and "runtime" not in backbone.fingerprint
    [line] = [r.getMessage() for r in caplog.records if "not using it" in r.getMessage()]
    assert "answers a probe unlike torch" in line and "running resnet50 with torch instead" in line
    np.testing.assert_array_equal(out, build_backbone(ov_cfg, runtime=TorchRuntime()).embed(images(2, 64)))
