"""Exact pairwise kernels for the distances BLAS cannot express (L1, L∞, Lp).

Each parallel task takes a block of reference vectors, transposes it into a small local buffer and
sweeps every query over it, so the innermost loop runs over contiguous references and compiles to
SIMD code. Lp with a whole-number p multiplies instead of calling pow.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

L1, LINF, LP = 0, 1, 2
BLOCK = 64  # references per task: the transposed block (D × BLOCK floats) stays in L2 cache


@njit(parallel=True, fastmath=True, cache=True)
def _pairwise(query, ref, kind, p, out):
    """kind 0: Σ|d| (L1), 1: max|d| (L∞), 2: Σ|d|^p (Lp without the root)."""
    n, dim = ref.shape
    ip = int(p) if p == np.floor(p) and 1 <= p <= 8 else 0
    for b in prange((n + BLOCK - 1) // BLOCK):
        start = b * BLOCK
        width = min(BLOCK, n - start)
        block = np.empty((dim, BLOCK), dtype=np.float32)
        for j in range(width):
            for d in range(dim):
                block[d, j] = ref[start + j, d]
        acc = np.empty(BLOCK, dtype=np.float32)
        diff = np.empty(BLOCK, dtype=np.float32)
        power = np.empty(BLOCK, dtype=np.float32)
        for i in range(query.shape[0]):
            acc[:] = 0.0
            for d in range(dim):
                q = query[i, d]
                if kind == 0:
                    for j in range(BLOCK):
                        acc[j] += abs(q - block[d, j])
                elif kind == 1:
                    for j in range(BLOCK):
                        acc[j] = max(acc[j], abs(q - block[d, j]))
                elif ip > 0:  # whole p: p − 1 vectorised multiplications
                    for j in range(BLOCK):
                        diff[j] = abs(q - block[d, j])
                        power[j] = diff[j]
                    for _ in range(ip - 1):
                        for j in range(BLOCK):
                            power[j] *= diff[j]
                    for j in range(BLOCK):
                        acc[j] += power[j]
                else:
                    for j in range(BLOCK):
                        acc[j] += abs(q - block[d, j]) ** p
            for j in range(width):
                out[i, start + j] = acc[j]


def pairwise(query: np.ndarray, ref: np.ndarray, kind: int, p: float = 1.0) -> np.ndarray:
    query = np.ascontiguousarray(query, dtype=np.float32)
    ref = np.ascontiguousarray(ref, dtype=np.float32)
    out = np.empty((len(query), len(ref)), dtype=np.float32)
    if len(query) and len(ref):
        _pairwise(query, ref, kind, float(p), out)
    return out
