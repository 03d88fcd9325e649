"""The served catalog index: versions, updates that embed only what changed, crashes, swaps under load."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness import ROOT
from harness.errors import HarnessError
from harness.index import IndexStore
from harness.index.lifecycle import build as build_index
from harness.index.lifecycle import open_index, update
from harness.pipeline import build
from tests.conftest import COLOURS, draw_product


def items(ids, tag="old"):
    return pd.DataFrame({"item_id": ids, "content_hash": [f"h-{i}" for i in ids], "path": [f"/c/{i}.jpg" for i in ids],
                         "category": ["x"] * len(ids), "edition": [tag] * len(ids)})


def vectors(n, seed):
    return np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)


def test_versions_hold_only_their_changes_and_are_checked_when_read(tmp_path):
    store = IndexStore(tmp_path, "shop")
    ids = [f"i{n}" for n in range(100)]
    first = vectors(100, 0)
    assert store.commit(items(ids), first, full=True) == 1
    # 5 added, 2 changed (new vectors), 3 removed
    fresh = items([f"n{n}" for n in range(5)] + ["i0", "i1"], tag="new")
    second = vectors(7, 1)
    assert store.commit(fresh, second, {"i97", "i98", "i99"}, parent=1) == 2
    snap = store.read()
    assert snap.version == 2 and len(snap.items) == 102 and store.current() == 2
    by_id = dict(zip(snap.items["item_id"], snap.vectors))
    np.testing.assert_array_equal(by_id["i0"], second[5])
    np.testing.assert_array_equal(by_id["i50"], first[50])
    assert not {"i97", "i98", "i99"} & set(by_id) and len(snap.manifest["segments"]) == 2
    # the update wrote only its own rows: the first segment is the one version 1 wrote
    assert snap.manifest["segments"][0]["id"] == store.manifest(1)["segments"][0]["id"]
    # roll back: version 1 is whole
    store.point(1)
    assert store.current() == 1 and len(store.read().items) == 100
    with pytest.raises(HarnessError, match="moved to version 1 while this update was based on 2"):
        store.commit(fresh, second, parent=2)
    # a segment file changed on disk is never served
    segment = store.dir / "segments" / store.manifest(1)["segments"][0]["id"] / "vectors.npy"
    data = bytearray(segment.read_bytes())
    data[-1] ^= 1
    segment.write_bytes(bytes(data))
    with pytest.raises(HarnessError, match="does not match the digest"):
        store.read(1)
    with pytest.raises(HarnessError, match="is not on this machine"):
        IndexStore(tmp_path / "elsewhere", "shop").read()


CRASHING_BUILD = """
import sys, time, numpy as np, pandas as pd
from pathlib import Path
from harness.index import IndexStore
save = np.save
def slow_save(path, array):
    with open(path, "wb") as fh:                  # half the vectors written, then the process is killed
        fh.write(b"\\x93NUMPY" + b"0" * 1000)
    Path(sys.argv[2]).write_text("writing")
    time.sleep(600)
