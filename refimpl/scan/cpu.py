"""Numba twins of ``refimpl.scan``: ``linear_scan`` and ``selective_scan``.

Same names and signatures as the reference; they compute in the inputs' precision (float32/complex64 or
float64/complex128) and return that dtype.

``linear_scan`` splits every sequence into chunks (lanes) and runs the three phases of a multi-core scan:
(1) each chunk's aggregate (∏a, the local h with a zero start), all chunks in parallel; (2) the carry scan
over the chunks of each sequence, sequential and short; (3) each chunk rescanned from its true carry, in
parallel. Phase 1 reads a and b, phase 3 reads them again and writes h: 20 bytes per float32 element
instead of 12, the price of parallelism on a CPU whose caches cannot hold the sequence. Many sequences
need no phase 1 or 2: each is one lane. Every thread scans four lanes interleaved, so that four
independent chains h = a·h + b hide the latency of each multiply-add.
``selective_scan`` runs one (batch, channel) pair per iteration of a parallel loop, its N states in a
small local array: memory O(N) per thread.

Glossary as in ``refimpl.scan``: a, b, h (..., L), h0 (...); u, delta, z (b, d, L), A (d, N), B, C.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from . import _scan_inputs, _selective_inputs
from .._checks import float_dtype

__all__ = ["linear_scan", "selective_scan"]

#: elements below which a chunk is not worth splitting further (phase 2 and thread start-up dominate)
MIN_CHUNK = 1 << 14
#: independent chains per thread: one chain h = a*h + b waits on each fused multiply-add (~4 cycles);
#: four chains interleaved keep the FMA units busy. Lanes (chunks) are scanned four at a time.
_ILP = 4


def _twin_dtype(*arrays, names):
    for name, a in zip(names, arrays):
        if a is not None:
            float_dtype(name, a)
    return np.result_type(*[a for a in arrays if a is not None])


@numba.njit(cache=True)
def _lane(a, b, h, lo, hi, x, write):
    """One chain over [lo, hi): the aggregate (A, B) when not ``write``, else h written from carry ``x``."""
    A = a.dtype.type(1)
    for t in range(lo, hi):
        x = a[t] * x + b[t]
        if write:
            h[t] = x
        else:
            A = a[t] * A
    return A, x


@numba.njit(parallel=True, cache=True)
def _lanes(a, b, h, lo, hi, x0, aggA, aggB, write):
    """Scan the lanes [lo[i], hi[i]) of the flat a, b four at a time (interleaved), in parallel.

    write=False: the aggregates (aggA[i], aggB[i]) of each lane from a zero start (phase 1);
    write=True: h over each lane from its carry x0[i] (phase 3, or the only phase for whole sequences).
    """
    nl = lo.size
    for g in numba.prange((nl + _ILP - 1) // _ILP):
        i = g * _ILP
        if i + _ILP <= nl:
            n = min(min(hi[i] - lo[i], hi[i + 1] - lo[i + 1]), min(hi[i + 2] - lo[i + 2], hi[i + 3] - lo[i + 3]))
            p0, p1, p2, p3 = lo[i], lo[i + 1], lo[i + 2], lo[i + 3]
            x0_, x1_, x2_, x3_ = x0[i], x0[i + 1], x0[i + 2], x0[i + 3]
            if write:
                for t in range(n):
                    x0_ = a[p0 + t] * x0_ + b[p0 + t]
                    x1_ = a[p1 + t] * x1_ + b[p1 + t]
                    x2_ = a[p2 + t] * x2_ + b[p2 + t]
                    x3_ = a[p3 + t] * x3_ + b[p3 + t]
                    h[p0 + t] = x0_
                    h[p1 + t] = x1_
                    h[p2 + t] = x2_
                    h[p3 + t] = x3_
                A0 = A1 = A2 = A3 = a.dtype.type(1)
            else:
                A0 = A1 = A2 = A3 = a.dtype.type(1)
                for t in range(n):
                    x0_ = a[p0 + t] * x0_ + b[p0 + t]
                    x1_ = a[p1 + t] * x1_ + b[p1 + t]
                    x2_ = a[p2 + t] * x2_ + b[p2 + t]
                    x3_ = a[p3 + t] * x3_ + b[p3 + t]
                    A0 = a[p0 + t] * A0
                    A1 = a[p1 + t] * A1
                    A2 = a[p2 + t] * A2
                    A3 = a[p3 + t] * A3
            # the lanes' tails past the common length, one at a time
            r0 = _lane(a, b, h, p0 + n, hi[i], x0_, write)
            r1 = _lane(a, b, h, p1 + n, hi[i + 1], x1_, write)
            r2 = _lane(a, b, h, p2 + n, hi[i + 2], x2_, write)
            r3 = _lane(a, b, h, p3 + n, hi[i + 3], x3_, write)
            if not write:
                aggA[i], aggB[i] = r0[0] * A0, r0[1]
                aggA[i + 1], aggB[i + 1] = r1[0] * A1, r1[1]
                aggA[i + 2], aggB[i + 2] = r2[0] * A2, r2[1]
                aggA[i + 3], aggB[i + 3] = r3[0] * A3, r3[1]
        else:
            for k in range(i, nl):
                r = _lane(a, b, h, lo[k], hi[k], x0[k], write)
                aggA[k], aggB[k] = r


#: the same loop without threads, for problems too small to pay for waking them
_lanes_serial = numba.njit(cache=True)(_lanes.py_func)
#: below this many elements, the scan runs on one thread
SERIAL_BELOW = 1 << 20


@numba.njit(cache=True)
def _carries(aggA, aggB, h0, carry, n_chunks):
    """Phase 2: the state entering each chunk, chunk after chunk (S x n_chunks, short)."""
    for s in range(h0.size):
        x = h0[s]
        for c in range(n_chunks):
            carry[s * n_chunks + c] = x
            x = aggA[s * n_chunks + c] * x + aggB[s * n_chunks + c]


def linear_scan(a, b, h0=None, *, check_finite=True):
    """Numba twin of ``refimpl.scan.linear_scan``: parallel over sequences and over chunks of each one."""
    a, b, h0 = _scan_inputs(a, b, h0, check_finite)
    dtype = _twin_dtype(a, b, h0, names=("a", "b", "h0"))
    shape = a.shape
    L = shape[-1]
    a1 = np.ascontiguousarray(a, dtype=dtype).reshape(-1)
    b1 = np.ascontiguousarray(b, dtype=dtype).reshape(-1)
    h01 = np.ascontiguousarray(h0, dtype=dtype).reshape(-1)
    S = h01.size
    # enough lanes for every thread's four chains (twice over, for balance), each at least MIN_CHUNK long
    want = 2 * _ILP * numba.get_num_threads()
    n_chunks = max(1, min(-(-want // S), L // MIN_CHUNK))
    size = -(-L // n_chunks)
    starts = np.arange(S, dtype=np.int64)[:, None] * L + np.arange(n_chunks, dtype=np.int64)[None, :] * size
    lo = starts.reshape(-1)
    hi = np.minimum(lo + size, np.repeat(np.arange(1, S + 1, dtype=np.int64) * L, n_chunks))
    h = np.empty_like(a1)
    aggA = np.empty(lo.size, dtype=dtype)
    aggB = np.empty(lo.size, dtype=dtype)
    lanes = _lanes_serial if a1.size < SERIAL_BELOW else _lanes
    if n_chunks == 1:
        carry = h01
    else:
        lanes(a1, b1, h, lo, hi, np.zeros(lo.size, dtype=dtype), aggA, aggB, False)  # phase 1
        carry = np.empty(lo.size, dtype=dtype)
        _carries(aggA, aggB, h01, carry, n_chunks)                                    # phase 2
    lanes(a1, b1, h, lo, hi, carry, aggA, aggB, True)                                  # phase 3
    return h.reshape(shape)


# ---------------------------------------------------------------------------------------------------------
# selective scan: B and C arrive as (batch, G, L, N) contiguous (time-major, so one step's N values are
# adjacent) with G = 1 for (batch, N, L); a time-invariant (dim, N) is passed as (1, dim, 1, N), and the
# kernel picks batch index 0 and step 0 for it.

@numba.njit(parallel=True, cache=True)
def _selective(u, delta, bias, A, Bk, Ck, D, z, out, last, b_var, c_var, use_D, use_z, softplus, cplx):
    batch, dim, L = u.shape
    N = A.shape[1]
    GB, GC = Bk.shape[1], Ck.shape[1]
    for w in numba.prange(batch * dim):
        bi, d = w // dim, w % dim
        gb = d // (dim // GB)
        gc = d // (dim // GC)
        bb = bi if b_var else 0
        bc = bi if c_var else 0
        h = np.zeros(N, dtype=last.dtype)
        a = A[d].copy()
        dA = np.empty(N, dtype=last.dtype)
        for t in range(L):
            dt = delta[bi, d, t] + bias[d]
            if softplus:  # log1p(e^x), switching to x where e^x would overflow the dtype
                dt = dt if dt > 20 else u.dtype.type(math.log1p(math.exp(dt)))
            x = dt * u[bi, d, t]
            bt = Bk[bb, gb, t if b_var else 0]  # (N,) contiguous: one step's B
            ct = Ck[bc, gc, t if c_var else 0]
            for n in range(N):  # the exponentials apart, so the update loop below stays simple
                dA[n] = np.exp(dt * a[n])
            y = out.dtype.type(0)
            for n in range(N):
                hn = dA[n] * h[n] + x * bt[n]
                h[n] = hn
                y += (ct[n] * hn).real
            if cplx:
                y = 2 * y
            if use_D:
                y += D[d] * u[bi, d, t]
            if use_z:
                zz = z[bi, d, t]
                y *= zz / (1 + math.exp(-zz))
            out[bi, d, t] = y
        last[bi, d, :] = h


def _time_major(M, dim, dtype):
    """(dim, N) -> (1, dim, 1, N); (b, N, L) -> (b, 1, L, N); (b, G, N, L) -> (b, G, L, N), contiguous."""
    if M.ndim == 2:
        return np.ascontiguousarray(M, dtype=dtype)[None, :, None, :]
    if M.ndim == 3:
        M = M[:, None]
    return np.ascontiguousarray(np.swapaxes(M, -1, -2), dtype=dtype)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, *, check_finite=True):
    """Numba twin of ``refimpl.scan.selective_scan``, parallel over (batch, dim), in the precision of u."""
    u, delta, A, B, C, D, z, delta_bias = _selective_inputs(u, delta, A, B, C, D, z, delta_bias, check_finite)
    real = _twin_dtype(u, delta, names=("u", "delta"))
    _twin_dtype(A, B, C, names=("A", "B", "C"))
    cplx = np.iscomplexobj(A)
    state = np.dtype(np.complex64 if real == np.float32 else np.complex128) if cplx else real
    batch, dim, L = u.shape
    uf = np.ascontiguousarray(u, dtype=real)
    dt = np.ascontiguousarray(delta, dtype=real)
    bias = np.zeros(dim, dtype=real) if delta_bias is None else np.ascontiguousarray(delta_bias, dtype=real)
    out = np.empty((batch, dim, L), dtype=real)
    last = np.empty((batch, dim, A.shape[1]), dtype=state)
    Dk = np.zeros(1, dtype=real) if D is None else np.ascontiguousarray(D, dtype=real)
    zk = uf if z is None else np.ascontiguousarray(z, dtype=real)
    _selective(uf, dt, bias, np.ascontiguousarray(A, dtype=state), _time_major(B, dim, state),
               _time_major(C, dim, state), Dk, zk, out, last, B.ndim > 2, C.ndim > 2, D is not None, z is not None,
               bool(delta_softplus), cplx)
    return (out, last) if return_last_state else out
