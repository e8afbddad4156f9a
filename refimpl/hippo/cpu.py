"""Numba twin of ``refimpl.hippo.legs_online``, batched over signals, with the O(N) LegS update.

Same name and signature as the reference; computes in the input's precision (float32 or float64) and returns
that dtype. Parallel over the signals of the batch (``numba.prange``); each signal's N-vector state stays in a
small local array and every step costs O(N), not O(N²):

    A = −diag(n+1) − tril(b bᵀ, −1),  b = B = √(2n+1),

so with σ_n = Σ_{j<n} b_j c_j (old state) and s_n = Σ_{j<n} b_j y_j (new state) one pass over n does both
the right-hand side r = (I + (1−α)A/k) c + B f_k/k and the forward substitution of (I − αA/k) y = r:

    r_n = c_n − (1−α)/k·((n+1) c_n + b_n σ_n) + b_n f_k/k,    y_n = (r_n − α/k·b_n s_n) / (1 + α/k·(n+1)).

The pass over n is a sequential chain for one signal, so each thread advances 16 signals together: the
innermost loop runs over signals (independent, SIMD-vectorized) and hides the chain's latency.

``legs_online_dense`` is the naive peer: the same recurrence with the dense N×N matrices Ā_k, B̄_k.

Glossary as in ``refimpl.hippo``: f (..., L), c (..., L, N), k = 1..L the step, α the GBT weight.
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.linalg

from . import _online_inputs, check_twin_method, legs
from .._checks import float_dtype

__all__ = ["legs_online"]


#: signals advanced together by one thread: the loop over them is independent work that LLVM vectorizes
#: (SIMD across signals) and that hides the latency of the sequential chain over n
_BLOCK = 16


@numba.njit(parallel=True, cache=True)
def _legs_online_on(f, hA, hS, b, np1, out):
    nb, L = f.shape
    N = b.shape[0]
    one = np1[0]  # 1 in the compute dtype (a bare literal would promote float32 to float64)
    for blk in numba.prange((nb + _BLOCK - 1) // _BLOCK):
        i0 = blk * _BLOCK
        m = min(_BLOCK, nb - i0)
        c = np.zeros((N, _BLOCK), dtype=out.dtype)  # c[n, j]: state n of signal i0 + j
        w = np.zeros(_BLOCK, dtype=out.dtype)
        sig = np.zeros(_BLOCK, dtype=out.dtype)
        s = np.zeros(_BLOCK, dtype=out.dtype)
        for k in range(L):
            ha, hs = hA[k], hS[k]
            for j in range(_BLOCK):  # a constant trip count, so that LLVM vectorizes; the tail repeats a signal
                w[j] = f[min(i0 + j, nb - 1), k] * (ha + hs)  # f_k / k
                sig[j] = 0
                s[j] = 0
            for n in range(N):
                bn = b[n]
                keep = one - ha * np1[n]  # diagonal of I + (1-a)/k A
                inv = one / (one + hs * np1[n])  # 1 / diagonal of I - a/k A
                cn_row = c[n]
                for j in range(_BLOCK):
                    cn = cn_row[j]
                    r = keep * cn - ha * bn * sig[j] + bn * w[j]
                    sig[j] += bn * cn
                    y = (r - hs * bn * s[j]) * inv
                    s[j] += bn * y
                    cn_row[j] = y
            for j in range(m):
                for n in range(N):
                    out[i0 + j, k, n] = c[n, j]


@numba.njit(parallel=True, cache=True)
def _legs_online_dense(f, Ad, Bd, out):
    nb, L = f.shape
    N = Bd.shape[1]
    for i in numba.prange(nb):
        c = np.zeros(N, dtype=out.dtype)
        y = np.zeros(N, dtype=out.dtype)
        for k in range(L):
            for n in range(N):
                acc = Bd[k, n] * f[i, k]
                for j in range(N):
                    acc += Ad[k, n, j] * c[j]
                y[n] = acc
            c[:] = y
            out[i, k, :] = y


def _step_weights(L, alpha, dtype):
    k = np.arange(1.0, L + 1.0)
    return ((1.0 - alpha) / k).astype(dtype), (alpha / k).astype(dtype)


def legs_online(f, N, *, method="bilinear", check_finite=True):
    """Numba twin of ``refimpl.hippo.legs_online``: c (..., L, N) in f's dtype (float32 or float64), O(N) steps."""
    f, N, alpha = _online_inputs(f, N, method, check_finite)
    dtype = float_dtype("f", f, complex_allowed=())
    check_twin_method(alpha, dtype, N)
    L = f.shape[-1]
    f2 = np.ascontiguousarray(f).reshape(int(np.prod(f.shape[:-1])), L)
    out = np.empty((f2.shape[0], L, N), dtype=dtype)
    hA, hS = _step_weights(L, alpha, dtype)
    b = np.sqrt(2.0 * np.arange(N) + 1.0).astype(dtype)
    np1 = np.arange(1.0, N + 1.0).astype(dtype)
    _legs_online_on(f2, hA, hS, b, np1, out)
    return out.reshape(f.shape + (N,))


def dense_matrices(N, L, alpha, dtype=np.float64):
    """Ā_k (L, N, N) and B̄_k (L, N) of the GBT recurrence, formed in float64 and cast to ``dtype``."""
    A, B = legs(N)
    eye = np.eye(N)
    Ad = np.empty((L, N, N))
    Bd = np.empty((L, N))
    for k in range(1, L + 1):
        M = eye - (alpha / k) * A
        Ad[k - 1] = scipy.linalg.solve_triangular(M, eye + ((1.0 - alpha) / k) * A, lower=True)
        Bd[k - 1] = scipy.linalg.solve_triangular(M, B / k, lower=True)
    return Ad.astype(dtype), Bd.astype(dtype)


def legs_online_dense(f, N, *, method="bilinear", check_finite=True, matrices=None):
    """The naive peer: the same recurrence with dense Ā_k c + B̄_k f_k, O(N²) per step (``matrices`` may be
    passed in, as ``dense_matrices(N, L, alpha, dtype)`` returns them, to time the update alone)."""
    f, N, alpha = _online_inputs(f, N, method, check_finite)
    dtype = float_dtype("f", f, complex_allowed=())
    L = f.shape[-1]
    Ad, Bd = dense_matrices(N, L, alpha, dtype) if matrices is None else matrices
    f2 = np.ascontiguousarray(f).reshape(int(np.prod(f.shape[:-1])), L)
    out = np.empty((f2.shape[0], L, N), dtype=dtype)
    _legs_online_dense(f2, Ad, Bd, out)
    return out.reshape(f.shape + (N,))
