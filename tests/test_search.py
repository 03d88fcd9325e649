import numpy as np
import pytest
from harness.config import instantiate
from sklearn.neighbors import NearestNeighbors

from harness.search.base import Index
from harness.search import build_index, top_k

def index(cfg_factory, kind: str):
    """search=<kind>'s index, as the pipeline builds it (a partial of its class, with its settings)."""
    return instantiate(cfg_factory(f"search={kind}").search.index)


SKLEARN = {"euclidean": {}, "manhattan": {}, "chebyshev": {}, "correlation": {}, "cosine": {},
           "minkowski": {"p": 3}}


@pytest.mark.parametrize("name", sorted(SKLEARN))
def test_same_neighbours_as_scikit_learn(name, cfg_factory, monkeypatch):
    overrides = [f"metric={name}"] + (["metric.p=3"] if name == "minkowski" else [])
    metric = instantiate(cfg_factory(*overrides).metric)
    rng = np.random.default_rng(0)
    ref, query = rng.normal(size=(300, 24)).astype(np.float32), rng.normal(size=(40, 24)).astype(np.float32)
    monkeypatch.setattr(Index, "chunk_bytes", 4 * 300 * 7)  # force several query chunks
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
    dist, idx = top_k(np.array([[0.5, 0.1, 0.5]], dtype=np.float32), 2)  # a tie across the k-th place
    assert idx.tolist() == [[1, 0]]
    # a shallow k takes the partial-selection path: same tie rule
    wide = np.full((1, 40), 2.0, dtype=np.float32)
    wide[0, [30, 7, 19]] = [0.5, 0.5, 0.25]
    dist, idx = top_k(wide, 3)
    assert idx.tolist() == [[19, 7, 30]] and dist.tolist() == [[0.25, 0.5, 0.5]]
    wide[0, [7, 30]] = 2.0  # now the 2nd and 3rd places are tied among 39 items: the first two columns win
    assert top_k(wide, 3)[1].tolist() == [[19, 0, 1]]


@pytest.mark.parametrize("shape,k", [((64, 400), 5), ((64, 400), 150)])  # partial selection; full sort
def test_top_k_is_a_stable_argsort_even_with_many_ties(shape, k):
    rng = np.random.default_rng(0)
    d = rng.integers(0, 6, shape).astype(np.float32)  # six distinct values: ties everywhere
    dist, idx = top_k(d, k)
    expected = np.argsort(d, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_array_equal(dist, np.take_along_axis(d, expected, axis=1))


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
@pytest.mark.parametrize("name", ["euclidean", "cosine", "correlation"])
def test_approximate_indexes_recall_on_clustered_data(kind, name, cfg_factory):
    metric = instantiate(cfg_factory(f"metric={name}").metric)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 32)) * 4
    ref = (centres[rng.integers(0, 20, 4000)] + rng.normal(size=(4000, 32))).astype(np.float32)
    query = (centres[rng.integers(0, 20, 100)] + rng.normal(size=(100, 32))).astype(np.float32)
    exact_dist, exact = build_index(ref, metric).search(query, 5)
    params = {"nprobe": 8} if kind == "ivf" else {}
    approx_dist, approx = build_index(ref, metric, index(cfg_factory, kind), **params).search(query, 5)
    recall = np.mean([len(set(a) & set(e)) / 5 for a, e in zip(approx, exact)])
    assert recall >= 0.9
    deep_dist, deep = build_index(ref, metric, index(cfg_factory, kind), **params).search(query, 1000)  # the ranking evaluator's depth
    found = deep >= 0  # an approximate index may find fewer than k: -1 and inf after the last one found
    assert deep.shape == (100, 1000) and np.all(np.isinf(deep_dist[~found])) and found[:, :5].all()
    assert all(np.all(np.diff(d[f]) >= 0) for d, f in zip(deep_dist, found))
    # the distance of every neighbour both found is the exact one (IVF re-ranks its candidates exactly)
    for a, ad, e, ed in zip(approx, approx_dist, exact, exact_dist):
        shared = dict(zip(e, ed))
        np.testing.assert_allclose([d for i, d in zip(a, ad) if i in shared], [shared[i] for i in a if i in shared],
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_refuses_metrics_it_cannot_do(cfg_factory, kind):
    from harness.errors import HarnessError
    from harness.metrics.distances import Distance

    class Canberra(Distance):  # a new metric that declares no FAISS metric
        name = "canberra"

    for metric in (instantiate(cfg_factory("metric=manhattan").metric), Canberra()):
        with pytest.raises(HarnessError, match="use search=exact"):
            build_index(np.ones((10, 4), np.float32), metric, index(cfg_factory, kind))


def test_index_parameters_are_checked(cfg_factory):
    from harness.errors import HarnessError

    cosine = instantiate(cfg_factory().metric)
    with pytest.raises(HarnessError, match="unknown key.* nprob for search=ivf; accepted: nlist, nprobe"):
        build_index(np.ones((10, 4), np.float32), cosine, index(cfg_factory, "ivf"), nprob=4)
    with pytest.raises(HarnessError, match="accepted: none"):
        build_index(np.ones((10, 4), np.float32), cosine, index(cfg_factory, "exact"), nprobe=4)
    with pytest.raises(Exception, match=r"(?s)Could not find 'search/annoy'.*exact.*hnsw.*ivf"):
        cfg_factory("search=annoy")


def test_grouped_index_searches_each_query_group(cfg_factory):
    from harness.search import GroupedIndex

    metric = instantiate(cfg_factory("metric=euclidean").metric)
    ref = np.array([[0.0], [1.0], [2.0], [3.0]], np.float32)
    grouped = GroupedIndex(ref, metric, groups=np.array(["a", "b", "a", "b"]))
    dist, idx = grouped.search(np.array([[0.9], [0.9]], np.float32), 2, query_groups=["a", "b"])
    assert idx.tolist() == [[0, 2], [1, 3]] and np.allclose(dist, [[0.9, 1.1], [0.1, 2.1]])
    assert grouped.search(np.array([[0.9]], np.float32), 2)[1].tolist() == [[1, 0]]  # no groups: everything
    assert grouped.search(np.array([[0.0]], np.float32), 3, query_groups=["a"])[1].tolist() == [[0, 2, -1]]
