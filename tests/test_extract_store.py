import numpy as np
import pytest
import torch

from harness.backbones import build_backbone
from harness.config import instantiate
from harness.extract import extract
from harness.preprocess import build_preprocess
from harness.store import FeatureStore


def parts(cfg_factory, *overrides):
    cfg = cfg_factory("backbone=resnet50", "backbone.weights=random", "layer=logits", *overrides)
    backbone = build_backbone(cfg)
    return backbone, build_preprocess(cfg.preprocess, backbone)


def test_store_resumes_and_reuses(cfg_factory, catalog_dir, tmp_path):
    backbone, preprocess = parts(cfg_factory)
    paths = sorted(str(p) for p in (catalog_dir / "images").glob("*.jpg"))[:12]
    store = FeatureStore(str(tmp_path / "f.sqlite"))
    first = extract(paths[:5], backbone, preprocess, store, batch_size=4, num_workers=0, progress=False)
    assert first.extracted == 5 and first.valid.all()
    # an "interrupted" run stored 5; the next one embeds only the other 7
    second = extract(paths, backbone, preprocess, store, batch_size=4, num_workers=0, progress=False)
    assert second.extracted == 7
    np.testing.assert_array_equal(second.emb[:5], first.emb)
    third = extract(paths, backbone, preprocess, store, batch_size=4, num_workers=0, progress=False)
    assert third.extracted == 0
    np.testing.assert_array_equal(third.emb, second.emb)


def test_fingerprint_separates_extractors_and_float16_store(cfg_factory, catalog_dir, tmp_path):
    paths = sorted(str(p) for p in (catalog_dir / "images").glob("*.jpg"))[:4]
    store = FeatureStore(str(tmp_path / "f.sqlite"))
    a = extract(paths, *parts(cfg_factory), store, num_workers=0, progress=False)
    b = extract(paths, *parts(cfg_factory, "preprocess=pad"), store, num_workers=0, progress=False)
    assert a.fingerprint != b.fingerprint and b.extracted == 4
    half = extract(paths, *parts(cfg_factory), FeatureStore(str(tmp_path / "h.sqlite"), "float16"),
                   num_workers=0, progress=False)
    np.testing.assert_allclose(half.emb, a.emb, rtol=1e-2, atol=1e-2)


def test_duplicate_files_are_embedded_once(cfg_factory, catalog_dir, tmp_path):
    paths = sorted(str(p) for p in (catalog_dir / "images").glob("*.jpg"))[:3]
    store = FeatureStore(str(tmp_path / "f.sqlite"))
    out = extract(paths + paths, *parts(cfg_factory), store, num_workers=0, progress=False)
    assert out.extracted == 3 and out.valid.all()
    np.testing.assert_array_equal(out.emb[:3], out.emb[3:])


def test_compiled_extraction_matches_eager_without_recompiling(cfg_factory, catalog_dir, tmp_path):
    import torch._dynamo

    overrides = ("backbone.precision=fp32", "backbone.input_size=64")
    paths = sorted(str(p) for p in (catalog_dir / "images").glob("*.jpg"))[:11]
    store = FeatureStore(str(tmp_path / "f.sqlite"))
    eager = extract(paths, *parts(cfg_factory, *overrides), store, batch_size=4, num_workers=0, progress=False)
    cfg = cfg_factory("backbone=resnet50", "backbone.weights=random", "layer=logits", "runtime=inductor", *overrides)
    backbone = build_backbone(cfg)
    # 11 images in batches of 4 end with a batch of 3: padded to 4, so one graph serves every batch
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = extract(paths, backbone, build_preprocess(cfg.preprocess, backbone), store, batch_size=4, num_workers=0,
                           progress=False)
        one, nine = backbone.embed(torch.zeros(1, 3, 64, 64, dtype=torch.uint8)), backbone.embed(
            torch.zeros(9, 3, 64, 64, dtype=torch.uint8))
    assert compiled.fingerprint != eager.fingerprint and compiled.extracted == 11
    assert compiled.compile_seconds > 0 and one.shape == (1, 1000) and nine.shape == (9, 1000)
    np.testing.assert_allclose(nine, np.repeat(one, 9, axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(compiled.emb, eager.emb, rtol=1e-3, atol=1e-3)


STAGES = """
import json, sys
from harness.config import compose_config
from harness.pipeline import build
cfg = compose_config("dataset=products", f"dataset.root={sys.argv[1]}", f"paths.root={sys.argv[2]}", "tracker=none",
                     "backbone=resnet50", "backbone.weights=random", "layer=logits", "backbone.input_size=64",
                     "extract.progress=false", f"extract.num_workers={sys.argv[3]}", "extract.batch_size=4")
pipe = build(cfg)
catalog = pipe.dataset.load()
feats = pipe.extract(catalog, pipe.open_store())
print(json.dumps({"seconds": feats.seconds, "stages": feats.stages, "cpu": feats.cpu_seconds, "metrics": feats.metrics()}))
"""


@pytest.mark.parametrize("num_workers", [0, 2])
def test_the_stage_timings_add_up_to_the_feature_stage(catalog_dir, tmp_path, num_workers):
    """Where the time goes: this process's stages sum to the feature stage's wall time, and every
    decoding and embedding stage is accounted (summed over the decoding processes). In a process of its
    own: decoding processes are forked, which the test process (OpenVINO's, numba's threads) must not do."""
    import json
    import subprocess
    import sys

    from harness import ROOT

    script = tmp_path / "stages.py"
    script.write_text(STAGES)
    proc = subprocess.run([sys.executable, str(script), str(catalog_dir), str(tmp_path), str(num_workers)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert abs(sum(out["stages"].values()) - out["seconds"]) <= 0.1 * out["seconds"]
    assert {"hash", "batches", "embed", "store"} <= set(out["stages"])
    assert set(out["cpu"]) == {"read", "decode", "preprocess", "embed"} and all(out["cpu"].values())
    assert out["metrics"]["stage_seconds/embed"] == out["stages"]["embed"] and out["metrics"]["cpu_seconds/decode"] > 0
