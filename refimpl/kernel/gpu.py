"""CuPy twins of ``refimpl.kernel``: ``vandermonde_kernel`` (a raw CUDA kernel) and ``causal_conv`` (cuFFT).

Same names and signatures as the reference. Inputs may be NumPy or CuPy arrays; results are float32 CuPy
arrays on the current device. ``vandermonde.cu`` holds the kernel: one thread block per (channel, tile of
taps), the modes in shared memory, one accurate start power per (thread, mode) and then a short run of
complex multiplies — never an (H, N, L) array. Glossary as in ``refimpl.kernel``.
"""

from __future__ import annotations

import pathlib

import numpy as np

from .. import _gpu
from .._gpu import cp
from . import _discretizer, conv_shape, kernel_shape, modes
from .._checks import check_rank, positive_int

__all__ = ["vandermonde_kernel", "causal_conv"]

_CU = pathlib.Path(__file__).parent / "vandermonde.cu"
_DISCRETIZE = pathlib.Path(__file__).parent.parent / "discretize"  # vandermonde.cu includes zoh_diag.cu
_THREADS = 128
#: taps per thread (a template parameter of the kernel: 16, 32 or 64)
RUN = 64


def _check_finite(named):
    """One device reduction and one synchronization for all the inputs, then a message naming the culprit."""
    flags = cp.stack([cp.isfinite(a).all() for _, a in named])
    if not bool(flags.all()):
        bad = [name for (name, _), ok in zip(named, cp.asnumpy(flags)) if not ok]
        raise ValueError(f"{bad[0]}: contains NaN or inf (pass check_finite=False to skip this check)")


def _rows(a, dtype):
    """``a`` contiguous in ``dtype`` (copied only if it is not) and its channel stride: 0 when shared."""
    if a.dtype != dtype or not a.flags.c_contiguous:
        a = cp.ascontiguousarray(a, dtype=dtype)
    return a, (0 if a.ndim <= 1 or a.shape[0] == 1 else a.shape[-1])


_FLAGS, _FUNCS = {}, {}
_NAMES = ((1, "Lambda"), (2, "B"), (4, "C"), (8, "dt"))


def _flag():
    """A per-device int32 the kernel ORs its non-finite-input bits into (reset before each checked call)."""
    dev = cp.cuda.Device().id
    if dev not in _FLAGS:
        _FLAGS[dev] = cp.zeros(1, dtype=cp.int32)
    return _FLAGS[dev]


def _function(name):
    """The compiled kernel ``name`` of vandermonde.cu (with chapter 1's zoh_diag.cu on the include path),
    looked up once per device: the lookup costs host time on every call otherwise."""
    key = (cp.cuda.Device().id, name)
    if key not in _FUNCS:
        _FUNCS[key] = _gpu.kernel(_CU, name, options=(f"-I{_DISCRETIZE}",))
    return _FUNCS[key]


