"""log → register → load by alias → predict, on a synthetic catalog; and the searcher's edge cases."""
from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from PIL import Image

from harness.errors import HarnessError
from harness.tracking.models import model_info

pytestmark = pytest.mark.slow
from tests.conftest import URI


def b64(path) -> str:
    return base64.b64encode(open(path, "rb").read()).decode()


def test_catalog_image_finds_itself_first_through_the_registered_model(served):
    item = pd.read_csv(served["catalog"] / "manifest.csv").iloc[7]
    out = served["model"].predict(pd.DataFrame({"image": [b64(served["catalog"] / item["path"])]}))
    assert list(out["rank"]) == [1, 2, 3, 4, 5]
    assert out["item_id"].iloc[0] == item["item_id"] and out["distance"].iloc[0] < 1e-3
    assert {"category", "subcategory", "similarity", "image", "query"} <= set(out.columns)
    assert out["image"].iloc[0] == item["path"] and "path" not in out  # relative to the catalog root
    info = model_info(URI)
    assert info["run_id"] and "subcategory_precision_at_5" in info["metrics"]


def test_params_k_category_filter_and_rerank(served):
    catalog = pd.read_csv(served["catalog"] / "manifest.csv")
    image = b64(served["catalog"] / catalog["path"].iloc[0])  # a circle
    out = served["model"].predict(pd.DataFrame({"image": [image, image]}),
                                  params={"k": 3, "within_category": True})
    assert len(out) == 6 and (out["category"] == "circle").all() and (out["predicted_category"] == "circle").all()
    plain = served["searcher"].search([image], k=5, rerank_column="margin", rerank_weight=0.0)[0]
    biased = served["searcher"].search([image], k=5, rerank_column="margin", rerank_weight=1.0)[0]
    assert plain["item_id"].iloc[0] == catalog["item_id"].iloc[0]
    margins = biased["business_score"].to_numpy()
    assert (np.diff(margins) <= 0).all()  # weight 1: ordered by the business column alone


def test_filters_through_the_model_params(served):
    """Pre-filtering: the top k among the matching items, all of them when fewer than k match."""
    catalog = pd.read_csv(served["catalog"] / "manifest.csv", dtype=str)
    image = b64(served["catalog"] / catalog["path"].iloc[0])  # a red circle
    filters = {"category": ["square", "triangle"], "colour": "blue"}
    out = served["model"].predict(pd.DataFrame({"image": [image]}), params={"k": 5, "filters": json.dumps(filters)})
    assert len(out) == 5 and set(out["category"]) <= {"square", "triangle"} and (out["colour"] == "blue").all()
    # the same answers as a brute-force search of the matching items alone
    searcher = served["searcher"]
    matching = catalog[catalog["category"].isin(filters["category"]) & (catalog["colour"] == "blue")]
    rows = np.flatnonzero(searcher.catalog["item_id"].isin(matching["item_id"]).to_numpy())
    query = searcher.embed([Image.open(served["catalog"] / catalog["path"].iloc[0]).convert("RGB")])
    distance = searcher.metric.pairwise(query, searcher.features[rows])[0]
    expected = searcher.catalog["item_id"].iloc[rows[np.argsort(distance, kind="stable")[:5]]].tolist()
    assert out["item_id"].tolist() == expected
    few = served["model"].predict(pd.DataFrame({"image": [image]}),
                                  params={"k": 5, "filters": json.dumps({"item_id": ["square-blue-1", "circle-red-3"]})})
    assert sorted(few["item_id"]) == ["circle-red-3", "square-blue-1"]  # fewer than k match: all of them
    for bad, said in (({"size": "M"}, "not a catalog column"), ("{oops", "JSON object")):
        with pytest.raises(MlflowException, match=said):
            served["model"].predict(pd.DataFrame({"image": [image]}),
                                    params={"filters": bad if isinstance(bad, str) else json.dumps(bad)})


