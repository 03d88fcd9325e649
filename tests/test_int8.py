"""backbone.precision=int8: quantized once with NNCF on a recorded catalog sample, stored apart, served alike."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness.errors import HarnessError
from harness.pipeline import build
from harness.runtimes.calibration import Calibration
from harness.runtimes.openvino import PROBE_COSINE, cosines
from harness.store import FeatureStore

pytest.importorskip("openvino")
pytest.importorskip("nncf")


@pytest.fixture
def int8_cfg(cfg_factory, catalog_dir, tmp_path):
    def compose(*overrides):
        return cfg_factory("dataset=products", f"dataset.root={catalog_dir}", "backbone.weights=imagenet",
                           "backbone.input_size=96", "runtime=openvino", f"paths.openvino={tmp_path / 'ov'}",
                           "extract.calibration.size=12", "tracker=none", *overrides)
    return compose


def features(cfg, store):
    pipe = build(cfg)
    catalog, _ = pipe.data()
    return pipe, catalog, pipe.extract(catalog, store)


def test_int8_features_are_stored_apart_and_the_quantized_network_cached(int8_cfg, tmp_path):
    store = FeatureStore(str(tmp_path / "f.sqlite"))
    _, _, fp32 = features(int8_cfg("backbone.precision=fp32"), store)
    pipe, catalog, int8 = features(int8_cfg("backbone.precision=int8"), store)
    network = pipe.backbone.runtime.network
    assert network.converted and pipe.backbone.runtime.name == "openvino"
    assert int8.fingerprint != fp32.fingerprint and int8.extracted == len(catalog.items)
    assert pipe.backbone.fingerprint["precision"] == "int8" and pipe.backbone.fingerprint["calibration"]
    # Quantized, so not fp32's numbers, but the same network. Integer kernels differ between CPUs
    # (AVX2, VNNI, AMX): the lowest cosine over these 54 photos at 96 px was 0.91 (median 0.97) on an
    # AMD EPYC with AVX-512 VNNI and 0.84 on CI's machine, so the bar is the runtime's own probe bar for
    # every photo and 0.9 for most; altered weights score about 0.4.
    agree = cosines(int8.emb, fp32.emb)
    assert not np.array_equal(int8.emb, fp32.emb)
    assert agree.min() > PROBE_COSINE["int8"] and np.median(agree) > 0.9, (agree.min(), np.median(agree))
    calibration = pipe.backbone.calibration
    assert len(calibration.items) == 12 and {h for _, h in calibration.items} <= set(catalog.items["content_hash"])

    # A later run: every feature from the store, nothing embedded; a fresh store: the cached int8 network
    # (no quantizing again), the same features bit for bit.
    again = features(int8_cfg("backbone.precision=int8"), store)[2]
    assert again.extracted == 0 and again.fingerprint == int8.fingerprint
    pipe2, _, fresh = features(int8_cfg("backbone.precision=int8"), FeatureStore(str(tmp_path / "g.sqlite")))
    assert not pipe2.backbone.runtime.network.converted
    np.testing.assert_array_equal(fresh.emb, int8.emb)

    # another sample is another network: its own fingerprint
    other = features(int8_cfg("backbone.precision=int8", "extract.calibration.seed=1"), store)[2]
    assert other.fingerprint not in (int8.fingerprint, fp32.fingerprint) and other.extracted == len(catalog.items)


def test_the_served_int8_model_quantizes_the_same_network_from_its_record(int8_cfg, catalog_dir, tmp_path):
    from harness.serving.package import served_parts
    from harness.serving.searcher import Searcher

    pipe, catalog, feats = features(int8_cfg("backbone.precision=int8"), FeatureStore(str(tmp_path / "f.sqlite")))
    parts = served_parts(pipe.cfg, catalog, feats.emb, run={"run_id": "t"}, calibration=pipe.backbone.calibration)
    settings, items, emb = parts.settings, parts.items, parts.features
    assert Calibration.from_record(settings.calibration) == pipe.backbone.calibration
    # On a machine without the cached network: quantized again from the recorded files
    settings.runtime = {**settings.runtime, "cache_dir": str(tmp_path / "serving-ov")}
    searcher = Searcher(settings, items, emb)
    assert searcher.backbone.runtime.network.converted
    assert searcher.backbone.fingerprint == pipe.backbone.fingerprint
    photo = Image.open(catalog.items["path"].iloc[0])
    np.testing.assert_allclose(searcher.embed([photo])[0], feats.emb[0], rtol=1e-4, atol=1e-4 * np.abs(feats.emb[0]).max())

    # A recorded calibration file that changed since is never quantized with, and says which file
    path, _ = pipe.backbone.calibration.items[0]
    Image.open(path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(path, quality=95)
    settings.runtime = {**settings.runtime, "cache_dir": str(tmp_path / "elsewhere-ov")}
    with pytest.raises(HarnessError, match=f"int8 calibration image {path}: its content changed"):
        Searcher(settings, items, emb)


def test_the_run_records_its_calibration_sample(catalog_dir, tmp_path):
    import subprocess
    import sys

    from mlflow import MlflowClient

    from harness import ROOT
    from tests.conftest import SHARED

    # in its own process: MLflow's tracking URI is process-wide
    proc = subprocess.run([sys.executable, "-m", "harness", "dataset=products", f"dataset.root={catalog_dir}",
                           "backbone.input_size=96", "runtime=openvino", "backbone.precision=int8",
                           "extract.calibration.size=12", "serving.log_model=false", f"paths.root={tmp_path}",
                           "extract.progress=false", "extract.num_workers=0", *SHARED],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    [logged] = client.search_runs([client.get_experiment_by_name("fashion-retrieval").experiment_id])
    sample = pd.read_csv(client.download_artifacts(logged.info.run_id, "int8_calibration.csv", str(tmp_path)))
    assert list(sample.columns) == ["path", "content_hash"] and len(sample) == 12
    assert logged.data.params["backbone.precision"] == "int8" and logged.data.params["extract.calibration.size"] == "12"


@pytest.mark.parametrize("runtime", ["torch", "inductor"])
def test_int8_without_openvino_is_one_line(int8_cfg, runtime):
    with pytest.raises(HarnessError, match=f"backbone.precision=int8 does not run on runtime={runtime}") as err:
        build(int8_cfg("backbone.precision=int8", f"runtime={runtime}"))
    assert "\n" not in str(err.value)


def test_calibration_sample_is_seeded_distinct_and_order_free():
    paths = [f"p{i}" for i in range(10)] + ["dup"]
    hashes = [f"h{i}" for i in range(10)] + ["h3"]
    a = Calibration.choose(paths, hashes, 5, seed=0)
    reordered = Calibration.choose(paths[::-1], hashes[::-1], 5, seed=0)
    assert [h for _, h in a.items] == [h for _, h in reordered.items] and a.digest == reordered.digest
    assert len({h for _, h in a.items}) == 5 and a.digest != Calibration.choose(paths, hashes, 5, seed=1).digest
    assert len(Calibration.choose(paths, hashes, 50, seed=0).items) == 10  # never more than the catalog holds
    assert Calibration.from_record(a.record()) == a
    with pytest.raises(HarnessError, match="does not match its digest"):
        Calibration.from_record({**a.record(), "digest": "0" * 16})
