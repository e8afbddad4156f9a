"""Numba twin of ``refimpl.ssd``: ``ssd``, the chunked algorithm, parallel over (batch, head).

Same name and signature as the reference (``chunk_size=None`` means 64); float32 or float64 in (x decides),
that dtype out. Each (b, h) pair walks its chunks in order, carrying the p × n state: per chunk the four
steps of ``refimpl.ssd.ssd_chunked`` as small matrix products (BLAS through Numba; C·Bᵀ once per group and
chunk, shared by the group's heads) plus loops that form each decay over its own segment (no difference of
running sums, nothing formed above the diagonal).

Glossary as in ``refimpl.ssd``: x (b, l, h, p), dt (b, l, h), A (h,), B and C (b, l, g, n), H (b, h, p, n).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from . import _inputs
from .._checks import float_dtype, positive_int

__all__ = ["ssd"]


@numba.njit(parallel=True, cache=True)
def _chunk_CB(B, C, Q, CB):
    """C·Bᵀ of each chunk, once per group (the heads of a group share it).

    B, C (b, l, g, n) -> CB (b, g, c, Q, Q)."""
    nb, L, G, N = B.shape
    nc = CB.shape[2]
    for i in numba.prange(nb * G * nc):
        bi, gi, ci = i // (G * nc), (i // nc) % G, i % nc
        c0 = ci * Q
        q = min(Q, L - c0)
        Cc = np.ascontiguousarray(C[bi, c0:c0 + q, gi])
        Bc = np.ascontiguousarray(B[bi, c0:c0 + q, gi])
        CB[bi, gi, ci, :q, :q] = Cc @ Bc.T


@numba.njit(parallel=True, cache=True)
def _ssd_chunked(x, dt, A, B, C, CB, D, z, has_D, has_z, H0, Q, y, Hout):
    """x, z, y (b, l, h, p); dt (b, l, h) effective; B, C (b, l, g, n); CB (b, g, c, Q, Q); D (h, p);
    H0, Hout (b, h, p, n). Each (b, h) copies its chunk's rows into contiguous blocks for BLAS."""
    nb, L, nh, P = x.shape
    G = B.shape[2]
    hpg = nh // G
    for bh in numba.prange(nb * nh):
        bi, hi = bh // nh, bh % nh
        gi = hi // hpg
        H = H0[bi, hi].copy()
        total = np.empty(1, dtype=x.dtype)  # the chunk's decay, in the state's own dtype
        for c0 in range(0, L, Q):
            q = min(Q, L - c0)
            xc = np.ascontiguousarray(x[bi, c0:c0 + q, hi])
            Bc = np.ascontiguousarray(B[bi, c0:c0 + q, gi])
            Cc = np.ascontiguousarray(C[bi, c0:c0 + q, gi])
            dtc = np.ascontiguousarray(dt[bi, c0:c0 + q, hi])
            a = dtc * A[hi]
            ea = np.exp(a)  # one exponential per step; products of them below are products of numbers <= 1
            # step 4 first (it needs the state entering the chunk): exp(a_0 + ... + a_t)·H·C_t
            Y = Cc @ H.T
            seg = 0.0
            for t in range(q):
                seg += a[t]
                Y[t] *= math.exp(seg)
            # step 1: the diagonal block (L ∘ C·Bᵀ)·Δ; row t walks leftwards from s = t multiplying the decays
            # of its own segment, exp(a_{s+1})···exp(a_t): no difference of running sums, nothing above the diagonal
            CBc = CB[bi, gi, c0 // Q]
            Mq = np.zeros((q, q), dtype=x.dtype)
            for t in range(q):
                dec = 1.0
                for s in range(t, -1, -1):
                    Mq[t, s] = CBc[t, s] * dec * dtc[s]
                    dec *= ea[s]
            Y += Mq @ xc
            # steps 2 and 3: this chunk's own state, then the recurrence across chunks
            w = np.empty(q, dtype=x.dtype)
            seg = 0.0
            for s in range(q - 1, -1, -1):
                w[s] = math.exp(seg) * dtc[s]
                seg += a[s]
            Xw = xc * w.reshape(q, 1)
            total[0] = math.exp(seg)
            H = total[0] * H + Xw.T @ Bc
            for t in range(q):
                for j in range(P):
                    v = Y[t, j]
                    if has_D:
                        v += D[hi, j] * xc[t, j]
                    if has_z:
                        zz = z[bi, c0 + t, hi, j]
                        v *= zz / (1.0 + math.exp(-zz))
                    y[bi, c0 + t, hi, j] = v
        Hout[bi, hi] = H


def ssd(x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False, initial_states=None,
        return_final_states=False, chunk_size=None, check_finite=True):
    """Numba twin of ``refimpl.ssd.ssd``: chunked, parallel over (b, h), in x's precision (float32/float64)."""
    Q = positive_int("chunk_size", 64 if chunk_size is None else chunk_size)
    arr, (b, l, h, p, g, n) = _inputs(x, dt, A, B, C, D, z, dt_bias, initial_states, check_finite)
    dtype = float_dtype("x", arr["x"], complex_allowed=())
    cast = lambda v: np.ascontiguousarray(v, dtype=dtype)  # noqa: E731
    d = arr["dt"].astype(dtype) + (arr["dt_bias"].astype(dtype) if arr["dt_bias"] is not None else dtype.type(0))
    if dt_softplus:
        d = np.logaddexp(dtype.type(0), d).astype(dtype)
    has_D, has_z = arr["D"] is not None, arr["z"] is not None
    Dm = cast(np.broadcast_to(arr["D"].reshape(h, -1), (h, p))) if has_D else np.zeros((1, 1), dtype)
    zz = cast(arr["z"]) if has_z else np.zeros((1, 1, 1, 1), dtype)
    H0 = cast(arr["initial_states"]) if arr["initial_states"] is not None else np.zeros((b, h, p, n), dtype)
    xx, Bx, Cx = cast(arr["x"]), cast(arr["B"]), cast(arr["C"])
    y = np.empty((b, l, h, p), dtype)
    H = np.empty((b, h, p, n), dtype)
    Qe = max(1, min(Q, l))  # a chunk longer than the sequence is the sequence
    CB = np.empty((b, g, max(1, -(-l // Qe)), Qe, Qe), dtype)
    _chunk_CB(Bx, Cx, Qe, CB)
    _ssd_chunked(xx, cast(d), cast(arr["A"]), Bx, Cx, CB, Dm, zz, has_D, has_z, H0, Qe, y, H)
    return (y, H) if return_final_states else y
