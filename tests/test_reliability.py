"""What users meet sooner or later: concurrent runs, interrupted runs, killed sweeps, bad settings."""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from harness import ROOT
from harness.tracking.champion import select_champion
from harness.errors import HarnessError
from tests.conftest import SHARED, free_port, make_catalog

pytestmark = pytest.mark.slow
PY = sys.executable


def harness(tmp_path, *args, **kwargs):
    return subprocess.Popen([PY, "-m", "harness", *args, f"paths.root={tmp_path}", "extract.progress=false", *SHARED],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def run_status(tmp_path) -> list[tuple[str, str]]:
    db = tmp_path / "mlruns" / "mlflow.db"
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db, timeout=1) as con:
            return con.execute("SELECT run_uuid, status FROM runs ORDER BY start_time").fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []


def wait_for(predicate, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


RACE = """
import sys
from harness.config import compose_config
from harness.tracking import build_tracker
cfg = compose_config(f"paths.root={sys.argv[1]}")
with build_tracker(cfg).job("race", cfg) as job:
    job.log_metrics({"x": 1.0})
"""


def test_first_runs_started_together_on_a_new_database_all_succeed(tmp_path):
    script = tmp_path / "race.py"
    script.write_text(RACE)
    for trial in range(5):
        root = tmp_path / f"trial{trial}"
        procs = [subprocess.Popen([PY, str(script), str(root)], cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(3)]
        outcomes = [(p.wait(timeout=180), p.stderr.read()) for p in procs]
        assert all(code == 0 for code, _ in outcomes), [err[-800:] for code, err in outcomes if code]
        assert [s for _, s in run_status(root)] == ["FINISHED"] * 3


SHARE = """
import sys, time
from pathlib import Path
import numpy as np
from harness.backbones import build_backbone
from harness.config import compose_config, instantiate
from harness.extract import extract
from harness.preprocess import build_preprocess
from harness.store import FeatureStore
root, catalog, name = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
cfg = compose_config("dataset=products", f"dataset.root={catalog}", f"paths.root={root}", "backbone=resnet50",
                     "backbone.weights=random", "backbone.precision=fp32")
items = instantiate(cfg.dataset).load().items
backbone, store = build_backbone(cfg), FeatureStore(cfg.store.path)
preprocess = build_preprocess(cfg.preprocess, backbone)
(root / f"ready-{name}").touch()
while len(list(root.glob("ready-*"))) < 2:  # start together
    time.sleep(0.01)
feats = extract(items["path"].tolist(), backbone, preprocess, store, batch_size=2, num_workers=0, progress=False)
np.save(root / f"emb-{name}.npy", feats.emb)
print(feats.extracted, int(feats.valid.sum()))
"""


def test_two_runs_on_one_feature_store_share_the_extraction(tmp_path):
    catalog = make_catalog(tmp_path / "catalog", per_class=4)  # 36 images
    script = tmp_path / "share.py"
    script.write_text(SHARE)
    procs = [subprocess.Popen([PY, str(script), str(tmp_path), str(catalog), name], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in "ab"]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        assert "running it with torch" not in err, err[-2000:]  # both on one runtime, one fingerprint
        outs.append([int(x) for x in out.split()])
    assert sum(extracted for extracted, _ in outs) == 36 and all(valid == 36 for _, valid in outs)
    np.testing.assert_array_equal(np.load(tmp_path / "emb-a.npy"), np.load(tmp_path / "emb-b.npy"))
    with sqlite3.connect(tmp_path / "mlruns" / "features.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM claims").fetchone() == (0,)  # released


OPEN = """
import sys, time
from pathlib import Path
from harness.store import FeatureStore
root, start = Path(sys.argv[1]), float(sys.argv[2])
for trial in range(20):  # every worker opens trial N's new store at the same instant
    while time.time() < start + 0.25 * trial:
        pass
    FeatureStore(str(root / f"trial{trial}" / "features.sqlite")).close()
"""


def test_new_store_opened_by_many_processes_at_once(tmp_path):
    # Without the set-up lock, 6 openers of a new store failed with "database is locked" in 3 of 10 trials.
    script = tmp_path / "open.py"
    script.write_text(OPEN)
    start = time.time() + 3  # after every interpreter has imported the store
    procs = [subprocess.Popen([PY, str(script), str(tmp_path), str(start)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(6)]
    outcomes = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert all(code == 0 for code, _ in outcomes), [err[-800:] for code, err in outcomes if code]
    for trial in range(20):
        with sqlite3.connect(tmp_path / f"trial{trial}" / "features.sqlite") as con:
            assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_dead_owner_claim_is_taken_over(tmp_path):
    from harness import liveness
    from harness.store import FeatureStore

    store = FeatureStore(str(tmp_path / "f.sqlite"))
    dead = subprocess.Popen([PY, "-c", "pass"])
    dead.wait()
    ghost = f"{socket.gethostname()}:{dead.pid}:1:abcd"  # a process of this host that no longer runs
    assert store.claim("fp", ["h1", "h2"], ghost) == {"h1", "h2"}
    me = f"{liveness.me()}:ef01"
    assert store.claim("fp", ["h1", "h2", "h3"], me) == {"h1", "h2", "h3"}
    assert store.claim("fp", ["h1"], f"{liveness.me()}:other") == set()  # a live owner keeps its claim


@pytest.mark.parametrize("signame,code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_interrupted_run_is_marked_killed_with_one_line(tmp_path, signame, code):
    catalog = make_catalog(tmp_path / "catalog", per_class=30)  # long enough to be interrupted mid-extraction
    proc = harness(tmp_path, "dataset=products", f"dataset.root={catalog}", "backbone=resnet50",
                   "backbone.weights=random", "extract.num_workers=0", "extract.batch_size=2")
    wait_for(lambda: run_status(tmp_path))
    time.sleep(1.0)
    proc.send_signal(getattr(signal, signame))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.strip() and "INFO mlflow" not in ln]
    assert lines == [f"interrupted by {signame}: the run is marked KILLED in MLflow; stored features are kept"]
    assert [s for _, s in run_status(tmp_path)] == ["KILLED"]


def test_report_and_register_pass_over_a_sweep_killed_by_sigkill(tmp_path):
    catalog = make_catalog(tmp_path / "catalog", per_class=30)
    common = ["dataset=products", f"dataset.root={catalog}", "backbone=resnet50", "backbone.weights=random",
              "extract.num_workers=0"]
    first = harness(tmp_path, "-m", *common, "metric=cosine,euclidean", "backbone.input_size=64")
    assert first.wait(timeout=600) == 0, first.stderr.read()[-2000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    champion = client.get_model_version_by_alias("fashion-visual-search", "champion")
    second = harness(tmp_path, "-m", *common, "metric=manhattan,chebyshev", "extract.batch_size=2")
    wait_for(lambda: len(run_status(tmp_path)) >= 5)  # 3 runs of the first sweep + the new parent + a child
    time.sleep(1.0)
    second.kill()
    second.wait(timeout=60)
    killed_sweep = [r for r, s in run_status(tmp_path) if s == "RUNNING"]
    assert len(killed_sweep) == 2  # the parent and its child stay RUNNING: nobody could mark them

    env = {**os.environ}
    register = subprocess.run([PY, "-m", "harness.register", f"paths.root={tmp_path}"], cwd=ROOT,
                              capture_output=True, text=True, timeout=300, env=env)
    assert register.returncode == 0, register.stderr[-2000:]
    assert "left RUNNING by a process that is gone" in register.stderr
    after = client.get_model_version_by_alias("fashion-visual-search", "champion")
    assert after.tags["run_id"] == champion.tags["run_id"]  # still a run of the finished sweep
    report = subprocess.run([PY, "-m", "harness.report", "--out", str(tmp_path / "reports"), f"paths.root={tmp_path}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0 and "skipping sweep" in report.stderr
    assert "euclidean" in next((tmp_path / "reports").glob("*.md")).read_text()
    parent = next(r for r in killed_sweep if client.get_run(r).data.tags.get("harness.sweep"))
    explicit = subprocess.run([PY, "-m", "harness.register", "--sweep", parent, f"paths.root={tmp_path}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert explicit.returncode != 0 and "did not finish" in explicit.stderr and "--allow-incomplete" in explicit.stderr


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    from torchvision.models import resnet18

    root = tmp_path_factory.mktemp("bad")
    (root / "garbage.pth").write_bytes(os.urandom(2000))
    torch.save(resnet18().state_dict(), root / "r18.pth")
    data = (root / "r18.pth").read_bytes()
    (root / "truncated.pth").write_bytes(data[: len(data) // 2])
    (root / "nopath").mkdir()
    (root / "nopath" / "manifest.csv").write_text("file,category,subcategory\na.jpg,x,y\n")
    MlflowClient(f"sqlite:///{root}/mlflow.db").search_experiments()  # an MLflow database, given as a store
    with sqlite3.connect(root / "foreign.sqlite") as db:  # another program's table called features
        db.execute("CREATE TABLE features (id INTEGER PRIMARY KEY, data BLOB)")
    with sqlite3.connect(root / "newer.sqlite") as db:
        db.execute("PRAGMA application_id = 0x46524853")
        db.execute("PRAGMA user_version = 99")
        db.execute("CREATE TABLE extractors (fingerprint TEXT)")
    return root


def file_digests(root):
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.glob("*.*"))}


@pytest.fixture(scope="module")
def sick_server():
    """A tracking server that answers /health and fails every API call (503), as one whose store is down."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Sick(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 503)
            self.end_headers()
            self.wfile.write(b"OK" if self.path == "/health" else b"Service Unavailable")

        do_POST = do_GET

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sick)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


BAD_SETTINGS = [
    (["k=0"], "k must be a whole number >= 1; got 0."),
    (["k=-1"], "k must be a whole number >= 1; got -1."),
    (["k=1000"], "k=1000 is larger than the catalog searched (49 images)."),
    (["dataset.limit=0"], "dataset.limit must be a whole number >= 1, or null; got 0."),
    (["serving.max_k=0"], "serving.max_k must be a whole number >= 1; got 0."),
    (["backbone.weights={bad}/garbage.pth"], "not a readable PyTorch state dict (not a PyTorch checkpoint file)"),
    (["backbone.weights={bad}/truncated.pth"], "not a readable PyTorch state dict (a truncated or corrupt archive)"),
    (["backbone.weights={bad}/r18.pth"], "not weights for resnet50 ("),
    (["store.path=/proc/no/features.sqlite"], "store.path=/proc/no/features.sqlite: cannot write to /proc"),
    (["store.path={bad}/garbage.pth"], "the file exists and is not a SQLite database"),
    (["store.path={bad}/mlflow.db"], "not a feature store (tables alembic_version, "),
    (["store.path={bad}/foreign.sqlite"], "not a feature store (tables features; an MLflow database?)"),
    (["store.path={bad}/newer.sqlite"], "written by a newer version of the harness (schema 99; this one reads up to 2)"),
    (["store.path={bad}"], "not a regular file"),
    (["tracking.uri=http://127.0.0.1:{sick}"], "answers /health but its API fails (HTTP 503"),
    (["tracking.uri=sqlite:///{bad}/garbage.pth/mlflow.db"], "is not a folder"),
    (["tracking.uri=http://127.0.0.1:{port}"], "no MLflow server answers there within 3 s"),
    (["metric=minkowski", "metric.p=0"], "metric.p must be a number >= 1"),
    (["search=ivf", "+search.index.nprob=4"], "unknown key(s) nprob for search=ivf; accepted: nlist, nprobe"),
    (["engine=ray", "engine.workers=0"], "engine.workers must be a whole number >= 1 or [min, max]; got 0."),
    (["dataset.root={bad}/nopath"], "manifest.csv has no 'path' column"),
]


@pytest.fixture(scope="module")
def bad_setting_runs(tmp_path_factory, bad_files, sick_server):
    """Every bad setting as its own `python -m harness` process, four at a time (each mostly imports)."""
    from concurrent.futures import ThreadPoolExecutor

    catalog = make_catalog(tmp_path_factory.mktemp("bad_catalog"))
    before = file_digests(bad_files)

    def attempt(args):
        tmp = tmp_path_factory.mktemp("bad_run")
        t0 = time.time()
        proc = harness(tmp, "dataset=products", f"dataset.root={catalog}", "backbone=resnet50",
                       "backbone.weights=random", *[a.format(bad=bad_files, port=free_port(), sick=sick_server) for a in args])
        out, err = proc.communicate(timeout=240)
        return proc.returncode, out, err, tmp, time.time() - t0

    with ThreadPoolExecutor(4) as pool:
        outcomes = dict(zip(range(len(BAD_SETTINGS)), pool.map(attempt, [args for args, _ in BAD_SETTINGS])))
    assert file_digests(bad_files) == before  # no file given as a store was written into
    return outcomes


@pytest.mark.parametrize("case", range(len(BAD_SETTINGS)), ids=[" ".join(a) for a, _ in BAD_SETTINGS])
def test_bad_setting_is_one_line_on_stderr_and_nothing_is_written(bad_setting_runs, case):
    returncode, out, err, tmp_path, seconds = bad_setting_runs[case]
    message = BAD_SETTINGS[case][1]
    assert returncode == 2 and out == ""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err[-2000:]
    assert not (tmp_path / "mlruns").exists()  # no database, no feature store, no artifacts
    assert seconds < 60


def test_hydra_refuses_an_unknown_key_without_plus(tmp_path, catalog_dir):
    proc = harness(tmp_path, "dataset=products", f"dataset.root={catalog_dir}", "search.index.nprob=4")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "search.index.nprob" in err and "Traceback" not in err


def test_a_champion_is_never_a_run_with_a_non_finite_score():
    nan_run = {"run_id": "a", "params": {"backbone.arch": "x"}, "metrics": {"m": float("nan")}}
    good = {"run_id": "b", "params": {"backbone.arch": "x"}, "metrics": {"m": 0.1}}
    assert select_champion([nan_run, good], "m")["run_id"] == "b"
    with pytest.raises(HarnessError, match="finite"):
        select_champion([nan_run], "m")


def test_a_run_without_a_finite_selection_score_is_not_registered(tmp_path, catalog_dir):
    proc = harness(tmp_path, "dataset=products", f"dataset.root={catalog_dir}", "backbone=resnet50",
                   "backbone.weights=random", "backbone.input_size=64", "selection.metric=subcategory_precision_at_50")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "not registering fashion-visual-search: its selection metric is None" in err
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert client.search_registered_models() == []
