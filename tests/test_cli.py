"""`python -m harness` end to end on synthetic catalogs, into a temporary MLflow store."""
from __future__ import annotations

import io
import sqlite3
import subprocess
import sys

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from harness import ROOT
from tests.conftest import SHARED

pytestmark = pytest.mark.slow


def harness(tmp_path, *args, check=True):
    cmd = [sys.executable, "-m", "harness", *args, f"paths.root={tmp_path}", "extract.progress=false", *SHARED]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def client(tmp_path):
    return MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")


def runs(tmp_path):
    c = client(tmp_path)
    exp = c.get_experiment_by_name("fashion-retrieval")
    return c.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def test_products_run_logs_scores_params_and_artifacts(tmp_path, catalog_dir):
    harness(tmp_path, "dataset=products", f"dataset.root={catalog_dir}", "protocol.query_fraction=0.2")
    [run] = runs(tmp_path)
    m = run.data.metrics
    # coloured shapes on white: ImageNet features must find the same shape and colour
    assert m["category_precision_at_5"] >= 0.8 and m["subcategory_precision_at_5"] >= 0.6
    assert (m["n_catalog"], m["n_queries"], m["feature_dim"], m["skipped_images"]) == (43, 11, 1280, 0)
    assert m["images_per_second"] > 0 and m["extract_seconds"] > 0
    assert {f"subcategory_precision_rank_{i}" for i in range(1, 6)} <= set(m)
    assert run.data.params["metric._target_"] == "harness.metrics.Cosine"
    assert run.data.params["backbone.arch"] == "efficientnet_lite0"
    arts = {a.path for a in client(tmp_path).list_artifacts(run.info.run_id)}
    assert {"config.yaml", "per_label_category.csv", "per_label_subcategory.csv", "skipped_images.csv"} <= arts
    # the MLflow UI's Datasets: which catalog and queries the scores were measured on
    inputs = {{t.key: t.value for t in i.tags}["mlflow.data.context"]: i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"catalog", "queries"}
    tags = {t.key: t.value for t in inputs["queries"].tags}
    assert (tags["protocol"], tags["rows"]) == ("Holdout", "11") and len(inputs["catalog"].dataset.digest) == 16
    # the result card: scores with intervals, cost, and its key lines as the run's description
    import json

    card = json.loads(open(client(tmp_path).download_artifacts(run.info.run_id, "card.json", str(tmp_path))).read())
    score = card["scores"]["category_precision_at_5"]
    assert score["value"] == pytest.approx(m["category_precision_at_5"]) and score["low"] <= score["value"] <= score["high"]
    assert score["queries"] == 11 and card["dataset"]["catalog"]["digest"] == inputs["catalog"].dataset.digest
    cost = card["cost"]
    assert (cost["parameters"], cost["feature_dim"], cost["bytes_per_item"]) == (4652008, 1280, 5120)
    assert cost["images_per_second"] == pytest.approx(m["images_per_second"]) and cost["query_p50_ms"] > 0
    assert "avx2" in cost["machine"]["isa"] and "card.md" in arts
    description = run.data.tags["mlflow.note.content"]
    assert description.startswith("**efficientnet_lite0**") and "category_precision_at_5: " in description
    with sqlite3.connect(tmp_path / "mlruns" / "features.sqlite") as db:
        rows = db.execute("SELECT COUNT(*), MIN(rank), MAX(rank) FROM neighbours WHERE run_id = ?",
                          (run.info.run_id,)).fetchone()
    assert rows == (55, 1, 5)


