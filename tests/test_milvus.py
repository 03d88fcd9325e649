"""index.backend=milvus against Milvus Lite (embedded, from PyPI): the same versions, exact neighbours
and filtered answers as the in-process FAISS search."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from harness.index import IndexStore
from harness.index.milvus import MilvusIndex
from harness.metrics import Cosine, Euclidean
from harness.search import ExactIndex
from harness.serving.filters import CatalogFilter

pytest.importorskip("milvus_lite")


def catalog(n, seed, prefix="i"):
    rng = np.random.default_rng(seed)
    items = pd.DataFrame({"item_id": [f"{prefix}{i}" for i in range(n)], "content_hash": [f"h{prefix}{i}" for i in range(n)],
                          "path": [f"/c/{prefix}{i}.jpg" for i in range(n)],
                          "category": rng.choice(["Footwear", "Apparel", "Bags"], n),
                          "colour": rng.choice(["Red", "Blue", "Green", "Black"], n),
                          "price": rng.integers(5, 200, n).astype(str),
                          "in_stock": rng.choice(["true", "false"], n)})
    return items, rng.normal(size=(n, 16)).astype(np.float32)


@pytest.fixture
def milvus_uri(tmp_path):
    return str(tmp_path / "milvus.db")


FILTERS = [None, {"category": "Footwear"}, {"colour": ["Red", "Blue"], "price": {"lt": 50}},
           {"in_stock": True, "price": {"ge": 20, "le": 120}}, {"category": "Bags", "price": 77},
           {"colour": 'Navy "deep" \\ blue'}, {"colour": '" or true or "'},
           {"colour": "Red", "price": {"lt": 12}}]  # the last: fewer than k items match


@pytest.mark.parametrize("metric_spec", [{"_target_": "harness.metrics.Cosine"}, {"_target_": "harness.metrics.Euclidean"}])
def test_milvus_lite_gives_the_exact_neighbours_and_filtered_answers_of_faiss(tmp_path, milvus_uri, metric_spec):
    store = IndexStore(tmp_path / "index", "shop")
    items, vectors = catalog(400, 0)
    items.loc[:7, "colour"] = 'Navy "deep" \\ blue'  # quoting: a value is a literal, never expression text
    store.commit(items, vectors, full=True)
    milvus = MilvusIndex(milvus_uri, store, metric_spec)
    assert milvus.sync() == "built" and milvus.sync() == "held"
    snap = store.read()
    metric = Cosine() if "Cosine" in metric_spec["_target_"] else Euclidean()
    exact = ExactIndex(snap.vectors, metric)
    masks = CatalogFilter(snap.items)
    queries = np.random.default_rng(9).normal(size=(12, 16)).astype(np.float32)
    for filters in FILTERS:
        mask = masks.mask(filters)
        rows = np.arange(len(snap.items)) if mask is None else np.flatnonzero(mask)
        d_true, i_true = exact.search_rows(queries, 5, rows)
        d, rid = milvus.search(queries, 5, snap.version, filters, lambda c: set(snap.items[c]))
        positions = np.where(rid >= 0, np.searchsorted(snap.ids, rid), -1)
        np.testing.assert_array_equal(positions, i_true, err_msg=str(filters))
        np.testing.assert_allclose(d[np.isfinite(d)], d_true[np.isfinite(d_true)], rtol=1e-4, atol=1e-4)
        assert (positions >= 0).sum(1).tolist() == [min(5, len(rows))] * len(queries)  # never fewer than match
    assert len(np.flatnonzero(masks.mask(FILTERS[-1]))) < 5


def test_milvus_follows_updates_in_place_and_answers_each_version_apart(tmp_path, milvus_uri):
    store = IndexStore(tmp_path / "index", "shop")
    items, vectors = catalog(300, 1)
    v1 = store.commit(items, vectors, full=True)
    milvus = MilvusIndex(milvus_uri, store, {"_target_": "harness.metrics.Cosine"})
    milvus.sync()
    added, fresh = catalog(30, 2, prefix="n")
    gone = set(items["item_id"][:30])
    v2 = store.commit(added, fresh, gone, parent=v1)
    assert milvus.sync(v2, added, fresh) == "updated"
    assert milvus.meta()["versions"][str(v1)] == milvus.meta()["versions"][str(v2)]  # one collection, in place
    queries = np.concatenate([fresh[:5], vectors[:5]])  # the new items themselves, and removed ones
    for version in (v1, v2):
        snap = store.read(version)
        d, rid = milvus.search(queries, 3, version)
        truth = ExactIndex(snap.vectors, Cosine()).search(queries, 3)[1]
        np.testing.assert_array_equal(np.searchsorted(snap.ids, rid), truth)
        found = set(snap.items["item_id"].iloc[np.searchsorted(snap.ids, rid).ravel()])
        assert not (found - set(snap.items["item_id"]))
    # roll back to v1, then update from it: the abandoned v2's rows leave, v1's live rows stay live
    store.point(v1)
    again, more = catalog(10, 3, prefix="m")
    v3 = store.commit(again, more, set(items["item_id"][100:110]), parent=v1)
    assert milvus.sync(v3, again, more) == "updated" and not milvus.holds(v2)
    snap = store.read(v3)
    d, rid = milvus.search(np.concatenate([more[:3], fresh[:3], vectors[:3]]), 2, v3)
    np.testing.assert_array_equal(np.searchsorted(snap.ids, rid),
                                  ExactIndex(snap.vectors, Cosine()).search(np.concatenate([more[:3], fresh[:3], vectors[:3]]), 2)[1])
    counted = milvus.client.query(milvus.meta()["versions"][str(v3)], filter=f"since <= {v3} and until > {v3}",
                                  output_fields=["row_id"], limit=1000)
    assert sorted(r["row_id"] for r in counted) == snap.ids.tolist()


def test_a_model_served_from_milvus_answers_as_the_faiss_one_and_follows_updates(cfg_factory, catalog_dir, tmp_path):
    from harness import ROOT
    from harness.index.lifecycle import build as build_index
    from harness.index.lifecycle import open_index, update
    from harness.index.milvus import reference
    from harness.pipeline import build
    from harness.serving.searcher import Searcher, Settings

    uri = str(tmp_path / "milvus.db")
    manifest = pd.read_csv(catalog_dir / "manifest.csv", dtype=str)
    manifest.assign(product_id=manifest["subcategory"]).to_csv(catalog_dir / "manifest.csv", index=False)  # several photos each
    cfg = cfg_factory("dataset=products", f"dataset.root={catalog_dir}", "backbone.weights=random",
                      "backbone.input_size=64", "runtime=torch", "tracker=none", "index.backend=milvus",
                      f"index.uri={uri}")
    pipe = build(cfg)
    built = build_index(pipe)
    assert built["milvus"] == ["built"]
    index = open_index(cfg)
    models = {}
    for backend in ("faiss", "milvus"):
        settings = Settings.from_cfg(cfg, str(catalog_dir), {"run_id": "t"})
        settings.index = {"root": str(index.dir.parent), "name": index.name, "version": 1, "follow": True,
                          **(reference(cfg) if backend == "milvus" else {"backend": "faiss"})}
        models[backend] = Searcher.load(Searcher.write(tmp_path / backend, settings))
    assert models["milvus"].served.features.size == 0  # its vectors are in Milvus, not in this process
    manifest = pd.read_csv(catalog_dir / "manifest.csv", dtype=str)
    photos = [catalog_dir / p for p in manifest["path"][:6]]
    for options in ({}, {"within_category": True}, {"filters": {"colour": ["red", "blue"]}},
                    {"filters": {"margin": {"gt": 0.3}}, "k": 3}):
        for rule in ("best", "mean"):  # a product's distance: its best photo's, its photos' mean
            for m in models.values():
                m.products = {**m.products, "distance": rule}
            answers = {b: m.search(photos, **options) for b, m in models.items()}
            for a, b in zip(answers["faiss"], answers["milvus"]):
                assert a["item_id"].tolist() == b["item_id"].tolist(), (options, rule)
                assert a["product_id"].is_unique
                np.testing.assert_allclose(a["distance"], b["distance"], rtol=1e-4, atol=1e-5)
    for m in models.values():
        m.products = {**m.products, "distance": "best"}
    # an update reaches Milvus in place, and the model serving from it follows
    manifest = pd.concat([manifest.iloc[1:], manifest.iloc[[0]].assign(item_id="again-0")], ignore_index=True)
    manifest.to_csv(catalog_dir / "manifest.csv", index=False)
    result = update(pipe)
    assert result["version"] == 2 and result["milvus"] == ["updated"]
    assert models["milvus"].reload() == 2
    top = models["milvus"].search(photos[:1], k=1)[0]
    assert top["item_id"].tolist() == ["again-0"] and top["index_version"].tolist() == [2]

    # the CLI in another process while this one holds the Lite file: it leaves Milvus to the serving
    # process, which syncs the version when it loads it
    manifest = manifest[manifest["item_id"] != "again-0"]
    manifest.to_csv(catalog_dir / "manifest.csv", index=False)
    out = subprocess.run([sys.executable, "-m", "harness.index", "update", "dataset=products", f"dataset.root={catalog_dir}",
                          "backbone.weights=random", "backbone.input_size=64", "runtime=torch", "index.backend=milvus",
                          f"index.uri={uri}", f"paths.root={tmp_path}", "extract.progress=false", "extract.num_workers=0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["version"] == 3 and result["removed"] == 1 and result["milvus"] == ["deferred to the process serving it"]
    assert models["milvus"].reload() == 3
    top = models["milvus"].search(photos[:1], k=1)[0]
    assert top["item_id"].tolist() != ["again-0"] and top["index_version"].tolist() == [3]


LOAD_AND_SEARCH = """
import base64, json, sys
from harness.config import compose_config
from harness.tracking.models import load_served
model, searcher, _ = load_served(compose_config(*sys.argv[2:]))
photo = base64.b64encode(open(sys.argv[1], "rb").read()).decode()
table = searcher.search([photo], k=3, filters={"colour": "red"})[0]
print(json.dumps({"local": searcher.served.local, "remote": type(searcher.remote).__name__,
                  "items": table["item_id"].tolist(), "colours": table["colour"].tolist()}))
