"""Every YAML of every config group composes and instantiates (a broken config fails here, not for a user)."""
from __future__ import annotations

import sqlite3
import subprocess
import sys

import pandas as pd

import pytest
from mlflow.tracking import MlflowClient

from harness import CONFIG_DIR, ROOT
from harness.backbones import build_backbone
from harness.errors import HarnessError
from harness.pipeline import build
from harness.run import run
from tests.conftest import SHARED
from tests.test_families import FAMILIES

GROUPS = sorted(d.name for d in CONFIG_DIR.iterdir() if d.is_dir() and d.name != "hydra")
# a group's own groups too (train/engine): chosen as `train/engine=ray`
NESTED = sorted(f"{group}/{d.name}" for group in GROUPS for d in (CONFIG_DIR / group).iterdir() if d.is_dir())
OPTIONS = [(group, path.stem) for group in GROUPS + NESTED for path in sorted((CONFIG_DIR / group).glob("*.yaml"))]


def test_every_group_is_covered():
    assert {"backbone", "dataset", "evaluator", "experiment", "layer", "metric", "preprocess", "projection",
            "protocol", "search", "engine", "runtime", "tracker", "tta", "augment", "query_expansion"} <= set(GROUPS)


def build_everything(cfg, catalog_dir=None):
    """Build what a run would (the run's own composition root), without reading images or running a network."""
    pipe = build(cfg)
    if catalog_dir is not None:
        pipe.dataset.load()
    assert pipe.backbone.node  # the layer name resolves to a graph node for this backbone
    return pipe.evaluators


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_instantiates(cfg_factory, catalog_dir, group, option, monkeypatch, tmp_path):
    overrides = [f"{group}={option}", "backbone.weights=random"]
    if group != "dataset" and group != "experiment":
        overrides += ["dataset=products", f"dataset.root={catalog_dir}"]
    if group == "experiment":
        overrides += [f"dataset.root={catalog_dir}"]
    if (group, option) == ("protocol", "queries"):
        overrides.append(f"protocol.root={catalog_dir}")
    if (group, option) == ("preprocess", "detect"):
        overrides.append("preprocess.weights=random")  # the detector's COCO weights: offline here
    if (group, option) == ("experiment", "frozen_best"):
        overrides.append("dataset.levels=[category,subcategory]")  # the synthetic catalog has no article_type
    if group.startswith("train/"):
        overrides.append("train=metric")  # the parent option that has this group
    if (group, option) == ("layer", "fc1"):
        overrides.append("backbone=vgg16")  # fc1 is a VGG layer
    if (group, option) == ("evaluator", "text"):
        overrides += FAMILIES["open_clip"]  # search by words needs a text tower
    cfg = cfg_factory(*overrides)
    if group == "backbone" and str(cfg.backbone.arch).startswith("hf-hub:"):
        # its configuration lives on the hub: offline (forced here), one clear line instead of an object
        import huggingface_hub.constants as hf

        from harness.backbones import hub

        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
        hub.use_hub.cache_clear()
        with pytest.raises(HarnessError, match=f"Cannot load OpenCLIP model {cfg.backbone.arch}"):
            build_backbone(cfg)
        hub.use_hub.cache_clear()
        return
    is_products = group != "dataset" or option == "products"
    if (group, option) == ("dataset", "products"):
        cfg = cfg_factory(*overrides, f"dataset.root={catalog_dir}")
    evaluators = build_everything(cfg, catalog_dir if is_products else None)
    if group == "evaluator":
        assert evaluators


@pytest.mark.slow
def test_paper_experiment_end_to_end(tmp_path, catalog_dir):
    """The study's 18-run grid on a tiny synthetic catalog: random weights, small inputs."""
    proc = subprocess.run([sys.executable, "-m", "harness", "-m", "experiment=paper", f"dataset.root={catalog_dir}",
                           "backbone.weights=random", "backbone.input_size=64", "runtime=torch", "protocol.folds=3",
                           f"paths.root={tmp_path}", "extract.progress=false", *SHARED],
                          cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("fashion-retrieval")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(children) == 18 and all(r.info.status == "FINISHED" for r in children)
    grid = {(r.data.params["backbone.arch"], r.data.params["metric._target_"].rsplit(".", 1)[1]) for r in children}
    assert len(grid) == 18
    assert {r.data.params["layer.name"] for r in children} == {"paper"}
    dims = {r.data.params["backbone.arch"]: r.data.metrics["feature_dim"] for r in children}
    assert dims == {"vgg16": 4096, "vgg19": 4096, "resnet50": 1000}  # fc2, fc2, logits
    m = children[0].data.metrics
    assert m["folds"] == 3 and {"color_correlation_mean", "texture_chi2_mean", "subcategory_map_at_r_mean"} <= set(m)
    assert client.get_model_version_by_alias("fashion-visual-search", "champion")


def test_tracking_disabled_runs_without_mlflow(cfg_factory, catalog_dir, tmp_path):
    cfg = cfg_factory("dataset=products", f"dataset.root={catalog_dir}", "tracker=none",
                      "backbone=resnet50", "backbone.weights=random", "backbone.input_size=64")
    metrics = run(cfg)
    assert not (tmp_path / "mlruns" / "mlflow.db").exists() and not (tmp_path / "mlruns" / "artifacts").exists()
    # features and neighbours are still kept, and the returned scores are theirs
    with sqlite3.connect(tmp_path / "mlruns" / "features.sqlite") as db:
        rows = pd.read_sql("SELECT run_id, query, neighbour FROM neighbours", db)
    category = pd.read_csv(catalog_dir / "manifest.csv").set_index("item_id")["category"]
    assert metrics["n_queries"] == 5 and len(rows) == 25 and rows["run_id"].str.startswith("local-").all()
    assert metrics["category_precision_at_5"] == (rows["query"].map(category) == rows["neighbour"].map(category)).mean()


@pytest.mark.parametrize("tracking", ["tracking=null", "tracker=mlflow"])
def test_a_run_logs_through_the_tracker_interface_whichever_tracker(cfg_factory, catalog_dir, tmp_path, tracking):
    from harness.tracking import NullTracker, Tracker
    from harness.tracking.mlflow_tracker import MlflowTracker

    cfg = cfg_factory("dataset=products", f"dataset.root={catalog_dir}", "backbone=resnet50", "backbone.weights=random",
                      "backbone.input_size=64", "serving.log_model=false", tracking)
    tracker = build(cfg).tracker
    assert isinstance(tracker, Tracker)
    assert isinstance(tracker, NullTracker if tracking == "tracking=null" else MlflowTracker)
    metrics = run(cfg)
    db = tmp_path / "mlruns" / "mlflow.db"
    if tracking == "tracking=null":
        assert not db.exists()
        return
    [logged] = MlflowClient(f"sqlite:///{db}").search_runs(
        [MlflowClient(f"sqlite:///{db}").get_experiment_by_name("fashion-retrieval").experiment_id])
    assert logged.data.metrics["category_precision_at_5"] == metrics["category_precision_at_5"]
    assert logged.data.params["backbone.arch"] == "resnet50" and logged.info.status == "FINISHED"