def test_metric_sweep_is_one_parent_with_children_and_extracts_once(tmp_path, catalog_dir):
    harness(tmp_path, "-m", "dataset=products", f"dataset.root={catalog_dir}", "protocol.query_fraction=0.2",
            "backbone=resnet50", "backbone.weights=random", "metric=euclidean,minkowski,cosine")
    all_runs = runs(tmp_path)
    parents = [r for r in all_runs if r.data.tags.get("harness.sweep") == "true"]
    children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == 3
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    euclid, minkowski, cosine = (c.data.metrics for c in children)
    assert euclid["images_extracted"] == 54 and minkowski["images_extracted"] == cosine["images_extracted"] == 0
    for key in ("category_precision_at_5", "subcategory_precision_at_5"):
        assert minkowski[key] == euclid[key]
    digests = [sorted(i.dataset.digest for i in c.inputs.dataset_inputs) for c in children]
    assert len(digests[0]) == 2 and digests[0] == digests[1] == digests[2]  # one catalog, one digest
    assert euclid["feature_dim"] == 2048

    out = tmp_path / "reports"
    subprocess.run([sys.executable, "-m", "harness.report", "--out", str(out), f"paths.root={tmp_path}"],
                   cwd=ROOT, check=True, capture_output=True, timeout=300)
    report = (out / f"{parents[0].info.run_id}.md").read_text()
    rows = [ln for ln in report.splitlines() if "| resnet50 |" in ln]
    assert [r.split(" | ")[0] for r in rows] == ["| metric=euclidean", "| metric=minkowski", "| metric=cosine"]
    assert len(rows) == 3 and sum("best" in r for r in rows) == 1 and all("[" in r or "best" in r for r in rows)
    p_values = [r.rstrip(" |").split(" | ")[-1] for r in rows]  # the randomization test beside the interval
    assert p_values.count("–") == 1 and all(0 < float(p) <= 1 for p in p_values if p != "–")
    assert (out / f"{parents[0].info.run_id}_precision.png").exists()
    arts = {a.path for a in client(tmp_path).list_artifacts(parents[0].info.run_id, "report")}
    assert f"report/{parents[0].info.run_id}.md" in arts
    # the leaderboard from the runs' result cards: one row per configuration, one column per catalog version
    board = tmp_path / "board"
    subprocess.run([sys.executable, "-m", "harness.leaderboard", "--out", str(board), f"paths.root={tmp_path}"],
                   cwd=ROOT, check=True, capture_output=True, timeout=300)
    table = pd.read_csv(board / "leaderboard.csv")
    assert sorted(table["metric"]) == ["Cosine", "Euclidean", "Minkowski"] and (table["parameters"] == 25557032).all()
    [column] = [c for c in table if c.endswith("subcategory_precision_at_5")]
    assert digests[0][0] in column or digests[0][1] in column
    assert sorted(table[column]) == sorted(c["subcategory_precision_at_5"] for c in (euclid, minkowski, cosine))
    assert (board / "leaderboard.png").stat().st_size > 0 and "| resnet50 |" in (board / "leaderboard.md").read_text()


