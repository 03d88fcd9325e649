"""The sweep report's paired comparisons against hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest

from harness.report import paired_bootstrap, paired_permutation


def test_paired_permutation_by_hand():
    # three queries, each +1: of the 8 sign assignments, means ±1 (2 of them) are as extreme → p = 2/8
    assert paired_permutation(np.array([1.0, 1.0, 1.0])) == (1.0, 0.25)
    # +2, -1: assignments (+2,-1) 0.5, (-2,-1) -1.5, (+2,+1) 1.5, (-2,+1) -0.5 → |mean| >= 0.5 always
    assert paired_permutation(np.array([2.0, -1.0])) == (0.5, 1.0)
    assert paired_permutation(np.zeros(5)) == (0.0, 1.0)      # identical runs: nothing to see
    # ten queries: all 1024 assignments (against itertools' own), and 900 random ones (within noise)
    import itertools

    diff = np.array([0.2, 0.4, 0.0, 0.2, 0.2, -0.2, 0.4, 0.2, 0.0, 0.2])
    brute = np.mean([abs(np.mean(np.array(s) * diff)) >= 0.16 - 1e-12 for s in itertools.product((1, -1), repeat=10)])
    mean, exact = paired_permutation(diff)
    assert mean == pytest.approx(0.16) and exact == pytest.approx(brute)
    assert paired_permutation(diff, n=900, seed=1)[1] == pytest.approx(exact, abs=0.03)

def test_permutation_and_bootstrap_agree_on_a_large_gap_and_on_none():
    rng = np.random.default_rng(0)
    gap = rng.normal(0.1, 0.2, 400)
    assert paired_permutation(gap)[1] < 0.01 and paired_bootstrap(gap)[1] > 0
    same = rng.normal(0.0, 0.2, 400)
    assert paired_permutation(same)[1] > 0.05
