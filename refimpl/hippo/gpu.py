"""CuPy raw-kernel twin of ``refimpl.hippo.legs_online``, batched over signals, with the O(N) LegS update.

Same name and signature as the reference. f may be a NumPy or CuPy array; the result is a CuPy array of
shape (..., L, N), float64 for float64 input and float32 otherwise. Kernel ``legs_online.cu``: a group of G
lanes owns one signal, each lane Q of its N states in registers; a step is O(N) work with two shuffle scans
over the group (see the comment at the top of the .cu file). Offsets are 64-bit when the output has 2^31
elements or more. N ≤ 512.

Glossary as in ``refimpl.hippo``: f (..., L), c (..., L, N), k = 1..L the step, α the GBT weight.
"""

from __future__ import annotations

import pathlib

import numpy as np

from .. import _gpu
from .._gpu import cp
from . import _method_alpha, check_twin_method, online_shape
from .._checks import check_rank, positive_int

__all__ = ["legs_online"]

_HERE = pathlib.Path(__file__).parent
_THREADS = 128
N_MAX = 512
_FORCE_WIDE = False  # tests set this to run the 64-bit-offset kernel on small inputs
# States per lane (at least; doubled for N > 32·_Q). Measured on an H100, 4096 signals × L 4096 × N 64:
# Q = 2, 4, 8, 16 took 3.14, 2.41, 2.93, 4.22 ms in float32 and 4.54, 3.51, 5.44, 9.08 ms in float64.
_Q = 4


def layout(N):
    """(Q, G): states per lane and lanes per signal for state size N (G a power of two ≤ 32, G·Q ≥ N)."""
    if N > N_MAX:
        raise ValueError(f"N: the GPU twin supports N <= {N_MAX}, got {N}")
    Q = _Q
    while Q * 32 < N:
        Q *= 2
    G = 1
    while G * Q < N:
        G *= 2
    return Q, G


def legs_online(f, N, *, method="bilinear", check_finite=True):
    """GPU twin of ``refimpl.hippo.legs_online``: c (..., L, N), float64 for float64 f, else float32."""
    N = positive_int("N", N)
    alpha = _method_alpha(method)
    a = f if isinstance(f, cp.ndarray) else cp.asarray(np.asarray(f))
    if a.dtype.kind not in "biuf":
        raise TypeError(f"f: expected a real array, got dtype {a.dtype}")
    check_rank("f", a.shape, min_ndim=1)
    shape = online_shape(a.shape, N)
    dtype = cp.float64 if a.dtype == cp.float64 else cp.float32
    check_twin_method(alpha, dtype, N)
    if check_finite and a.dtype.kind == "f" and not bool(cp.isfinite(a).all()):
        raise ValueError("f: contains NaN or inf (pass check_finite=False to skip this check)")
    Q, G = layout(N)
    L = a.shape[-1]
    fd = cp.ascontiguousarray(a, dtype=dtype).reshape(int(np.prod(a.shape[:-1])), L)
    nsig = fd.shape[0]
    out = cp.empty((nsig, L, N), dtype=dtype)
    if out.size:
        threads = nsig * G
        blocks = -(-threads // _THREADS)
        wide = _FORCE_WIDE or out.size >= 2**31 or blocks * _THREADS >= 2**31
        name = f"legs_online_{'f64' if dtype == cp.float64 else 'f32'}_{'i64' if wide else 'i32'}"
        fn = _gpu.kernel(_HERE / "legs_online.cu", name, options=(f"-DLEGS_Q={Q}", f"-DLEGS_G={G}"))
        ints = (np.int64 if wide else np.int32)
        fn((blocks,), (_THREADS,), (fd, out, ints(nsig), ints(L), np.int32(N), dtype(alpha)))
    return out.reshape(shape)