np.save = slow_save
n = 1000
items = pd.DataFrame({"item_id": [f"i{k}" for k in range(n)], "content_hash": ["h"] * n, "path": ["p"] * n})
IndexStore(sys.argv[1], "shop").commit(items, np.ones((n, 8), np.float32), full=True)
"""


def test_a_build_killed_midway_leaves_the_previous_version_serving(tmp_path):
    store = IndexStore(tmp_path, "shop")
    store.commit(items(["a", "b", "c"]), vectors(3, 0), full=True)
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_BUILD, str(tmp_path), str(marker)], cwd=ROOT)
    try:
        for _ in range(600):  # bounded: at most 60 s for the child to reach the middle of its write
            if marker.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert marker.exists(), "the build never started writing"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert store.current() == 1 and store.versions() == [1]
    assert store.read().items["item_id"].tolist() == ["a", "b", "c"]
    # the next build is not blocked by the dead one's leftovers (its lock died with it)
    assert store.commit(items(["d"]), vectors(1, 2), parent=1) == 2


def add_image(catalog: Path, name: str, shape: str, colour: str, seed: int) -> str:
    rel = f"images/{name}.jpg"
    draw_product(shape, COLOURS[colour], np.random.default_rng(seed)).save(catalog / rel, quality=95)
    return rel


def test_update_embeds_only_new_and_changed_images_and_deletes_what_is_gone(cfg_factory, catalog_dir):
    cfg = cfg_factory("dataset=products", f"dataset.root={catalog_dir}", "backbone.weights=random",
                      "backbone.input_size=64", "runtime=torch", "tracker=none")
    built = build_index(build(cfg))
    manifest = pd.read_csv(catalog_dir / "manifest.csv", dtype=str)
    assert built["version"] == 1 and built["added"] == len(manifest) == built["embedded"]

    rows = manifest.copy()
    rows = rows[rows["item_id"] != "circle-red-0"]                                  # removed
    rows.loc[rows["item_id"] == "circle-red-1", "margin"] = "0.999"                 # values only
    changed = rows.loc[rows["item_id"] == "square-blue-2", "path"].iloc[0]
    add_image(catalog_dir, Path(changed).stem, "triangle", "green", 7)             # another photo, same id
    new = [{"path": add_image(catalog_dir, f"new_{n}", "circle", "blue", 10 + n), "category": "circle",
            "subcategory": "circle-blue", "item_id": f"new-{n}", "colour": "blue", "margin": "0.5"} for n in range(2)]
    rows = pd.concat([rows, pd.DataFrame(new)], ignore_index=True)
    rows.to_csv(catalog_dir / "manifest.csv", index=False)

    result = update(build(cfg))
    assert (result["added"], result["changed"], result["removed"]) == (2, 2, 1)
    assert result["unchanged"] == len(manifest) - 3 and result["version"] == 2
    assert result["embedded"] == 3  # the two new photos and the replaced one; a price change embeds nothing
    snap = open_index(cfg).read()
    assert sorted(snap.items["item_id"]) == sorted(rows["item_id"])
    assert snap.items.set_index("item_id").loc["circle-red-1", "margin"] == "0.999"
    # the replaced photo's vector is its new image's
    again = build_index(build(cfg))  # a full build of the catalog as it is now: the same vectors
    full = open_index(cfg).read(again["version"])
    a = dict(zip(snap.items["item_id"], snap.vectors))
    b = dict(zip(full.items["item_id"], full.vectors))
    for item in ("square-blue-2", "new-0", "circle-red-1"):
        np.testing.assert_array_equal(a[item], b[item])
    assert again["embedded"] == 0  # everything from the feature store
    # nothing changed since: no new version
    assert update(build(cfg))["version"] == again["version"]


@pytest.mark.parametrize("search", ["exact", "ivf"])
def test_served_searcher_swaps_versions_under_concurrent_queries(cfg_factory, catalog_dir, tmp_path, search):
    from harness.serving.searcher import Searcher, Settings

    manifest = pd.read_csv(catalog_dir / "manifest.csv", dtype=str)
    manifest["edition"] = "old"
    manifest.to_csv(catalog_dir / "manifest.csv", index=False)
    cfg = cfg_factory("dataset=products", f"dataset.root={catalog_dir}", "backbone.weights=random",
                      "backbone.input_size=64", "runtime=torch", "tracker=none", f"search={search}",
                      *(["search.index.nlist=4"] if search == "ivf" else []))
    pipe = build(cfg)
    build_index(pipe)
    index = open_index(cfg)
    settings = Settings.from_cfg(cfg, str(catalog_dir), {"run_id": "t"})
    settings.index = {"root": str(index.dir.parent), "name": index.name, "version": 1, "follow": True}
    searcher = Searcher.load(Searcher.write(tmp_path / "model", settings))
    searcher.poll_seconds = 0.05
    photos = [catalog_dir / p for p in manifest["path"][:20]]
    answers, errors, stop = [], [], threading.Event()

    def client(photo):
        for _ in range(200):  # bounded
            try:
                answers.append(searcher.search([photo], k=5)[0])
            except Exception as exc:  # noqa: BLE001 - every failure counts
                errors.append(repr(exc))
            if stop.is_set():
                return

    threads = [threading.Thread(target=client, args=(p,)) for p in photos]
    for t in threads:
        t.start()
    manifest["edition"] = "new"  # every item's values change, and one item is added
    manifest = pd.concat([manifest, manifest.iloc[[0]].assign(item_id="extra-0")], ignore_index=True)
    manifest.to_csv(catalog_dir / "manifest.csv", index=False)
    result = update(pipe)
    # the served IVF structure (built when the model loaded) moved to the new version by the update
    assert result["version"] == 2 and result["structures_moved"] == (search == "ivf")
    for _ in range(300):  # bounded: the searcher finds the new version within seconds
        if searcher.version == 2:
            break
        time.sleep(0.05)
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    assert errors == [] and searcher.version == 2
    seen = {}
    for table in answers:
        [version] = table["index_version"].unique()  # one version per answer
        [edition] = table["edition"].unique()        # and only that version's items
        seen[version] = edition
        assert edition == {1: "old", 2: "new"}[version]
    assert set(seen) == {1, 2}


def test_a_served_model_never_moves_onto_another_extractors_vectors(cfg_factory, catalog_dir, tmp_path, caplog):
    from harness.serving.searcher import Searcher, Settings

    cfg = cfg_factory("dataset=products", f"dataset.root={catalog_dir}", "backbone.weights=random",
                      "backbone.input_size=64", "runtime=torch", "tracker=none")
    build_index(build(cfg))
    index = open_index(cfg)
    mine = index.read(1)
    fingerprint = mine.manifest["fingerprint"]
    settings = Settings.from_cfg(cfg, str(catalog_dir), {"run_id": "t"})
    settings.index = {"root": str(index.dir.parent), "name": index.name, "version": 1, "follow": True,
                      "fingerprint": fingerprint}
    model = Searcher.write(tmp_path / "model", settings)
    info = {k: v for k, v in mine.manifest.items() if k not in ("version", "parent", "created", "dim", "segments", "next_id")}
    # another extractor's vectors of the same catalog made current (e.g. a fine-tuned network's)
    other = np.random.default_rng(0).normal(size=mine.vectors.shape).astype(np.float32)
    assert index.commit(mine.items, other, full=True, info={**info, "fingerprint": "someone-else"}) == 2
    with caplog.at_level("WARNING"):
        searcher = Searcher.load(model)
    assert searcher.version == 1 and "another extractor's vectors" in caplog.text
    np.testing.assert_array_equal(searcher.features, mine.vectors)
    with pytest.raises(HarnessError, match="another extractor's vectors"):
        searcher.reload(2)
    searcher.poll_seconds = 0.0
    for _ in range(200):  # bounded: following, the foreign version is tried once and refused
        searcher.current()
        if searcher._refused == 2:
            break
        time.sleep(0.02)
    assert searcher._refused == 2 and searcher.version == 1
    # the index moves on to vectors of the model's own extractor: followed
    assert index.commit(mine.items.iloc[:-1], mine.vectors[:-1], full=True, info=info) == 3
    for _ in range(200):
        if searcher.current().version == 3:
            break
        time.sleep(0.02)
    assert searcher.version == 3 and len(searcher.catalog) == len(mine.items) - 1
    # a model pinned to a version of another extractor is refused outright
    settings.index = {**settings.index, "version": 2, "follow": False}
    with pytest.raises(HarnessError, match="another extractor's vectors"):
        Searcher.load(Searcher.write(tmp_path / "pinned", settings))


def test_runs_of_a_sweep_publish_the_catalog_once(cfg_factory, catalog_dir, tmp_path):
    from tests.conftest import SHARED

    common = ("dataset=products", f"dataset.root={catalog_dir}", "backbone.weights=random", "backbone.input_size=64",
              "runtime=torch")
    # a real sweep, in its own process (MLflow's tracking URI is process-wide)
    proc = subprocess.run([sys.executable, "-m", "harness", "-m", *common, "metric=cosine,euclidean",
                           f"paths.root={tmp_path}", "extract.progress=false", "extract.num_workers=0", *SHARED],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    index = open_index(cfg_factory(*common))
    assert index.versions() == [1]  # the second run found its vectors already there
    models = list((tmp_path / "mlruns").rglob("settings.json"))
    assert len(models) == 2 and all(json.loads(m.read_text())["index"]["version"] == 1 for m in models)
    for model in models:  # no catalog vectors in a model
        assert not list(model.parent.glob("*.npy")) and not (model.parent / "catalog.csv").exists()


def test_an_ivf_structure_moves_in_place_with_the_versions_and_is_checked_when_read(tmp_path):
    from harness.index.structures import Structures, refresh
    from harness.search import ExactIndex
    from harness.search.ivf import IVFIndex

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 8)).astype(np.float32) * 4
    def clustered(n, seed):
        r = np.random.default_rng(seed)
        return (centres[r.integers(0, 20, n)] + r.normal(size=(n, 8))).astype(np.float32)

    store = IndexStore(tmp_path, "shop")
    ids = [f"i{n}" for n in range(600)]
    store.commit(items(ids), clustered(600, 1), full=True)
    spec = {"_target_": "harness.search.ivf.IVFIndex", "_partial_": True, "nlist": 16, "nprobe": 16, "rerank": 4}
    metric = {"_target_": "harness.metrics.Cosine"}
    structures = Structures(store, metric, spec)
    first = structures.open(store.read())
    assert isinstance(first, IVFIndex) and (structures.dir / "1.faiss").exists()
    trained = first.faiss.quantizer.reconstruct_n(0, 16)

    # 10 % changed: 60 removed, 60 added; the structure follows without being trained again
    gone = set(ids[:60])
    added = items([f"n{n}" for n in range(60)], "new")
    fresh = clustered(60, 2)
    version = store.commit(added, fresh, gone, parent=1)
    assert refresh(store, version, fresh) == [structures.key]
    record = json.loads((structures.dir / f"{version}.json").read_text())
    assert record["from_parent"] == 1 and record["rows"] == 600
    snap = store.read()
    moved = structures.open(snap)
    np.testing.assert_array_equal(moved.faiss.quantizer.reconstruct_n(0, 16), trained)  # same cells
    assert moved.faiss.ntotal == 600
    # every cell scanned (nprobe = nlist): the moved structure's answers are the exact ones
    queries = clustered(30, 3)
    exact = ExactIndex(snap.vectors, structures.metric).search(queries, 5)
    d, i = moved.search(queries, 5)
    np.testing.assert_array_equal(i, exact[1])
    np.testing.assert_allclose(d, exact[0], rtol=1e-5, atol=1e-5)
    assert not set(snap.items["item_id"].iloc[i.ravel()]) & gone

    # a structure file that does not match its digest is never used: built again from the vectors
    with open(structures.dir / f"{version}.faiss", "r+b") as fh:
        fh.seek(200)
        fh.write(b"\0" * 16)
    rebuilt = structures.open(store.read())
    assert json.loads((structures.dir / f"{version}.json").read_text())["from_parent"] is not None
    np.testing.assert_array_equal(rebuilt.search(queries, 5)[1], exact[1])