@pytest.mark.parametrize("bad", ["not base64 at all!", base64.b64encode(b"plain text").decode(), ""])
def test_bad_inputs_are_clear_errors(served, bad):
    with pytest.raises(MlflowException, match="bad input"):
        served["model"].predict(pd.DataFrame({"image": [bad]}))


@contextmanager
def rest_api(root: Path):
    """`mlflow models serve` of the champion under root, on a free loopback port; yields post(records)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlruns/mlflow.db",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}  # uvicorn
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", URI, "--env-manager", "local",
                               "-h", "127.0.0.1", "-p", str(port), "--workers", "1"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"

    def post(records, params=None):
        body = {"dataframe_records": records, **({"params": params} if params else {})}
        req = urllib.request.Request(f"{base}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                time.sleep(1)
        post.server = server
        yield post
    finally:
        server.terminate()
        server.wait(timeout=30)


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (from /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, ValueError, IndexError):
            pass
    tree, grew = {pid}, True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in tree and child not in tree:
                tree.add(child)
                grew = True
    total = 0
    for p in tree:
        try:
            total += int(next(line for line in open(f"/proc/{p}/status") if line.startswith("VmRSS")).split()[1]) << 10
        except (OSError, StopIteration):
            pass
    return total


def test_rest_api_via_mlflow_models_serve(served):
    with rest_api(served["root"]) as post:
        item = pd.read_csv(served["catalog"] / "manifest.csv").iloc[11]
        status, body = post([{"image": b64(served["catalog"] / item["path"])}])
        assert status == 200
        rows = body["predictions"]
        assert len(rows) == 5 and rows[0]["item_id"] == item["item_id"] and rows[0]["rank"] == 1
        assert str(served["root"]) not in json.dumps(body)  # no server path in a response
        status, body = post([{"image": base64.b64encode(b"not an image").decode()}])
        assert 400 <= status < 500 and "bad input" in body["message"]
        # a path on the server is not an image: the same answer whether the file exists or not
        answers = [post([{"image": name}]) for name in
                   (str(served["catalog"] / item["path"]), "/etc/passwd", "/no/such/file.jpg")]
        assert all(status == 400 for status, _ in answers)
        # (MLflow's message starts by echoing the request itself; what the server says follows "Error:")
        said = {body["message"].split("Error:", 1)[1] for _, body in answers}
        assert said == {" bad input: not base64-encoded image data"}
        status, body = post([{"image": "A" * (16 << 20)}])  # 12 MB once decoded: refused before decoding
        assert status == 400 and "larger than 10 MB" in body["message"]
        status, _ = post([{"image": b64(served["catalog"] / item["path"])}])
        assert status == 200  # and the server is still up
        status, body = post([{"image": b64(served["catalog"] / item["path"])}],
                            {"filters": json.dumps({"colour": ["blue"], "category": "square"})})
        assert status == 200 and {(r["colour"], r["category"]) for r in body["predictions"]} == {("blue", "square")}
        status, body = post([{"image": b64(served["catalog"] / item["path"])}], {"filters": '{"path": "/etc"}'})
        assert status == 400 and "not a catalog column" in body["message"]


def test_rest_api_bounds_what_one_request_may_cost(served):
    """k and rows per request are bounded by the model's serving limits, before anything is decoded:
    k=10^9 once took the server to 14 GB; now it is a 400 naming the limit (and 0 is refused like -1)."""
    limit = served["searcher"].max_k
    image = b64(served["catalog"] / "images" / "circle_red_0.jpg")
    with rest_api(served["root"]) as post:
        for k in (0, -1, limit + 1, 10**8, 10**9):
            status, body = post([{"image": image}], {"k": k})
            assert status == 400 and f"k must be between 1 and {limit}" in body["message"], (k, body)
        assert tree_rss(post.server.pid) < 3 << 30  # no request above allocated for its k
        status, body = post([{"image": image}] * 17)
        assert status == 400 and "at most 16 (serving.max_rows)" in body["message"]
        status, body = post([{"image": image}], {"k": limit})
        assert status == 200 and len(body["predictions"]) == limit


def test_limits_are_checked_before_any_decoding(served, monkeypatch):
    from harness.data.images import BadImage
    from harness.serving import searcher as searcher_mod

    monkeypatch.setattr(searcher_mod, "decode_upload", lambda *a: pytest.fail("decoded a request over a limit"))
    for k in (0, 10**9, 2.5, True, "5"):
        with pytest.raises(BadImage, match="k must be"):
            served["searcher"].search(["x"], k=k)
    with pytest.raises(BadImage, match="serving.max_rows"):
        served["searcher"].search(["x"] * 17)


def test_a_string_is_never_read_as_a_file(tmp_path):
    """A client that sends a server path learns nothing: existing and missing files give the same answer."""
    from pathlib import Path

    from harness.data.images import BadImage
    from harness.serving import requests as requests_mod

    image = tmp_path / "x.png"
    from PIL import Image
    Image.new("RGB", (8, 8), (200, 0, 0)).save(image)
    answers = []
    for name in (str(image), "/etc/passwd", str(tmp_path / "missing.jpg")):
        with pytest.raises(BadImage) as err:
            requests_mod.decode_upload(name)
        answers.append(str(err.value))
    assert answers == ["not base64-encoded image data"] * 3
    assert requests_mod.decode_upload(Path(image)).size == (8, 8)  # in-process callers ask with a Path


def test_sizes_are_checked_before_reading_or_decoding(tmp_path, monkeypatch):
    from pathlib import Path

    from harness.data.images import BadImage
    from harness.serving import requests as requests_mod

    monkeypatch.setattr(requests_mod, "MAX_UPLOAD_BYTES", 1000)
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\0" * 1001)
    decoded = []
    monkeypatch.setattr(requests_mod.base64, "b64decode", lambda *a, **k: decoded.append(1))
    with pytest.raises(BadImage, match="larger than"):
        requests_mod.decode_upload("A" * 1400)  # base64 of 1,050 bytes: refused before b64decode runs
    assert decoded == []
    monkeypatch.setattr(requests_mod, "open", lambda *a, **k: pytest.fail("read a file over the limit"), raising=False)
    with pytest.raises(BadImage, match="larger than"):
        requests_mod.decode_upload(Path(big))


def test_served_lda_projection_answers_as_the_evaluation_searches(tmp_path):
    """projection=lda with augment=class_mean and query_expansion=alpha: the REST answer for a catalog
    photo is the top-5 that evaluate() finds for that item with the projection and the augmentation
    fitted once on the whole served catalog, the photo's vector expanded. (A fixed shrinkage: with the
    cross-validated one, 72 synthetic images in 1280 dimensions collapse each label to a point, and
    the order inside it is float32 noise.)"""
    from harness import ROOT
    from harness.backbones import build_backbone
    from harness.config import compose_config, instantiate
    from harness.data import Catalog
    from harness.evaluate import evaluate
    from harness.evaluators import PrecisionAtK
    from harness.extract import extract
    from harness.preprocess import build_preprocess
    from harness.protocols import Fold
    from harness.pipeline import build_optional
    from harness.store import FeatureStore
    from tests.conftest import SHARED, make_catalog

    catalog_dir = make_catalog(tmp_path / "catalog", per_class=8)
    overrides = ["dataset=products", f"dataset.root={catalog_dir}", "projection=lda", "projection.shrinkage=0.5", "backbone.precision=fp32",
                 "augment=class_mean", "augment.beta=0.5", "query_expansion=alpha",
                 f"paths.root={tmp_path}", "extract.progress=false", "extract.num_workers=0", *SHARED]
    subprocess.run([sys.executable, "-m", "harness", *overrides], cwd=ROOT, check=True, capture_output=True, timeout=600)
    cfg = compose_config(*overrides)
    catalog = instantiate(cfg.dataset).load()
    feats = extract(catalog.items["path"].tolist(), build_backbone(cfg), build_preprocess(cfg.preprocess, build_backbone(cfg)),
                    FeatureStore(cfg.store.path), progress=False)
    everything = np.arange(len(catalog))
    items = [3, 40, 70]
    with rest_api(tmp_path) as post:
        for i in items:
            expected = evaluate(feats.emb, catalog, [Fold(np.array([i]), everything)], instantiate(cfg.metric),
                                [PrecisionAtK()], 5, projection=build_optional(cfg, "projection"),
                                augment=build_optional(cfg, "augment"), expansion=build_optional(cfg, "query_expansion"))
            status, body = post([{"image": b64(catalog.items["path"].iloc[i])}])
            assert status == 200
            served = [row["item_id"] for row in body["predictions"]]
            assert served == catalog.items["item_id"].to_numpy()[expected.indices[0]].tolist()
            # (the photo's own item need not come first: every item moved toward its label's mean)
            assert served[0].rsplit("-", 1)[0] == catalog.items["item_id"].iloc[i].rsplit("-", 1)[0]
            np.testing.assert_allclose([row["distance"] for row in body["predictions"]], expected.distances[0], atol=1e-6)
    model_dir = next((tmp_path / "mlruns" / "artifacts").rglob("searcher"))
    assert (model_dir / "projection.npz").exists() and not list(model_dir.rglob("*.pkl"))
    from harness.serving.searcher import Searcher
    settings = json.loads((model_dir / "settings.json").read_text())
    assert settings["augment"]["level"] == "subcategory" and settings["query_expansion"]["n"] == 5
    assert Searcher.read_augmentation(model_dir, settings["augment"]).beta == 0.5
    with np.load(model_dir / "augmentation.npz") as arrays:
        altered = dict(arrays)
    altered["means"] = altered["means"] + 1
    np.savez(model_dir / "augmentation.npz", **altered)
    with pytest.raises(HarnessError, match="does not match the digest the model recorded"):
        Searcher.read_augmentation(model_dir, settings["augment"])


def test_search_by_words_through_the_model_and_the_rest_api(served_clip, served):
    out = served_clip["model"].predict(pd.DataFrame({"text": ["red floral summer dress"]}), params={"k": 3})
    assert list(out["rank"]) == [1, 2, 3] and (out["query"] == 0).all()
    both = served_clip["model"].predict(pd.DataFrame({"image": [b64(served_clip["catalog"] / "images" / "circle_red_0.jpg"), None],
                                                      "text": [None, "a blue square"]}))
    assert sorted(set(both["query"])) == [0, 1] and both[both["query"] == 0]["item_id"].iloc[0] == "circle-red-0"
    with pytest.raises(MlflowException, match="has no text tower"):
        served["model"].predict(pd.DataFrame({"text": ["red floral summer dress"]}))
    with rest_api(served_clip["root"]) as post:
        status, body = post([{"text": "black leather ankle boots"}])
        assert status == 200 and len(body["predictions"]) == 5
        status, body = post([{"text": "x" * 1001}])
        assert status == 400 and "longer than 1000 characters" in body["message"]
        # photos and words in one query, weighted, over REST: the same answers as in process
        photo = b64(served_clip["catalog"] / "images" / "circle_red_0.jpg")
        terms = [{"image": photo, "weight": 1.0}, {"text": "a blue square", "weight": -0.3}]
        status, body = post([{"terms": json.dumps(terms)}])
        expected = served_clip["searcher"].search_terms(terms, 5)
        assert status == 200 and [r["item_id"] for r in body["predictions"]] == list(expected["item_id"])
        status, body = post([{"terms": json.dumps([{"text": "x", "weight": -1}])}])
        assert status == 400 and "positive weight" in body["message"]
