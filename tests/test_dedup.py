"""Near-duplicates: pairs through the index, groups, pair scores against hand tables, the CLI."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness import ROOT
from harness.dedup import find_pairs, pair_scores, truth_labels
from harness.metrics import Cosine, Euclidean
from tests.conftest import SHARED, make_catalog


def test_pair_scores_match_a_hand_table():
    # found groups {0,1,2} {3,4}; true groups {0,1} {2,5} {3,4}
    found = np.array([0, 0, 0, 1, 1, -1, -1])
    truth = np.array([0, 0, 1, 2, 2, 1, -1])
    s = pair_scores(found, truth)
    # found pairs: 01 02 12 34 = 4; true pairs: 01 25 34 = 3; correct: 01 34 = 2
    assert (s["found_pairs"], s["true_pairs"], s["correct_pairs"]) == (4, 3, 2)
    assert s["pair_precision"] == pytest.approx(2 / 4) and s["pair_recall"] == pytest.approx(2 / 3)
    assert truth_labels(pd.Series(["x1", "", None, "x1", "x2"])).tolist() == [0, -1, -1, 0, 1]


def test_planted_duplicates_are_found_exactly_at_the_right_threshold():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(300, 32)).astype(np.float32)
    emb = base.copy()
    for src, dst in {5: 100, 17: 200, 40: 41}.items():   # planted: rows 100, 200, 41 copy rows 5, 17, 40
        emb[dst] = base[src] + rng.normal(scale=0.02, size=32)
    emb[250] = emb[200] + rng.normal(scale=0.02, size=32).astype(np.float32)  # a chain: 17 ~ 200 ~ 250
    planted = {(5, 100), (17, 200), (17, 250), (40, 41), (200, 250)}
    for metric in (Cosine(), Euclidean()):
        full = metric.pairwise(emb, emb)                   # brute force, the hand check
        upper = np.triu(np.ones_like(full, dtype=bool), 1)
        inside = max(full[a, b] for a, b in planted)
        outside = full[upper & ~np.isin(np.arange(300)[:, None] * 300 + np.arange(300),
                                        [a * 300 + b for a, b in planted])].min()
        assert inside < outside
        threshold = (inside + outside) / 2
        dups = find_pairs(emb, metric, k=5)
        assert set(map(tuple, dups.pairs[dups.distances <= threshold].tolist())) == planted
        labels = dups.groups(threshold)
        assert labels[5] == labels[100] >= 0 and labels[17] == labels[200] == labels[250] >= 0
        assert labels[40] == labels[41] and len(set(labels[labels >= 0])) == 3 and (labels >= 0).sum() == 7
        table = dups.table(np.array([f"i{n}" for n in range(300)]), threshold)
        first = table.groupby("group").first()
        assert sorted(first["item_id"]) == ["i17", "i40", "i5"] and (first["distance"] == 0).all()
        row = table.set_index("item_id").loc["i250"]
        assert row["distance"] == pytest.approx(full[17, 250], rel=1e-3, abs=1e-6)


def test_the_cli_finds_the_manifest_duplicates_and_logs_the_run(tmp_path):
    catalog = make_catalog(tmp_path / "catalog", per_class=4)
    manifest = pd.read_csv(catalog / "manifest.csv", dtype=str)
    manifest["exact_dup_group"], manifest["near_dup_group"] = "", ""
    extra = []
    for n, row in enumerate(manifest.iloc[[0, 9, 20]].itertuples()):
        copy = f"images/copy_{n}.jpg"
        shutil.copy(catalog / row.path, catalog / copy)                       # an exact duplicate
        near = f"images/near_{n}.jpg"
        with Image.open(catalog / row.path) as img:                            # and a re-encoded, resized one
            img.resize((img.width - 6, img.height - 8)).save(catalog / near, quality=80)
        manifest.loc[row.Index, ["exact_dup_group", "near_dup_group"]] = [f"x{n}", f"n{n}"]
        extra += [{**row._asdict(), "path": copy, "item_id": f"copy-{n}", "exact_dup_group": f"x{n}", "near_dup_group": f"n{n}"},
                  {**row._asdict(), "path": near, "item_id": f"near-{n}", "exact_dup_group": "", "near_dup_group": f"n{n}"}]
    manifest = pd.concat([manifest, pd.DataFrame(extra).drop(columns="Index")], ignore_index=True)
    manifest.to_csv(catalog / "manifest.csv", index=False)
    out = subprocess.run([sys.executable, "-m", "harness.dedup", "dataset=products", f"dataset.root={catalog}",
                          f"paths.root={tmp_path}", "extract.progress=false", "extract.num_workers=0", *SHARED],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["dedup_pair_recall_exact_dup_group"] == 1.0   # every exact copy found
    assert result["dedup_true_pairs"] == 9     # 3 groups of 3 (original, copy, re-encoded)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    sweep = pd.read_csv(client.download_artifacts(result["run_id"], "dedup_sweep.csv", str(tmp_path)))
    p, r = sweep["near_dup_group_pair_precision"].fillna(0), sweep["near_dup_group_pair_recall"].fillna(0)
    f1 = (2 * p * r / (p + r)).fillna(0)
    assert result["dedup_threshold"] == pytest.approx(sweep["threshold"][f1.idxmax()])  # the best pair F1
    assert result["dedup_pair_recall"] == pytest.approx(r[f1.idxmax()])
    groups = pd.read_csv(result["output"], dtype={"item_id": str})
    for n in range(3):
        assert groups.loc[groups["item_id"] == f"copy-{n}", "distance"].iloc[0] == pytest.approx(0, abs=1e-5)
    run = client.get_run(result["run_id"])
    assert run.data.metrics["dedup_threshold"] == pytest.approx(result["dedup_threshold"])
    assert "dedup_pair_precision" in run.data.metrics and len(client.get_metric_history(run.info.run_id, "sweep/threshold")) > 5
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"duplicates.csv", "dedup_sweep.csv", "dedup_sweep.png"}
    # The run logged after it carries these groups (serving.duplicates defaults to dedup.output), and
    # collapse_duplicates answers one item of each group.
    run = subprocess.run([sys.executable, "-m", "harness", "dataset=products", f"dataset.root={catalog}",
                          f"paths.root={tmp_path}", "extract.progress=false", "extract.num_workers=0", *SHARED],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    import base64

    from harness.config import compose_config
    from harness.tracking.models import load_served

    model, searcher, _ = load_served(compose_config(f"paths.root={tmp_path}"))
    assert searcher.duplicates is not None and set(searcher.duplicates["item_id"]) == set(groups["item_id"])
    group_of = dict(zip(groups["item_id"], groups["group"]))
    photo = base64.b64encode((catalog / manifest["path"].iloc[0]).read_bytes()).decode()
    plain = model.predict(pd.DataFrame({"image": [photo]}), params={"k": 8})
    collapsed = model.predict(pd.DataFrame({"image": [photo]}), params={"k": 8, "collapse_duplicates": True})
    assert len({group_of.get(i, i) for i in plain["item_id"]}) < len(plain)  # the copies answer too
    keys = [group_of.get(i, i) for i in collapsed["item_id"]]
    assert len(collapsed) == 8 and len(set(keys)) == len(keys)           # one per group
    assert collapsed["item_id"].iloc[0] == plain["item_id"].iloc[0]
    # a model whose groups file was altered is not served
    model_dir = next((tmp_path / "mlruns" / "artifacts").rglob("searcher/duplicates.csv")).parent
    (model_dir / "duplicates.csv").write_text("item_id,group\ncopy-0,5\n")
    from harness.errors import HarnessError
    from harness.serving.searcher import Searcher

    with pytest.raises(HarnessError, match="does not match the digest"):
        Searcher.load(model_dir)
