"""engine=ray and hydra/launcher=ray on a real two-node Ray cluster started here (one CPU per node)."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.conftest import SHARED, free_port, make_catalog
from harness import ROOT
from harness.backbones import build_backbone
from harness.config import compose_config
from harness.extract import extract
from harness.pipeline import build
from harness.preprocess import build_preprocess
from harness.store import FeatureStore

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


def catalog_with_broken(root):
    """A synthetic catalog plus a truncated JPEG and a text file posing as one."""
    catalog = make_catalog(root, per_class=5)
    good = (catalog / "images" / "circle_red_0.jpg").read_bytes()
    (catalog / "images" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (catalog / "images" / "notes.jpg").write_text("not an image")
    with open(catalog / "manifest.csv", "a") as fh:
        fh.write("images/truncated.jpg,circle,circle-red,broken-1,red,0.1\n")
        fh.write("images/notes.jpg,square,square-red,broken-2,red,0.1\n")
    return catalog


def features(cfg, store_path, engine=None, boxes=None):
    from harness.config import instantiate

    paths = instantiate(cfg.dataset).load().items["path"].tolist()
    backbone = build_backbone(cfg)
    store = FeatureStore(str(store_path))
    try:
        return extract(paths, backbone, build_preprocess(cfg.preprocess, backbone), store,
                       batch_size=cfg.extract.batch_size, num_workers=0, progress=False, engine=engine, boxes=boxes)
    finally:
        store.close()


def test_two_nodes_embed_what_the_local_engine_does(cluster, tmp_path, cfg_factory):
    catalog = catalog_with_broken(tmp_path / "catalog")
    settings = ("dataset=products", f"dataset.root={catalog}", "backbone.precision=fp32", "extract.batch_size=2",
                f"engine.address={cluster.address}")
    cfg = cfg_factory(*settings, "engine=ray")
    local = features(cfg, tmp_path / "local.sqlite")
    remote = features(cfg, tmp_path / "ray.sqlite", build(cfg).engine)
    assert remote.fingerprint == local.fingerprint
    assert np.array_equal(remote.valid, local.valid) and local.valid.sum() == 45
    scale = np.abs(local.emb).max()
    assert np.abs(remote.emb - local.emb).max() <= 1e-5 * scale
    assert sorted(remote.skipped) == sorted(local.skipped) and len(local.skipped) == 2
    assert remote.engine["ray_nodes"] == 2 and remote.engine["ray_workers"] == 2
    assert remote.extracted == 45 and remote.engine["engine_startup_seconds"] > 0
    assert "images_per_second" in remote.metrics()
    # the workers' read/decode/preprocess/embed seconds come back with their batches
    assert set(remote.cpu_seconds) == {"read", "decode", "preprocess", "embed"} and remote.cpu_seconds["embed"] > 0
    # preprocess.crop=bbox: each row's box travels with it to the workers (every other row has none)
    boxes = [(2.0, 3.0, 40.0, 50.0) if n % 2 else None for n in range(len(local.valid))]
    cfg = cfg_factory(*settings, "engine=ray", "preprocess.crop=bbox")
    local_box = features(cfg, tmp_path / "local_box.sqlite", boxes=boxes)
    remote_box = features(cfg, tmp_path / "ray_box.sqlite", build(cfg).engine, boxes=boxes)
    assert np.abs(remote_box.emb - local_box.emb).max() <= 1e-5 * scale
    rows = np.flatnonzero(local.valid)
    odd, even = rows[rows % 2 == 1], rows[rows % 2 == 0]
    assert np.abs(remote_box.emb[even] - local.emb[even]).max() <= 1e-5 * scale    # whole photos: the same
    assert np.abs(remote_box.emb[odd] - local.emb[odd]).max(axis=1).min() > 1e-3 * scale  # cropped: others


def ray_worker_pids(address: str) -> list[int]:
    from ray.util.state import list_actors

    # The address is explicit: with another Ray instance on the machine, the state API's own
    # guess ("the latest cluster") may be one without a dashboard.
    return [a.pid for a in list_actors(address=address, filters=[("state", "=", "ALIVE")], detail=True)
            if "MapWorker" in a.class_name and a.pid]


def test_a_killed_worker_loses_and_repeats_nothing(cluster, tmp_path, cfg_factory):
    catalog = make_catalog(tmp_path / "catalog", per_class=8)
    cfg = cfg_factory("dataset=products", f"dataset.root={catalog}", "backbone=resnet50", "backbone.weights=random",
                      "runtime=torch", "backbone.precision=fp32", "extract.batch_size=2",
                      f"engine.address={cluster.address}", "engine=ray")
    store_path = tmp_path / "f.sqlite"
    out, errors = {}, []

    def work():
        try:
            out["feats"] = features(cfg, store_path, build(cfg).engine)
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    killed = None
    deadline = time.monotonic() + 300
    while thread.is_alive() and killed is None and time.monotonic() < deadline:
        time.sleep(0.3)
        if not store_path.exists():
            continue
        with sqlite3.connect(store_path) as db:
            stored = db.execute("SELECT count(*) FROM features").fetchone()[0]
        pids = ray_worker_pids(cluster.address)
        if 0 < stored < 40 and pids:  # batches stored, and batches still in flight
            os.kill(pids[0], signal.SIGKILL)
            killed = pids[0]
    thread.join(timeout=600)
    assert not errors, errors
    assert killed is not None, "the extraction ended before a worker could be killed"
    feats = out["feats"]
    assert feats.valid.all() and len(feats.skipped) == 0
    with sqlite3.connect(store_path) as db:
        rows = db.execute("SELECT hash, count(*) FROM features GROUP BY hash").fetchall()
    assert len(rows) == 72 and all(n == 1 for _, n in rows)
    assert set(h for h, _ in rows) == set(feats.hashes)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                               "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    import urllib.request

    for _ in range(120):
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("mlflow server did not start")
    yield uri
    server.terminate()
    server.wait(timeout=30)


def test_ray_launcher_sweep_logs_parent_children_and_champion(cluster, tmp_path, mlflow_server):
    from mlflow import MlflowClient

    catalog = make_catalog(tmp_path / "catalog", per_class=4)
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "-m", "hydra/launcher=ray", f"hydra.launcher.ray.init.address={cluster.address}",
         "metric=cosine,euclidean", "dataset=products", f"dataset.root={catalog}", f"paths.root={tmp_path}",
         f"tracking.uri={mlflow_server}", "extract.progress=false", "extract.num_workers=0", *SHARED],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("fashion-retrieval")
    sweeps = client.search_runs([exp.experiment_id], "tags.`harness.sweep` = 'true'")
    assert len(sweeps) == 1 and sweeps[0].info.status == "FINISHED"
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{sweeps[0].info.run_id}'")
    assert sorted(c.data.params["metric._target_"].rsplit(".", 1)[1] for c in children) == ["Cosine", "Euclidean"]
    assert all(c.info.status == "FINISHED" for c in children)
    champion = client.get_model_version_by_alias("fashion-visual-search", "champion")
    assert champion.run_id in {c.info.run_id for c in children}


def test_joblib_launcher_sweep_with_a_failing_job_registers_no_champion(tmp_path, mlflow_server):
    """Jobs in other processes report nowhere but MLflow: the parent still sees the one that failed."""
    from mlflow import MlflowClient

    catalog = make_catalog(tmp_path / "catalog", per_class=4)
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "k=5,0",
         "dataset=products", f"dataset.root={catalog}", f"paths.root={tmp_path}", f"tracking.uri={mlflow_server}",
         "tracking.experiment=joblib", "serving.model_name=joblib-search", "extract.progress=false",
         "extract.num_workers=0", *SHARED],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "k must be a whole number >= 1" in proc.stderr and "1 job(s) failed" in proc.stderr
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("joblib")
    [sweep] = client.search_runs([exp.experiment_id], "tags.`harness.sweep` = 'true'")
    assert sweep.info.status == "FAILED" and sweep.data.tags["harness.jobs_failed"] == "1"
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{sweep.info.run_id}'")
    assert [c.info.status for c in children] == ["FINISHED"]
    assert not client.search_registered_models("name = 'joblib-search'") or \
        not client.get_registered_model("joblib-search").aliases
