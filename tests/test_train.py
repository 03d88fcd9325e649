"""train=metric: fine-tuning per fold on catalog products only, reproducible, resumable, served."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from harness import ROOT
from harness.errors import HarnessError
from harness.pipeline import build
from harness.train.metric import MetricLearning, freeze

pytestmark = pytest.mark.slow

# Small and quick: the real EfficientNet-Lite0 weights at 64 px, a few steps per epoch.
QUICK = ("train=metric", "backbone.input_size=64", "backbone.precision=fp32", "runtime=torch",
         "train.batch_size=12", "train.m_per_class=2", "train.steps_per_epoch=3", "train.epochs=2",
         "train.holdout=0.2", "train.trainable_blocks=2", "extract.num_workers=0")


def test_no_query_and_no_distractor_ever_reaches_the_training_rows(cfg_factory, catalog_dir, tmp_path):
    from harness.protocols import restrict
    from harness.tracking.base import NullJob
    from harness.train.folds import train_folds

    distractors = tmp_path / "distractors"
    distractors.mkdir()
    for n in range(4):
        Image.fromarray(np.random.default_rng(n).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(distractors / f"d{n}.jpg")
    # (no held-out rows: the trained epoch is kept, so each fold's network differs from the untrained one)
    pipe = build(cfg_factory(*QUICK, "train.epochs=1", "train.steps_per_epoch=1", "train.holdout=0", "dataset=products",
                             f"dataset.root={catalog_dir}", f"dataset.distractors={distractors}",
                             "protocol=kfold", "protocol.folds=3", "tracker=none"))
    catalog, folds = pipe.data()
    store = pipe.open_store()
    feats = pipe.extract(catalog, store)
    catalog, folds = restrict(catalog, folds, feats.valid)
    training = train_folds(pipe, catalog, folds, store, NullJob())
    store.close()
    ids = catalog.items["item_id"].astype(str).to_numpy()
    distractor_ids = set(ids[catalog.is_distractor])
    assert len(distractor_ids) == 4
    for fold, result in zip(folds, training.results):
        seen = set(result.trained_ids) | set(result.holdout_ids)
        assert not seen & set(ids[fold.query_idx]) and not seen & distractor_ids
        assert seen == set(ids[fold.ref_idx]) - distractor_ids  # every catalog product of the fold, nothing else
        assert not set(result.trained_ids) & set(result.holdout_ids)
    # each fold searched in its own network's space: the fine-tuned features differ from fold to fold
    assert len(training.emb) == 3 and not np.allclose(training.emb[0], training.emb[1])
    assert not np.allclose(training.emb[0], feats.emb[feats.valid])


def _fit(cfg, catalog_dir, out_dir, log_epoch=None):
    pipe = build(cfg)
    items = pd.read_csv(catalog_dir / "manifest.csv")
    return pipe.trainer.fit(pipe.backbone, pipe.preprocess, [str(catalog_dir / p) for p in items["path"]],
                            items["subcategory"], items["item_id"], out_dir, log_epoch)


def test_two_epochs_lower_the_loss_and_a_seed_repeats_them(cfg_factory, catalog_dir, tmp_path):
    cfg = cfg_factory(*QUICK, "train.augment=false", "train.lr=0.001", "train.steps_per_epoch=6", "train.holdout=0",
                      "train.trainable_blocks=null", "dataset=products", f"dataset.root={catalog_dir}", "tracker=none")
    first = _fit(cfg, catalog_dir, tmp_path / "a")
    assert [len(first.history), first.best_epoch] == [2, 2]  # no held-out rows: the last epoch
    assert first.history[1]["loss"] < first.history[0]["loss"]
    again = _fit(cfg, catalog_dir, tmp_path / "b")
    assert [h["loss"] for h in again.history] == [h["loss"] for h in first.history]
    a, b = torch.load(first.weights, weights_only=True), torch.load(again.weights, weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = _fit(cfg_factory(*QUICK, "train.augment=false", "train.lr=0.001", "train.steps_per_epoch=6",
                             "train.holdout=0", "train.trainable_blocks=null", "seed=1", "dataset=products",
                             f"dataset.root={catalog_dir}", "tracker=none"), catalog_dir, tmp_path / "c")
    assert [h["loss"] for h in other.history] != [h["loss"] for h in first.history]


def test_only_the_last_blocks_and_the_head_train():
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    freeze(model, 2)
    trains = {name.split(".")[0] + ("." + name.split(".")[1] if name.startswith("_blocks") else "")
              for name, p in model.named_parameters() if p.requires_grad}
    assert trains == {"_blocks.14", "_blocks.15", "_conv_head", "_bn1", "_fc"}


@pytest.mark.parametrize("override, message", [("train.batch_size=11", "multiple of train.m_per_class"),
                                               ("train.epochs=0", "train.epochs"), ("train.holdout=0.6", "train.holdout"),
                                               ("train.trainable_blocks=0", "train.trainable_blocks"),
                                               ("backbone=fused_lite", "fine-tunes one backbone")])
def test_bad_training_settings_stop_in_one_line(cfg_factory, override, message):
    with pytest.raises(HarnessError, match=message):
        build(cfg_factory(*QUICK, override, "tracker=none", "backbone.weights=random"))


def test_a_killed_training_resumes_from_its_last_epoch_and_ends_as_if_never_killed(cfg_factory, catalog_dir, tmp_path):
    overrides = [*QUICK, "train.epochs=3", "train.patience=5", "dataset=products", f"dataset.root={catalog_dir}", "tracker=none",
                 f"paths.root={tmp_path}", "extract.progress=false"]
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from harness.config import compose_config
        from tests.test_train import _fit
        def log_epoch(record, epoch):
            print("EPOCH", epoch, flush=True)
            if epoch == 1 and sys.argv[1] == "stall":
                time.sleep(600)  # killed here, after epoch 1's checkpoint
        result = _fit(compose_config(*{overrides!r}), Path({str(catalog_dir)!r}), Path(sys.argv[2]), log_epoch)
        print("DONE", len(result.history), flush=True)
    """)
    child = subprocess.Popen([sys.executable, "-c", script, "stall", str(tmp_path / "resumed")], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    for line in child.stdout:
        if line.startswith("EPOCH 1"):
            break
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=60)
    state = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1
    out = subprocess.run([sys.executable, "-c", script, "go", str(tmp_path / "resumed")], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, check=True).stdout
    assert "EPOCH 1" not in out and "EPOCH 2" in out and "DONE 3" in out  # epochs 2 and 3 only
    whole = subprocess.run([sys.executable, "-c", script, "go", str(tmp_path / "whole")], cwd=ROOT, capture_output=True,
                           text=True, timeout=600, check=True).stdout
    assert "EPOCH 1" in whole and "DONE 3" in whole
    a = torch.load(tmp_path / "resumed" / "weights.pt", weights_only=True)
    b = torch.load(tmp_path / "whole" / "weights.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    resumed = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["history"]
    assert [h["loss"] for h in resumed] == [h["loss"] for h in torch.load(tmp_path / "whole" / "checkpoint.pt",
                                                                         weights_only=True)["history"]]


def test_a_run_logs_its_network_which_loads_by_runs_uri_and_serves_the_same_features(catalog_dir, tmp_path):
    from harness.config import compose_config
    from harness.serving.searcher import Searcher
    from tests.conftest import SHARED

    common = [*QUICK, "train.epochs=1", "dataset=products", f"dataset.root={catalog_dir}", f"paths.root={tmp_path}",
              "extract.progress=false", *SHARED]
    done = subprocess.run([sys.executable, "-m", "harness", *common, "protocol=kfold", "protocol.folds=2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    run = mlflow.search_runs(experiment_names=["fashion-retrieval"], output_format="list")[0]
    metrics = run.data.metrics
    assert {"train/fold0/loss", "train/fold1/holdout_precision_at_k", "train_seconds", "train_served_seconds"} <= set(metrics)
    uri = f"runs:/{run.info.run_id}/train/weights.pt"
    # the logged network through backbone.weights=runs:/...: the same file, so the same features
    cfg = compose_config(*common, f"backbone.weights={uri}", "tracker=mlflow", f"tracking.uri=sqlite:///{tmp_path}/mlruns/mlflow.db")
    pipe = build(cfg)
    model_dir = next((tmp_path / "mlruns" / "artifacts").rglob("searcher"))
    carried = json.loads((model_dir / "settings.json").read_text())["weights"]
    import hashlib

    assert hashlib.sha256(open(pipe.backbone.weights, "rb").read()).hexdigest() == carried["sha256"]
    catalog = pipe.dataset.load()
    store = pipe.open_store()
    feats = pipe.extract(catalog, store)
    store.close()
    assert feats.extracted == 0  # the run stored the served network's features: found under the same fingerprint
    searcher = Searcher.load(model_dir)
    photo = Image.open(catalog.items["path"].iloc[5])
    np.testing.assert_allclose(searcher.embed([photo])[0], feats.emb[5], rtol=1e-4, atol=1e-5 * np.abs(feats.emb[5]).max())
    # the fine-tuned vectors have an index of their own, named by the network's URI: the frozen extractor's
    # index (which a train=none model follows) never receives them, and the same overrides update this one
    from harness.index.lifecycle import open_index, update

    assert searcher.settings.index["name"] == open_index(cfg).name != open_index(compose_config(*common)).name
    assert open_index(compose_config(*common)).current() is None
    manifest = pd.read_csv(catalog_dir / "manifest.csv", dtype=str)
    extra = manifest.iloc[[0]].assign(item_id="extra-0")
    manifest = pd.concat([manifest, extra], ignore_index=True)
    manifest.to_csv(catalog_dir / "manifest.csv", index=False)
    updated = update(build(cfg))
    assert (updated["version"], updated["added"], updated["embedded"]) == (2, 1, 0)  # a copy of a stored photo
    searcher = Searcher.load(model_dir)
    assert searcher.version == 2 and "extra-0" in set(searcher.catalog["item_id"])
    # an altered carried network is never served
    with open(model_dir / "weights.pt", "ab") as fh:
        fh.write(b"0")
    with pytest.raises(HarnessError, match="altered network"):
        Searcher.load(model_dir)


@pytest.mark.ray
def test_ray_train_two_workers_average_their_gradients_and_resume_through_ray(cfg_factory, catalog_dir, tmp_path):
    pytest.importorskip("ray.train")
    from harness.engines.base import load
    from harness.train.engines.local import LocalSession
    from harness.train.metric import _digest

    cfg = cfg_factory(*QUICK, "train/engine=ray", "train.engine.workers=2", "train.epochs=1", "train.steps_per_epoch=4",
                      "train.holdout=0.25", "dataset=products", f"dataset.root={catalog_dir}", "tracker=none")
    result = _fit(cfg, catalog_dir, tmp_path / "ray")
    assert [r["rank"] for r in result.replicas] == [0, 1] and len(result.history) == 1
    first, second = result.replicas
    # each worker trained on its own batches, yet both ended with the same, trained network: the
    # gradients were averaged
    assert first["ids"] and second["ids"] and first["ids"] != second["ids"]
    assert set(first["ids"]) | set(second["ids"]) <= set(result.trained_ids)
    pipe = build(cfg)
    model, embedder = pipe.backbone.trainable()
    assert first["digest"] == second["digest"] != _digest(model.state_dict())

    # the held-out P@k the two workers computed together (each embedding half the rows) is the one this
    # process computes alone from the checkpointed network
    state = torch.load(next((tmp_path / "ray" / "ray").rglob("state.pt")), weights_only=True)
    model.load_state_dict(state["model"])
    items = pd.read_csv(catalog_dir / "manifest.csv")
    images = torch.stack([load(str(catalog_dir / p), pipe.preprocess)[0] for p in items["path"]])
    position = {i: n for n, i in enumerate(items["item_id"].astype(str))}
    train_rows = np.array([position[i] for i in result.trained_ids])
    held_rows = np.array([position[i] for i in result.holdout_ids])
    alone = pipe.trainer._holdout_score(embedder, images, items["subcategory"].astype(str).to_numpy(), train_rows,
                                        held_rows, LocalSession(torch.device("cpu"), tmp_path / "local"))
    one_neighbour = 1 / (len(held_rows) * pipe.trainer.k)  # (a near tie may flip between thread counts)
    assert abs(alone - result.history[0]["holdout_precision_at_k"]) <= one_neighbour + 1e-9

    # the same training again: Ray Train restores the run from its checkpoint, no epoch runs twice
    again = _fit(cfg, catalog_dir, tmp_path / "ray")
    assert again.history == result.history
    a, b = torch.load(result.weights, weights_only=True), torch.load(again.weights, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_engine_as_a_value_is_refused_in_one_line(cfg_factory):
    with pytest.raises(HarnessError, match="train/engine=ray"):
        build(cfg_factory(*QUICK, "train.engine=ray", "tracker=none", "backbone.weights=random"))


def test_a_fine_tuned_run_is_named_apart_from_a_frozen_one(cfg_factory):
    frozen = build(cfg_factory("tracker=none", "backbone.weights=random")).run_name
    tuned = build(cfg_factory(*QUICK, "loss=proxy_anchor", "tracker=none", "backbone.weights=random")).run_name
    assert tuned == frozen.replace("-penultimate-", "-penultimate-ft_proxyanchor-")
