"""Numba twins of ``refimpl.discretize``: batched ``zoh_diag`` and batched dense ``zoh``.

Same names and signatures as the reference; they compute in the inputs' precision (float32/complex64 or
float64/complex128) and return that dtype. Parallel over the batch (``numba.prange``).

Glossary as in ``refimpl.discretize``: Lambda (..., N), A (..., N, N), B (..., N[, M]), dt (...).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from . import _dense_inputs, _diag_inputs
from .._checks import float_dtype

__all__ = ["zoh_diag", "zoh"]


def _twin_dtype(*arrays, names):
    """The dtype a twin computes in: the widest of its float/complex inputs (float32 or float64 based)."""
    for name, a in zip(names, arrays):
        float_dtype(name, a)
    return np.result_type(*arrays)


# ---------------------------------------------------------------------------------------------------------
# zoh_diag: one channel per parallel iteration. For complex z = x + iy the real part of e^z - 1 is formed as
#   Re(e^z - 1) = expm1(x)·cos y - 2·sin²(y/2)
# so that nothing cancels as z -> 0; the GPU kernel uses the same identity (CUDA has no complex expm1).

@numba.njit(inline="always")
def _phi1_complex(x, y, ex, s, c):
    """(e^z - 1)/z for z = x + iy, with Re(e^z - 1) = expm1(x) cos y - 2 sin^2(y/2) and Smith's division."""
    if x == 0 and y == 0:
        return 1.0, 0.0
    er = math.expm1(x) * ((c - s) * (c + s)) - 2 * s * s
    ei = ex * (2 * s * c)
    if abs(x) >= abs(y):
        r = y / x
        d = x + y * r
        return (er + ei * r) / d, (ei - er * r) / d
    r = x / y
    d = x * r + y
    return (er * r + ei) / d, (ei * r - er) / d


@numba.njit(parallel=True, cache=True)
def _zoh_diag_complex(lam, b, dt, ad, bd):
    """lam, b, ad, bd (H, N) complex; dt (H,). One channel per parallel iteration, its N modes in a loop."""
    H, N = lam.shape
    for hch in numba.prange(H):
        h = dt[hch]
        for n in range(N):
            x, y = h * lam[hch, n].real, h * lam[hch, n].imag
            ex = math.exp(x)
            s, c = math.sin(0.5 * y), math.cos(0.5 * y)
            ad[hch, n] = complex(ex * (c - s) * (c + s), ex * 2 * s * c)
            qr, qi = _phi1_complex(x, y, ex, s, c)
            bd[hch, n] = complex(h * qr, h * qi) * b[hch, n]


@numba.njit(parallel=True, cache=True)
def _zoh_diag_real(lam, b, dt, ad, bd):
    H, N = lam.shape
    for hch in numba.prange(H):
        h = dt[hch]
        for n in range(N):
            z = h * lam[hch, n]
            ad[hch, n] = math.exp(z)
            bd[hch, n] = h * b[hch, n] if z == 0 else (math.expm1(z) / z) * h * b[hch, n]


def zoh_diag(Lambda, B, dt, *, check_finite=True):
    """Numba twin of ``refimpl.discretize.zoh_diag``: Ā = exp(ΔΛ), B̄ = expm1(ΔΛ)/Λ·B, in the input precision."""
    Lambda, B, dt = _diag_inputs(Lambda, B, dt, check_finite)
    dtype = _twin_dtype(Lambda, B, names=("Lambda", "B"))
    real = np.float32 if dtype in (np.float32, np.complex64) else np.float64
    shape = Lambda.shape
    N = shape[-1]
    as2d = lambda a, t: np.ascontiguousarray(a, dtype=t).reshape(-1, N)  # noqa: E731
    dt1 = np.ascontiguousarray(dt[..., 0], dtype=real).reshape(-1)  # one step per channel
    if np.iscomplexobj(Lambda):
        lam, bb = as2d(Lambda, dtype), as2d(B, dtype)
        ad, bd = np.empty_like(lam), np.empty_like(lam)
        _zoh_diag_complex(lam, bb, dt1, ad, bd)
    else:
        lam, bb = as2d(Lambda, real), as2d(B, dtype)
        ad, bd = np.empty_like(lam), np.empty_like(bb)
        if np.iscomplexobj(bb):  # real modes, complex input weights: two real problems
            tmp = np.empty_like(lam)
            _zoh_diag_real(lam, np.ascontiguousarray(bb.real), dt1, ad, tmp)
            bd.real = tmp
            _zoh_diag_real(lam, np.ascontiguousarray(bb.imag), dt1, ad, tmp)
            bd.imag = tmp
        else:
            _zoh_diag_real(lam, bb, dt1, ad, bd)
    return ad.reshape(shape), bd.reshape(shape)


