import numpy as np
import pytest
from scipy.spatial import distance as sp

from harness.errors import HarnessError
from harness.metrics import Chebyshev, Correlation, Cosine, Euclidean, Manhattan, Minkowski

CASES = [
    (Euclidean(), "euclidean", {}),
    (Manhattan(), "cityblock", {}),
    (Chebyshev(), "chebyshev", {}),
    (Correlation(), "correlation", {}),
    (Cosine(), "cosine", {}),
    (Minkowski(p=2), "minkowski", {"p": 2}),
    (Minkowski(p=3), "minkowski", {"p": 3}),
    (Minkowski(p=1.5), "minkowski", {"p": 1.5}),
]


@pytest.mark.parametrize("metric,scipy_name,kw", CASES, ids=lambda c: repr(c) if not isinstance(c, (str, dict)) else None)
def test_matches_scipy_on_random_vectors(metric, scipy_name, kw):
    rng = np.random.default_rng(1)
    q, r = rng.normal(size=(7, 33)).astype(np.float32), rng.normal(size=(11, 33)).astype(np.float32)
    expected = sp.cdist(q.astype(np.float64), r.astype(np.float64), scipy_name, **kw)
    np.testing.assert_allclose(metric.pairwise(q, r), expected, rtol=1e-4, atol=1e-4)


def test_hand_computed_table():
    a = np.array([[0.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    b = np.array([[3.0, 4.0], [1.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(Euclidean().pairwise(a, b), [[5, 1], [np.sqrt(13), 1]], rtol=1e-6)
    np.testing.assert_allclose(Manhattan().pairwise(a, b), [[7, 1], [5, 1]])
    np.testing.assert_allclose(Chebyshev().pairwise(a, b), [[4, 1], [3, 1]])
    # cosine of (1,1) and (1,0) is 1/sqrt(2)
    np.testing.assert_allclose(Cosine().pairwise(a[1:], b[1:]), [[1 - 2 ** -0.5]], rtol=1e-6)


def test_minkowski_p2_is_euclidean_and_p_below_one_is_refused():
    rng = np.random.default_rng(2)
    q, r = rng.random((5, 8), dtype=np.float32), rng.random((9, 8), dtype=np.float32)
    np.testing.assert_array_equal(Minkowski(p=2).pairwise(q, r), Euclidean().pairwise(q, r))
    for bad in (0.5, 0, "two"):
        with pytest.raises(HarnessError, match="metric.p must be a number >= 1"):
            Minkowski(p=bad)
    # p = 1, 2, inf hand every step to the named metric: its numbers and its FAISS metric
    assert Minkowski(p=2).faiss_metric == Euclidean().faiss_metric and Minkowski(p=3).faiss_metric is None
    np.testing.assert_array_equal(Minkowski(p=1).pairwise(q, r), Manhattan().pairwise(q, r))
    np.testing.assert_array_equal(Minkowski(p=float("inf")).pairwise(q, r), Chebyshev().pairwise(q, r))


def test_correlation_ignores_offset_and_scale():
    x = np.array([[1.0, 2.0, 3.0, 5.0]], dtype=np.float32)
    assert Correlation().pairwise(x, 3 * x + 7)[0, 0] == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("metric,scipy_name,kw", [c for c in CASES if c[1] != "cosine"],
                         ids=lambda c: repr(c) if not isinstance(c, (str, dict)) else None)
def test_vectors_sharing_a_large_offset_keep_their_neighbours(metric, scipy_name, kw):
    """1000 + 0.01·N(0, 1): |q|² + |r|² − 2q·r cancels in float32 unless both sides are centred first.
    (Cosine is left out: it is not translation-invariant, and such vectors are parallel to 1e-10.)"""
    from harness.search import build_index

    rng = np.random.default_rng(0)
    ref = (1000 + 0.01 * rng.normal(size=(500, 64))).astype(np.float32)
    query = (1000 + 0.01 * rng.normal(size=(50, 64))).astype(np.float32)
    expected = sp.cdist(query.astype(np.float64), ref.astype(np.float64), scipy_name, **kw)
    _, idx = build_index(ref, metric).search(query, 5)
    np.testing.assert_array_equal(idx, np.argsort(expected, axis=1, kind="stable")[:, :5])
    np.testing.assert_allclose(metric.pairwise(query, ref), expected, rtol=1e-3)


def test_shapes_and_degenerate_vectors_are_clear_errors():
    from harness.search import build_index

    with pytest.raises(HarnessError, match="2-D"):
        Euclidean().pairwise(np.zeros(3), np.zeros((2, 3)))
    with pytest.raises(HarnessError, match="has 4 dimensions; the catalog has 3"):
        build_index(np.ones((5, 3)), Euclidean()).search(np.ones((1, 4)), 1)
    with pytest.raises(HarnessError, match="must hold numbers"):
        build_index(np.array([["a", "b"]]), Euclidean())
    with pytest.raises(HarnessError, match="are constant"):
        Correlation().pairwise(np.ones((1, 4)), np.arange(8.0).reshape(2, 4))
    with pytest.raises(HarnessError, match="k must be"):
        build_index(np.ones((5, 3)), Euclidean()).search(np.ones((1, 3)), 0)


def test_every_distance_declares_its_faiss_metric():
    import faiss

    assert Euclidean().faiss_metric == faiss.METRIC_L2
    assert Cosine().faiss_metric == Correlation().faiss_metric == faiss.METRIC_INNER_PRODUCT
    assert Manhattan().faiss_metric is None and Chebyshev().faiss_metric is None