"""


@pytest.mark.slow
def test_a_run_with_index_backend_milvus_registers_a_model_that_serves_from_it(tmp_path):
    import json
    import subprocess
    import sys

    from harness import ROOT
    from tests.conftest import SHARED, make_catalog

    catalog = make_catalog(tmp_path / "catalog")
    overrides = ["dataset=products", f"dataset.root={catalog}", f"paths.root={tmp_path}", "extract.progress=false",
                 "extract.num_workers=0", "index.backend=milvus", "projection=pca", "projection.dim=16", *SHARED]
    subprocess.run([sys.executable, "-m", "harness", *overrides], cwd=ROOT, check=True, capture_output=True, timeout=600)
    assert (tmp_path / "mlruns" / "index" / "milvus.db").exists()
    photo = sorted((catalog / "images").glob("circle_red_*.jpg"))[0]
    out = subprocess.run([sys.executable, "-c", LOAD_AND_SEARCH, str(photo), f"paths.root={tmp_path}"], cwd=ROOT,
                         check=True, capture_output=True, text=True, timeout=600)
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    assert answer["local"] is False and answer["remote"] == "MilvusIndex"
    assert answer["colours"] == ["red"] * 3 and answer["items"][0] == photo.stem.replace("_", "-")


def test_a_full_build_is_a_new_collection_and_the_versions_before_it_still_answer(tmp_path, milvus_uri):
    store = IndexStore(tmp_path / "index", "shop")
    items, vectors = catalog(200, 4)
    v1 = store.commit(items, vectors, full=True)
    milvus = MilvusIndex(milvus_uri, store, {"_target_": "harness.metrics.Euclidean"})
    milvus.sync()
    other, more = catalog(150, 5, prefix="x")
    other["season"] = "winter"   # a column the first collection does not have
    v2 = store.commit(other, more + 5.0, full=True)   # another centring offset
    assert milvus.sync() == "built"
    collections = milvus.meta()["versions"]
    assert collections[str(v1)] != collections[str(v2)]
    for version, filters in ((v1, {"colour": "Red"}), (v2, {"season": "winter", "colour": "Red"})):
        snap = store.read(version)
        rows = np.flatnonzero(CatalogFilter(snap.items).mask(filters))
        q = snap.vectors[:4] + 0.1
        _, rid = milvus.search(q, 5, version, filters)
        np.testing.assert_array_equal(np.searchsorted(snap.ids, rid), ExactIndex(snap.vectors, Euclidean()).search_rows(q, 5, rows)[1])
