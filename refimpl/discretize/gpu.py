"""CuPy raw-kernel twins of ``refimpl.discretize``: ``zoh_diag`` (complex64 / float32) and ``zoh`` (batched).

Same names and signatures as the reference. Inputs may be NumPy or CuPy arrays; results are CuPy arrays on
the current device, complex64 or float32. Kernels: ``zoh_diag.cu`` (one mode per thread, memory-bound) and
``zoh.cu`` (one system per thread block, the augmented exponential by scaling and squaring in shared memory).

Glossary as in ``refimpl.discretize``: Lambda (..., N), A (..., N, N), B (..., N[, M]), dt (...).
"""

from __future__ import annotations

import pathlib

import numpy as np

from .. import _gpu
from .._gpu import cp
from . import dense_shape, diag_shape

__all__ = ["zoh_diag", "zoh"]

_HERE = pathlib.Path(__file__).parent
_THREADS = 256


def _launch(name, n, args):
    """Launch kernel ``name`` over ``n`` items with 32-bit indices where they cannot overflow."""
    blocks = _gpu.blocks_for(n, _THREADS)
    wide = n + 4 * blocks * _THREADS >= 2**31  # zoh_diag.cu's UNROLL = 4
    fn = _gpu.kernel(_HERE / "zoh_diag.cu", f"{name}_{'i64' if wide else 'i32'}")
    ints = [np.int64(v) if wide else np.int32(v) for v in args[-2:]]
    fn((blocks,), (_THREADS,), tuple(args[:-2]) + tuple(ints))


def zoh_diag(Lambda, B, dt, *, check_finite=True):
    """GPU twin of ``refimpl.discretize.zoh_diag``: complex64 when Lambda or B is complex, else float32."""
    Lambda, B = _gpu.device_array("Lambda", Lambda), _gpu.device_array("B", B)
    dt = _gpu.device_array("dt", dt, complex_ok=False)
    shape = diag_shape(Lambda.shape, B.shape, dt.shape)
    for name, a in (("Lambda", Lambda), ("B", B), ("dt", dt)):
        _gpu.require_finite(name, a, check_finite)
    N = shape[-1]
    cplx = Lambda.dtype.kind == "c" or B.dtype.kind == "c"
    dtype = cp.complex64 if cplx else cp.float32
    # broadcast_to + ascontiguousarray copies only when an argument is really broadcast
    lam = cp.ascontiguousarray(cp.broadcast_to(Lambda, shape), dtype=dtype)
    b = cp.ascontiguousarray(cp.broadcast_to(B, shape), dtype=dtype)
    h = cp.ascontiguousarray(cp.broadcast_to(dt, shape[:-1]), dtype=cp.float32)
    ad = cp.empty(shape, dtype=dtype)
    bd = cp.empty(shape, dtype=dtype)
    n = ad.size
    if n:
        _launch("zoh_diag_c64" if cplx else "zoh_diag_f32", n, (lam, b, h, ad, bd, n, N))
    return ad, bd


_MAXN = 32  # zoh.cu keeps four (N+M) x (N+M) matrices in shared memory, one system per block


def zoh(A, B, dt, *, check_finite=True):
    """GPU twin of ``refimpl.discretize.zoh`` for small systems (N + M <= 32): float32 or complex64.

    One thread block per system: scaling and squaring with the [6/6] Pade approximant, in shared memory.
    Larger systems raise ``ValueError``; use ``refimpl.discretize.cpu.zoh`` for them.
    """
    A, B = _gpu.device_array("A", A), _gpu.device_array("B", B)
    dt = _gpu.device_array("dt", dt, complex_ok=False)
    batch = dense_shape(A.shape, B.shape, dt.shape)
    N, M = B.shape[-2], B.shape[-1]
    if N + M > _MAXN:
        raise ValueError(f"A, B: the GPU zoh handles N + M <= {_MAXN} (one block per system), got N + M = "
                         f"{N + M}; use refimpl.discretize.cpu.zoh")
    for name, a in (("A", A), ("B", B), ("dt", dt)):
        _gpu.require_finite(name, a, check_finite)
    cplx = A.dtype.kind == "c" or B.dtype.kind == "c"
    dtype = cp.complex64 if cplx else cp.float32
    A3 = cp.ascontiguousarray(cp.broadcast_to(A, batch + (N, N)), dtype=dtype).reshape(-1, N, N)
    B3 = cp.ascontiguousarray(cp.broadcast_to(B, batch + (N, M)), dtype=dtype).reshape(-1, N, M)
    h = cp.ascontiguousarray(cp.broadcast_to(dt, batch), dtype=cp.float32).reshape(-1)
    Ad = cp.empty_like(A3)
    Bd = cp.empty_like(B3)
    nsys = A3.shape[0]
    if nsys:
        n = N + M
        fn = _gpu.kernel(_HERE / "zoh.cu", "zoh_dense_c64" if cplx else "zoh_dense_f32")
        for first in range(0, nsys, 2**31 - 1):  # gridDim.x is at most 2^31 - 1
            count = min(nsys - first, 2**31 - 1)
            fn((count,), (n, n), (A3[first:], B3[first:], h[first:], Ad[first:], Bd[first:], np.int32(N),
                                  np.int32(M)))
    return Ad.reshape(batch + (N, N)), Bd.reshape(batch + (N, M))