def prepare(Lambda, B, C, dt, L, *, discretization="zoh", conj_pairs=True, check_finite=True, run=None):
    """Validate and lay out the inputs; returns (launch, K, flag, batch): ``launch()`` runs the kernel once.

    Split from ``vandermonde_kernel`` so that a benchmark can time the kernel alone.
    """
    _discretizer(discretization)
    if not isinstance(conj_pairs, (bool, np.bool_)):
        raise TypeError(f"conj_pairs: expected a bool, got {type(conj_pairs).__name__}")
    L = positive_int("L", L)
    run = RUN if run is None else run
    if run not in (16, 32, 64):
        raise ValueError(f"run: expected 16, 32 or 64, got {run!r}")
    Lambda, B, C = _gpu.device_array("Lambda", Lambda), _gpu.device_array("B", B), _gpu.device_array("C", C)
    dt = _gpu.device_array("dt", dt, complex_ok=False)
    batch, N = kernel_shape(Lambda.shape, B.shape, C.shape, dt.shape)
    H = batch[0] if batch else 1
    c = np.float32(2.0 if conj_pairs else 1.0)
    if discretization == "zoh":  # chapter 1's ZOH runs inside the kernel's prologue
        lam, lam_hs = _rows(Lambda, cp.complex64)
        b, b_hs = _rows(B, cp.complex64)
        h_dt = _rows(dt, cp.float32)[0]
        dt_hs = 0 if h_dt.size == 1 else 1
        logz, use_logz = lam, 0  # logz is not read
    else:  # only O(H·N) work on the host; the O(H·N·L) product stays on the device
        Bd, logz_h = modes(cp.asnumpy(Lambda), cp.asnumpy(B), np.ones(N), cp.asnumpy(dt),
                           discretization=discretization, conj_pairs=False, check_finite=check_finite)
        b, b_hs = cp.asarray(Bd, dtype=cp.complex64), N  # W = 1·B̄ with C = 1: the kernel multiplies by c·C
        logz, use_logz = cp.asarray(logz_h, dtype=cp.complex128), 1
        lam, lam_hs, h_dt, dt_hs = b, 0, b.real, 0  # not read
    Cr, C_hs = _rows(C, cp.complex64)
    K = cp.empty((H, L), dtype=cp.float32)
    flag = _flag()
    tiles = -(-L // (_THREADS * run))
    fn = _function(f"vandermonde_r{run}")
    args = (lam, np.int64(lam_hs), h_dt, np.int64(dt_hs), logz, np.int32(use_logz), b, np.int64(b_hs), Cr,
            np.int64(C_hs), c, K, np.int64(H), np.int64(N), np.int64(L), np.int32(bool(check_finite)), flag)

    def launch():
        fn((H * tiles,), (_THREADS,), args)

    return launch, K, flag, batch


def vandermonde_kernel(Lambda, B, C, dt, L, *, discretization="zoh", conj_pairs=True, check_finite=True):
    """GPU twin of ``refimpl.kernel.vandermonde_kernel``: float32 K (H, L) from complex64 modes.

    ZOH runs entirely in one kernel: chapter 1's B̄ (``discretize/zoh_diag.cu``'s phi1) in the prologue, the
    exponent dt·Λ formed in double. Other rules take (Ā, B̄) from the float64 reference on the host (O(H·N))
    and pass log Ā to the same kernel. With ``check_finite`` the kernel flags NaN/inf in what it reads,
    and the call waits for it to raise.
    """
    return vandermonde_kernel_run(Lambda, B, C, dt, L, discretization=discretization, conj_pairs=conj_pairs,
                                  check_finite=check_finite)


def vandermonde_kernel_run(Lambda, B, C, dt, L, *, discretization="zoh", conj_pairs=True, check_finite=True,
                           run=None):
    """``vandermonde_kernel`` with the taps per thread chosen: ``run`` 16, 32 or 64 (default ``RUN``)."""
    launch, K, flag, batch = prepare(Lambda, B, C, dt, L, discretization=discretization,
                                     conj_pairs=conj_pairs, check_finite=check_finite, run=run)
    if check_finite:
        flag.fill(0)
    launch()
    if check_finite:
        bits = int(cp.asnumpy(flag)[0])
        if bits:
            name = next(n for bit, n in _NAMES if bits & bit)
            raise ValueError(f"{name}: contains NaN or inf (pass check_finite=False to skip this check)")
    return K.reshape(batch + (K.shape[-1],))


def causal_conv(u, K, D=None, *, check_finite=True):
    """GPU twin of ``refimpl.kernel.causal_conv``: float32 in and out, cuFFT transforms of length 2L."""
    u, K = _gpu.device_array("u", u, complex_ok=False), _gpu.device_array("K", K, complex_ok=False)
    check_rank("K", K.shape, ndim=2)
    check_rank("u", u.shape, min_ndim=2)
    D = None if D is None else _gpu.device_array("D", D, complex_ok=False)
    conv_shape(u.shape, K.shape, None if D is None else D.shape)
    if check_finite:
        _check_finite([("u", u), ("K", K)] + ([] if D is None else [("D", D)]))
    u = cp.ascontiguousarray(u, dtype=cp.float32)
    L = K.shape[-1]
    n = 2 * L
    Uf = cp.fft.rfft(u, n)
    Uf *= cp.fft.rfft(cp.ascontiguousarray(K, dtype=cp.float32), n)
    y = cp.fft.irfft(Uf, n)[..., :L]
    if D is None:
        return cp.ascontiguousarray(y)
    D = cp.ascontiguousarray(D, dtype=cp.float32)
    # one pass: the causal half of the inverse transform plus the skip term, into a contiguous output
    return _skip_add(y, D.reshape(-1, 1) if D.ndim else D, u)


_skip_add = cp.ElementwiseKernel("float32 y, float32 d, float32 u", "float32 out", "out = y + d * u",
                                 "refimpl_kernel_skip_add")