# ---------------------------------------------------------------------------------------------------------
# zoh: exp of the augmented matrix Δ·[[A, B], [0, 0]] by scaling and squaring with the diagonal [6/6] Padé
# approximant (Moler & Van Loan; Golub & Van Loan, Alg. 11.3.1): scale X by 2^-s until ||X||_1 <= 1/2,
# where the [6/6] approximant's relative error is below 4e-16, then square s times. The matrices are small
# (N + M of a few dozen), so plain loops beat calls into BLAS/LAPACK and their per-call overhead.

_PADE6 = (1.0, 1.0 / 2, 5.0 / 44, 1.0 / 66, 1.0 / 792, 1.0 / 15840, 1.0 / 665280)


@numba.njit(inline="always")
def _matmul(P, Q, out):
    """out = P @ Q for small square matrices; the inner loop runs along rows, which LLVM vectorizes."""
    n = P.shape[0]
    for i in range(n):
        for j in range(n):
            out[i, j] = 0
        for k in range(n):
            p = P[i, k]
            for j in range(n):
                out[i, j] += p * Q[k, j]


@numba.njit(inline="always")
def _solve_in_place(P, Q):
    """Q <- P^-1 Q by Gauss-Jordan elimination with partial pivoting (P is overwritten)."""
    n = P.shape[0]
    for k in range(n):
        p = k
        for r in range(k + 1, n):
            if abs(P[r, k]) > abs(P[p, k]):
                p = r
        if p != k:
            for j in range(n):
                P[k, j], P[p, j] = P[p, j], P[k, j]
                Q[k, j], Q[p, j] = Q[p, j], Q[k, j]
        inv = 1 / P[k, k]
        for j in range(n):
            P[k, j] *= inv
            Q[k, j] *= inv
        for i in range(n):
            if i != k:
                f = P[i, k]
                if f != 0:
                    for j in range(n):
                        P[i, j] -= f * P[k, j]
                        Q[i, j] -= f * Q[k, j]


@numba.njit(cache=True)
def _expm_pade6(X):
    """exp(X) for a small square X: scaling and squaring with the [6/6] Pade approximant."""
    n = X.shape[0]
    norm = 0.0
    for j in range(n):
        col = 0.0
        for i in range(n):
            col += abs(X[i, j])
        norm = max(norm, col)
    s = 0
    if norm > 0.5:
        s = int(math.ceil(math.log2(norm / 0.5)))
    c = _PADE6
    scale = 0.5 ** s
    Xs = np.empty_like(X)
    for i in range(n):
        for j in range(n):
            Xs[i, j] = X[i, j] * scale  # stored in X's dtype: float32 stays float32
    X2 = np.empty_like(X)
    X4 = np.empty_like(X)
    X6 = np.empty_like(X)
    _matmul(Xs, Xs, X2)
    _matmul(X2, X2, X4)
    _matmul(X4, X2, X6)
    V = np.empty_like(X)  # the even part
    W = np.empty_like(X)  # the odd part is Xs @ W
    for i in range(n):
        for j in range(n):
            eye = 1.0 if i == j else 0.0
            V[i, j] = c[0] * eye + c[2] * X2[i, j] + c[4] * X4[i, j] + c[6] * X6[i, j]
            W[i, j] = c[1] * eye + c[3] * X2[i, j] + c[5] * X4[i, j]
    U = X6  # reuse: U = Xs @ W
    _matmul(Xs, W, U)
    P = V - U
    F = V + U
    _solve_in_place(P, F)
    G = X2  # reuse as the squaring buffer
    for _ in range(s):
        _matmul(F, F, G)
        F, G = G, F
    return F


@numba.njit(parallel=True, cache=True)
def _zoh_batched(A, B, dt, Ad, Bd):
    nb, N, M = B.shape
    for k in numba.prange(nb):
        X = np.zeros((N + M, N + M), dtype=A.dtype)
        X[:N, :N] = A[k] * dt[k]
        X[:N, N:] = B[k] * dt[k]
        E = _expm_pade6(X)
        Ad[k] = E[:N, :N]
        Bd[k] = E[:N, N:]


def zoh(A, B, dt, *, check_finite=True):
    """Numba twin of ``refimpl.discretize.zoh``: batched exp of Δ·[[A, B], [0, 0]], parallel over the batch."""
    A, B, dt = _dense_inputs(A, B, dt, check_finite)
    dtype = _twin_dtype(A, B, names=("A", "B"))
    real = np.float32 if dtype in (np.float32, np.complex64) else np.float64
    batch, (N, M) = A.shape[:-2], B.shape[-2:]
    A3 = np.ascontiguousarray(A, dtype=dtype).reshape(-1, N, N)
    B3 = np.ascontiguousarray(B, dtype=dtype).reshape(-1, N, M)
    dt1 = np.ascontiguousarray(dt, dtype=real).reshape(-1)
    Ad = np.empty_like(A3)
    Bd = np.empty_like(B3)
    _zoh_batched(A3, B3, dt1, Ad, Bd)
    return Ad.reshape(batch + (N, N)), Bd.reshape(batch + (N, M))