def _write(path, img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    path.write_bytes(buf.getvalue())


def test_bad_inputs_are_converted_or_skipped_and_listed(tmp_path, catalog_dir):
    odd = catalog_dir / "odd"
    odd.mkdir()
    red = Image.new("RGB", (40, 60), (255, 255, 255))
    red.paste((220, 20, 20), (10, 10, 30, 50))
    exif = Image.Exif()
    exif[0x0112] = 6
    _write(odd / "cmyk.jpg", red.convert("CMYK"), "JPEG")
    _write(odd / "16bit.png", Image.new("I;16", (30, 30), 4000), "PNG")
    _write(odd / "palette.png", red.convert("P"), "PNG", transparency=0)
    _write(odd / "gray.png", red.convert("L"), "PNG")
    _write(odd / "rotated.jpg", red, "JPEG", exif=exif.tobytes())
    _write(odd / "animated.gif", red, "GIF", save_all=True, append_images=[Image.new("RGB", (40, 60))])
    _write(odd / "tiny.png", Image.new("RGB", (1, 1), (200, 0, 0)), "PNG")
    (odd / "empty.jpg").write_bytes(b"")
    good = (catalog_dir / "images" / "circle_red_0.jpg").read_bytes()
    (odd / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (odd / "notes.jpg").write_text("not an image")
    _write(odd / "bomb.png", Image.new("1", (10_000, 10_000)), "PNG")
    manifest = pd.read_csv(catalog_dir / "manifest.csv")
    extra = [{"path": f"odd/{p.name}", "category": "odd", "subcategory": "odd", "item_id": p.stem}
             for p in sorted(odd.iterdir())]
    pd.concat([manifest, pd.DataFrame(extra)]).to_csv(catalog_dir / "manifest.csv", index=False)

    proc = harness(tmp_path, "dataset=products", f"dataset.root={catalog_dir}", "protocol.query_fraction=0.2")
    [run] = runs(tmp_path)
    assert run.data.metrics["skipped_images"] == 4
    assert run.data.metrics["n_catalog"] + run.data.metrics["n_queries"] == 54 + 7
    path = client(tmp_path).download_artifacts(run.info.run_id, "skipped_images.csv", str(tmp_path))
    skipped = pd.read_csv(path)
    assert sorted(n.split("/")[-1] for n in skipped["path"]) == ["bomb.png", "empty.jpg", "notes.jpg", "truncated.jpg"]
    log = proc.stdout + proc.stderr
    assert "skipped" in log and "empty file" in log and "Traceback" not in log


@pytest.mark.parametrize("args,expected", [
    (["dataset=products", "dataset.root=/no/such/catalog"], "does not exist"),
    (["dataset=products", "dataset.root={catalog}", "dataset.levels=[category,fabric]"], "Available columns"),
    (["backbone=alexnet9"], "efficientnet_lite0"),
    (["metric=hamming"], "correlation"),
])
def test_bad_config_exits_nonzero_with_clear_message(tmp_path, catalog_dir, args, expected):
    proc = harness(tmp_path, *[a.format(catalog=catalog_dir) for a in args], check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and expected in out and "Traceback" not in out


def test_help_lists_groups_and_cfg_prints_resolved_config(tmp_path):
    out = harness(tmp_path, "--help").stdout
    for group in ("backbone:", "dataset:", "metric:", "preprocess:", "protocol:", "layer:", "evaluator:"):
        assert group in out
    cfg = harness(tmp_path, "--cfg", "job", "dataset=products").stdout
    assert "harness.protocols.Holdout" in cfg and "harness.metrics.Cosine" in cfg


def test_sweep_reports_every_failed_job_and_exits_nonzero(tmp_path, catalog_dir):
    proc = harness(tmp_path, "-m", "dataset=products", f"dataset.root={catalog_dir}", "backbone=resnet50",
                   "backbone.weights=/no/such/weights.pth", "metric=cosine,euclidean", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out
    assert out.count("no such weights file") + out.count("not imagenet, random or an existing weights file") == 2
    assert "2 job(s) failed" in out
    [parent] = [r for r in runs(tmp_path) if r.data.tags.get("harness.sweep") == "true"]
    assert parent.info.status == "FAILED"


def test_kfold_ranking_and_distractors(tmp_path, catalog_dir):
    distractors = tmp_path / "distractors"
    (distractors / "Electronics" / "Phone").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (60, 80), (30 * i, 30, 30)).save(distractors / "Electronics" / "Phone" / f"p{i}.jpg")
    harness(tmp_path, "dataset=products", f"dataset.root={catalog_dir}", f"dataset.distractors={distractors}",
            "protocol=kfold", "protocol.folds=3")
    [run] = runs(tmp_path)
    m = run.data.metrics
    assert m["n_queries"] == 54 and m["folds"] == 3  # distractors are never queries
    for level in ("category", "subcategory"):
        for name in ("recall_at_5", "map_at_r", "r_precision", "mrr", "map", "pooled_average_precision",
                     "precision_at_5"):
            assert {f"{level}_{name}", f"{level}_{name}_mean", f"{level}_{name}_std", f"{level}_{name}_cv"} <= set(m)
    # the logged scores are the stored neighbours' scores, exactly
    with sqlite3.connect(tmp_path / "mlruns" / "features.sqlite") as db:
        rows = pd.read_sql("SELECT query, rank, neighbour FROM neighbours WHERE run_id = ?", db, params=(run.info.run_id,))
    assert len(rows) == 54 * 5
    assert m["distractor_rate_at_5"] == rows["neighbour"].str.startswith("distractor/").mean()
    labels = pd.read_csv(catalog_dir / "manifest.csv").set_index("item_id")["subcategory"]
    same = rows["neighbour"].map(labels) == rows["query"].map(labels)
    assert m["subcategory_precision_at_5"] == pytest.approx(same.mean(), abs=1e-12)
    history = client(tmp_path).get_metric_history(run.info.run_id, "fold/subcategory_precision_at_5")
    assert sorted(h.step for h in history) == [0, 1, 2]
    assert m["subcategory_precision_at_5_mean"] == pytest.approx(sum(h.value for h in history) / 3)
    arts = {a.path for a in client(tmp_path).list_artifacts(run.info.run_id)}
    assert {"precision_recall.png", "per_query.csv", "skipped_images.csv"} <= arts


def test_within_category_keeps_every_neighbour_in_the_query_category(tmp_path, catalog_dir):
    harness(tmp_path, "dataset=products", f"dataset.root={catalog_dir}", "search.within_category=true",
            "backbone=resnet50", "backbone.weights=random", "serving.log_model=false")
    [run] = runs(tmp_path)
    with sqlite3.connect(tmp_path / "mlruns" / "features.sqlite") as db:
        rows = pd.read_sql("SELECT query, neighbour FROM neighbours WHERE run_id = ?", db, params=(run.info.run_id,))
    category = pd.read_csv(catalog_dir / "manifest.csv").set_index("item_id")["category"]
    assert (rows["query"].map(category) == rows["neighbour"].map(category)).all() and len(rows) == 5 * 5
    assert run.data.metrics["category_precision_at_5"] == 1.0
