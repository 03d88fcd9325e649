"""Extending the harness is one file + one YAML: a toy metric and a toy index written outside the
project (a temporary package and a config folder on Hydra's search path) run a small job."""
from __future__ import annotations

import textwrap

import pytest

from harness.errors import HarnessError
from harness.pipeline import build
from harness.run import run

TOY_METRIC = '''
import numpy as np

from harness.metrics.distances import Distance


class SquaredEuclidean(Distance):
    """|q - r|^2: orders neighbours as euclidean does."""
    name = "squared_euclidean"
    translation_invariant = True

    def scores(self, query, ref):
        return ((query[:, None, :] - ref[None, :, :]) ** 2).sum(-1)
'''

TOY_INDEX = '''
import numpy as np

from harness.search.base import Index


class BruteIndex(Index):
    """Every distance, then a stable argsort: slow, obviously right."""
    name = "brute"

    def __init__(self, ref_emb, metric, block: int = 16):
        super().__init__(ref_emb, metric)
        self.block = block

    def prepare(self, ref_emb):
        return self.metric.prepare_ref(ref_emb)

    def _search(self, query, k):
        dist, idx = [], []
        for s in range(0, len(query), self.block):
            q = query[s:s + self.block]
            scores = self.metric.scores(q, self.ref)
            order = np.argsort(scores, axis=1, kind="stable")[:, :k]
            dist.append(self.metric.to_distance(np.take_along_axis(scores, order, axis=1), q))
            idx.append(order)
        return np.concatenate(dist), np.concatenate(idx)
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A package `toyext` with one metric and one index, and a config folder with one YAML for each."""
    package = tmp_path / "ext" / "toyext"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "metric.py").write_text(TOY_METRIC)
    (package / "index.py").write_text(TOY_INDEX)
    conf = tmp_path / "ext" / "conf"
    (conf / "metric").mkdir(parents=True)
    (conf / "search").mkdir()
    (conf / "metric" / "squared_euclidean.yaml").write_text("_target_: toyext.metric.SquaredEuclidean\n")
    (conf / "search" / "brute.yaml").write_text(textwrap.dedent("""\
        index:
          _target_: toyext.index.BruteIndex
          _partial_: true
          block: 16
        """))
    monkeypatch.syspath_prepend(str(tmp_path / "ext"))
    return f"hydra.searchpath=[file://{conf}]"


def small_job(cfg_factory, catalog_dir, *overrides):
    return run(cfg_factory("dataset=products", f"dataset.root={catalog_dir}", "backbone=resnet50",
                           "backbone.weights=random", "backbone.input_size=64", "runtime=torch",
                           "tracker=none", *overrides))


SCORES = ("category_precision_at_5", "subcategory_precision_at_5", "n_queries")


def test_a_toy_metric_is_one_file_and_one_yaml(toy, cfg_factory, catalog_dir):
    toy_metrics = small_job(cfg_factory, catalog_dir, toy, "metric=squared_euclidean")
    euclidean = small_job(cfg_factory, catalog_dir, "metric=euclidean")
    assert {m: toy_metrics[m] for m in SCORES} == {m: euclidean[m] for m in SCORES}
    assert build(cfg_factory(toy, "metric=squared_euclidean")).run_name.endswith("-squared_euclidean")


def test_a_toy_index_is_one_file_and_one_yaml(toy, cfg_factory, catalog_dir):
    brute = small_job(cfg_factory, catalog_dir, toy, "search=brute", "metric=manhattan")
    exact = small_job(cfg_factory, catalog_dir, "metric=manhattan")
    assert {m: brute[m] for m in SCORES} == {m: exact[m] for m in SCORES}
    with pytest.raises(HarnessError, match=r"unknown key\(s\) nprobe for search=brute; accepted: block"):
        build(cfg_factory(toy, "search=brute", "+search.index.nprobe=4"))
