import numpy as np
import pytest
from harness.config import instantiate
from sklearn.neighbors import NearestNeighbors

from harness import search as search_mod
from harness.search import build_index, top_k

SKLEARN = {"euclidean": {}, "manhattan": {}, "chebyshev": {}, "correlation": {}, "cosine": {},
           "minkowski": {"p": 3}}


@pytest.mark.parametrize("name", sorted(SKLEARN))
def test_same_neighbours_as_scikit_learn(name, cfg_factory, monkeypatch):
    overrides = [f"metric={name}"] + (["metric.p=3"] if name == "minkowski" else [])
    metric = instantiate(cfg_factory(*overrides).metric)
    rng = np.random.default_rng(0)
    ref, query = rng.normal(size=(300, 24)).astype(np.float32), rng.normal(size=(40, 24)).astype(np.float32)
    monkeypatch.setattr(search_mod, "CHUNK_BYTES", 4 * 300 * 7)  # force several query chunks
    dist, idx = build_index(ref, metric).search(query, 5)
    nn = NearestNeighbors(n_neighbors=5, algorithm="brute", metric=name, **SKLEARN[name])
    exp_dist, exp_idx = nn.fit(ref.astype(np.float64)).kneighbors(query.astype(np.float64))
    np.testing.assert_array_equal(idx, exp_idx)
    np.testing.assert_allclose(dist, exp_dist, rtol=1e-4, atol=1e-4)


def test_ties_broken_by_catalog_position_and_k_larger_than_catalog():
    d = np.array([[1.0, 0.5, 0.5, 0.25]], dtype=np.float32)
    dist, idx = top_k(d, 3)
    assert idx.tolist() == [[3, 1, 2]] and dist.tolist() == [[0.25, 0.5, 0.5]]
    dist, idx = top_k(d, 10)
    assert idx.tolist() == [[3, 1, 2, 0]]
