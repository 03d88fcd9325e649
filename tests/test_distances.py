import numpy as np
import pytest
from scipy.spatial import distance as sp

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
    with pytest.raises(ValueError):
        Minkowski(p=0.5)


def test_correlation_ignores_offset_and_scale():
    x = np.array([[1.0, 2.0, 3.0, 5.0]], dtype=np.float32)
    assert Correlation().pairwise(x, 3 * x + 7)[0, 0] == pytest.approx(0, abs=1e-6)
