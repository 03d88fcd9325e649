"""What is cached or stored is verified when read, and every store fault is one line: through the CLI,
as a user meets them (a tampered network cache, garbage in stored vectors or in the store's pages, NaN
weights, a FIFO in the catalog), and through the library where the CLI cannot stage the fault (a full
disk, a store from before stores had checksums)."""
from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from harness import ROOT
from harness.data.images import BadImage, read_bytes
from harness.errors import HarnessError
from harness.store import APPLICATION_ID, SCHEMA_VERSION, FeatureStore, vector_crc
from tests.conftest import make_catalog

pytestmark = pytest.mark.slow


def harness(root, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "harness", "dataset=products", f"dataset.root={root / 'catalog'}",
                           f"paths.root={root}", f"paths.openvino={root / 'ov'}", "extract.progress=false",
                           "extract.num_workers=0", "serving.log_model=false", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def scores(root) -> list[dict]:
    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], order_by=["attributes.start_time ASC"])
    return [r.data.metrics for r in runs]


def one_error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """A catalog, an OpenVINO cache and a feature store written by one ordinary run."""
    root = tmp_path_factory.mktemp("integrity")
    make_catalog(root / "catalog")
    proc = harness(root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def copy_of(first_run, tmp_path):
    """A private copy of the first run's catalog, cache and store (each test damages its own)."""
    import shutil

    for name in ("catalog", "ov"):
        shutil.copytree(first_run / name, tmp_path / name)
    (tmp_path / "mlruns").mkdir()
    shutil.copy(first_run / "mlruns" / "features.sqlite", tmp_path / "mlruns" / "features.sqlite")
    return tmp_path


def test_a_tampered_network_cache_is_rebuilt_and_named_and_the_scores_hold(first_run, tmp_path):
    root = copy_of(first_run, tmp_path)
    xml = next((root / "ov").glob("*.xml"))
    weights = np.fromfile(xml.with_suffix(".bin"), dtype=np.float32)
    weights[len(weights) // 4: len(weights) // 2] *= -0.5  # same size, still a valid graph
    weights.tofile(xml.with_suffix(".bin"))
    (root / "mlruns" / "features.sqlite").unlink()  # every image embedded again, through the cache
    proc = harness(root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [line] = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "converting it again" in ln]
    assert str(xml) in line and "does not match the digest" in line
    assert "with torch instead" not in proc.stdout + proc.stderr  # rebuilt, not abandoned
    [before], [after] = scores(first_run), scores(root)
    assert after["images_extracted"] == 54
    assert after["subcategory_precision_at_5"] == before["subcategory_precision_at_5"]


def test_garbage_in_stored_vectors_is_found_and_re_extracted(first_run, tmp_path):
    root = copy_of(first_run, tmp_path)
    store = root / "mlruns" / "features.sqlite"
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT fingerprint, hash, length(vec) FROM features ORDER BY hash LIMIT 3").fetchall()
        for fingerprint, digest, size in rows:
            db.execute("UPDATE features SET vec = ? WHERE fingerprint = ? AND hash = ?",
                       (os.urandom(size), fingerprint, digest))
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"  # SQLite sees nothing wrong
    proc = harness(root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 stored vector(s) failed their checksum; they are embedded again" in proc.stdout + proc.stderr
    [before], [after] = scores(first_run), scores(root)
    assert after["images_extracted"] == 3
    assert after["subcategory_precision_at_5"] == before["subcategory_precision_at_5"]
    with sqlite3.connect(store) as db:  # repaired in place: every vector passes again
        assert all(vector_crc(h, v) == c for h, v, c in db.execute("SELECT hash, vec, crc FROM features"))


def test_garbage_in_the_store_pages_is_one_line(first_run, tmp_path):
    root = copy_of(first_run, tmp_path)
    store = root / "mlruns" / "features.sqlite"
    data = bytearray(store.read_bytes())
    page = 4096
    middle = (len(data) // page // 2) * page
    data[middle: middle + 4 * page] = os.urandom(4 * page)
    store.write_bytes(bytes(data))
    line = one_error_line(harness(root))
    assert f"store.path={store}: the feature store is damaged (database disk image is malformed)" in line
    assert "Move it aside" in line


def test_nan_weights_stop_the_run_in_one_line_and_store_nothing(first_run, tmp_path):
    from torchvision.models import resnet50

    root = copy_of(first_run, tmp_path)
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
             for k, v in resnet50().state_dict().items()}
    torch.save(state, tmp_path / "nan.pth")
    line = one_error_line(harness(root, "backbone=resnet50", f"backbone.weights={tmp_path / 'nan.pth'}",
                                  "backbone.input_size=64"))
    assert "the network returned NaN or infinity for every image it embedded (54)" in line
    assert f"check backbone.weights={tmp_path / 'nan.pth'}" in line and "k=" not in line
    with sqlite3.connect(root / "mlruns" / "features.sqlite") as db:
        counts = db.execute("SELECT e.description, count(f.hash) FROM extractors e LEFT JOIN features f "
                            "USING (fingerprint) GROUP BY e.fingerprint").fetchall()
    assert [n for description, n in counts if "resnet50" in description] == [0]


def test_a_fifo_socket_or_device_in_the_catalog_is_a_skipped_image(first_run, tmp_path):
    import pandas as pd

    root = copy_of(first_run, tmp_path)
    catalog = root / "catalog"
    os.mkfifo(catalog / "images" / "pipe.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(catalog / "images" / "sock.jpg"))
    (catalog / "images" / "zero.jpg").symlink_to("/dev/zero")
    manifest = pd.read_csv(catalog / "manifest.csv")
    extra = [{"path": f"images/{n}.jpg", "category": "odd", "subcategory": "odd", "item_id": n}
             for n in ("pipe", "sock", "zero")]
    pd.concat([manifest, pd.DataFrame(extra)]).to_csv(catalog / "manifest.csv", index=False)
    try:
        proc = harness(root, timeout=240)  # a FIFO used to block the hashing forever
    finally:
        sock.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    for what in ("pipe.jpg: not a regular file (a FIFO)", "sock.jpg: not a regular file (a socket)",
                 "/dev/zero: not a regular file (a device)"):  # the catalog resolves its links
        assert what in proc.stdout + proc.stderr
    [after] = scores(root)
    assert after["skipped_images"] == 3


@pytest.fixture
def small_disk(tmp_path):
    """A 192 KB file system (tmpfs; needs root, as CI and `make test` here run): room for part of a store."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mount)],
                                           capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_disk_that_fills_up_during_extraction_is_one_line_and_the_next_run_resumes(first_run, tmp_path, small_disk):
    root = copy_of(first_run, tmp_path)
    store = small_disk / "features.sqlite"
    line = one_error_line(harness(root, f"store.path={store}", "extract.batch_size=4"))
    assert f"store.path={store}: the disk is full (database or disk is full)" in line
    assert "The features stored so far are kept" in line and "resumes from them" in line
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        kept = db.execute("SELECT count(*) FROM features").fetchone()[0]
    assert 0 < kept < 54
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)  # space freed
    proc = harness(root, f"store.path={store}", "extract.batch_size=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert scores(root)[-1]["images_extracted"] == 54 - kept


def test_reads_are_regular_files_only_and_bounded(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(BadImage, match=r"not a regular file \(a FIFO\)"):
        read_bytes(tmp_path / "fifo")  # returns at once: opened without blocking
    with pytest.raises(BadImage, match=r"not a regular file \(a device\)"):
        read_bytes("/dev/zero")
    with pytest.raises(BadImage, match=r"not a regular file \(a folder\)"):
        read_bytes(tmp_path)
    (tmp_path / "big.jpg").write_bytes(b"\xff" * 2048)
    with pytest.raises(BadImage, match="larger than"):
        read_bytes(tmp_path / "big.jpg", limit=1024)
    assert read_bytes(tmp_path / "big.jpg", limit=2048) == b"\xff" * 2048


def store_with(tmp_path, n=20, dim=8):
    store = FeatureStore(str(tmp_path / "f.sqlite"))
    vectors = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    store.put("fp", [f"h{i}" for i in range(n)], vectors)
    return store, vectors


def test_a_full_disk_is_one_line_and_what_was_stored_is_kept(tmp_path):
    store, vectors = store_with(tmp_path)
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages}")  # this connection's disk is full now
    with pytest.raises(HarnessError) as err:
        store.put("fp", [f"new{i}" for i in range(2000)], np.ones((2000, 8), np.float32))
    message = str(err.value)
    assert message.startswith(f"store.path={tmp_path / 'f.sqlite'}: the disk is full (database or disk is full)")
    assert "stored so far are kept" in message and "\n" not in message
    store.close()
    again = FeatureStore(str(tmp_path / "f.sqlite"))
    found = again.get("fp", [f"h{i}" for i in range(20)])
    np.testing.assert_array_equal(np.stack([found[f"h{i}"] for i in range(20)]), vectors)


def test_non_finite_vectors_are_never_stored(tmp_path):
    store, _ = store_with(tmp_path)
    with pytest.raises(HarnessError, match="refusing to store non-finite vectors"):
        store.put("fp", ["a", "b"], np.array([[1.0] * 8, [np.nan] * 8], np.float32))
    half = FeatureStore(str(tmp_path / "h.sqlite"), "float16")
    with pytest.raises(HarnessError, match="store.dtype=float16 cannot hold"):
        half.put("fp", ["a"], np.full((1, 8), 1e6, np.float32))  # overflows float16
    assert store.get("fp", ["a", "b"]) == {} and half.get("fp", ["a"]) == {}


def test_a_store_identifies_itself_and_a_schema_1_store_is_migrated(tmp_path):
    old = tmp_path / "old.sqlite"
    vec = np.arange(4, dtype=np.float32)
    with sqlite3.connect(old) as db:  # a store as the harness wrote it before schema 2
        db.executescript("""
            CREATE TABLE extractors (fingerprint TEXT PRIMARY KEY, description TEXT, dim INTEGER);
            CREATE TABLE features (fingerprint TEXT NOT NULL, hash TEXT NOT NULL, vec BLOB NOT NULL,
                PRIMARY KEY (fingerprint, hash)) WITHOUT ROWID;
            CREATE TABLE claims (fingerprint TEXT NOT NULL, hash TEXT NOT NULL, owner TEXT NOT NULL,
                expires REAL NOT NULL, PRIMARY KEY (fingerprint, hash)) WITHOUT ROWID;
            CREATE TABLE neighbours (run_id TEXT NOT NULL, query TEXT NOT NULL, rank INTEGER NOT NULL,
                neighbour TEXT NOT NULL, distance REAL NOT NULL, PRIMARY KEY (run_id, query, rank));""")
        db.execute("INSERT INTO features VALUES ('fp', 'h', ?)", (vec.tobytes(),))
    store = FeatureStore(str(old))
    assert store.db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    np.testing.assert_array_equal(store.get("fp", ["h"])["h"], vec)  # its vector kept, with a checksum now
    new = FeatureStore(str(tmp_path / "new.sqlite"))
    assert new.db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID


def test_all_zero_features_stop_the_run_in_one_line(cfg_factory, catalog_dir, tmp_path, monkeypatch):
    from harness.backbones import build_backbone
    from harness.extract import extract
    from harness.preprocess import build_preprocess

    cfg = cfg_factory("backbone=resnet50", "backbone.weights=random", "runtime=torch",
                      "backbone.input_size=64")
    backbone = build_backbone(cfg)
    monkeypatch.setattr(backbone, "embed", lambda images: np.zeros((len(images), 2048), np.float32))
    paths = sorted(str(p) for p in (catalog_dir / "images").glob("*.jpg"))[:6]
    with pytest.raises(HarnessError, match=r"all-zero features for every image \(6\): check backbone.weights=random"):
        extract(paths, backbone, build_preprocess(cfg.preprocess, backbone), FeatureStore(str(tmp_path / "f.sqlite")),
                num_workers=0, progress=False)
