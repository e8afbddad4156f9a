"""Numba twins of ``refimpl.kernel``: ``vandermonde_kernel`` and ``causal_conv``.

Same names and signatures as the reference; they compute in the inputs' precision (float32/complex64 or
float64/complex128) and return that dtype (real). Glossary as in ``refimpl.kernel``: Lambda, B, C (H, N),
dt (H,), K (H, L), u (..., H, L).

``vandermonde_kernel`` is parallel over (channel, block of ``_SUPER`` taps) and pays no complex exp per
(n, l): each block starts from exp(l0·log Ā) in float64 and then multiplies by Ā once per tap, restarting
every ``_RUN`` taps from a float64 jump z_{l+R} = z_l·Ā^R so that the rounding of the working precision
never accumulates over more than ``_RUN`` multiplications.
"""

from __future__ import annotations

import cmath

import numba
import numpy as np
import scipy.fft

from . import _conv_inputs, _kernel_inputs, _skip, modes
from .._checks import float_dtype

__all__ = ["vandermonde_kernel", "causal_conv"]

#: taps per parallel task, and taps per run of working-precision multiplications inside it
_SUPER = 4096
_RUN = 128


def _twin_real(*named):
    """float32 when every float input is float32/complex64-based, else float64 (the twin's precision)."""
    for name, a in named:
        float_dtype(name, a)
    return np.float32 if all(a.dtype in (np.float32, np.complex64) for _, a in named) else np.float64


@numba.njit(parallel=True, cache=True, fastmath={"reassoc", "contract", "nsz"})
def _vandermonde(W, logz, zr, zi, K, run):
    """K[h, l] = Re Σ_n W[h,n]·z[h,n]^l; W, logz complex128 (H, N); zr, zi (H, N) and K (H, L) in the twin dtype."""
    H, N = W.shape
    L = K.shape[1]
    nsup = (L + _SUPER - 1) // _SUPER
    for task in numba.prange(H * nsup):
        h = task // nsup
        l0 = (task % nsup) * _SUPER
        l1 = min(L, l0 + _SUPER)
        s = np.empty(N, dtype=np.complex128)  # float64 run starts W·z^l0
        jump = np.empty(N, dtype=np.complex128)  # z^run in float64
        for n in range(N):
            s[n] = W[h, n] * cmath.exp(l0 * logz[h, n])
            jump[n] = cmath.exp(run * logz[h, n])
        sr = np.empty(N, dtype=K.dtype)
        si = np.empty(N, dtype=K.dtype)
        for r0 in range(l0, l1, run):
            for n in range(N):
                sr[n] = s[n].real
                si[n] = s[n].imag
            for l in range(r0, min(l1, r0 + run)):
                acc = K.dtype.type(0)
                for n in range(N):  # vectorized over modes: one complex multiply and one add per (n, l)
                    a, b = sr[n], si[n]
                    acc += a
                    sr[n] = a * zr[h, n] - b * zi[h, n]
                    si[n] = a * zi[h, n] + b * zr[h, n]
                K[h, l] = acc
            for n in range(N):
                s[n] = s[n] * jump[n]


def vandermonde_kernel(Lambda, B, C, dt, L, *, discretization="zoh", conj_pairs=True, check_finite=True):
    """Numba twin of ``refimpl.kernel.vandermonde_kernel``; float32 out for float32/complex64 inputs."""
    Lambda, B, C, dt, L, batch, _ = _kernel_inputs(Lambda, B, C, dt, L, discretization, conj_pairs,
                                                   check_finite)
    real = _twin_real(("Lambda", Lambda), ("B", B), ("C", C))
    # the (H, N) weights and exponents are O(H·N), in float64 from the reference's discretization
    W, logz = modes(Lambda, B, C, dt, discretization=discretization, conj_pairs=conj_pairs,
                    check_finite=False)
    z = np.exp(logz)
    K = np.empty(W.shape[:1] + (L,), dtype=real)
    _vandermonde(W, logz, z.real.astype(real), z.imag.astype(real), K, _RUN)
    return K.reshape(batch + (L,))


def causal_conv(u, K, D=None, *, check_finite=True):
    """Twin of ``refimpl.kernel.causal_conv`` in the inputs' precision: float32 FFTs for float32 inputs.

    ``scipy.fft`` transforms in single precision when given float32 (NumPy's would upcast) and splits the
    channels over the cores (``workers=-1``); the 2L padding is the reference's.
    """
    u, K, D = _conv_inputs(u, K, D, check_finite)
    real = _twin_real(("u", u), ("K", K))
    if np.iscomplexobj(u) or np.iscomplexobj(K):
        raise TypeError("u, K: the cpu twin takes real sequences and kernels; use refimpl.kernel.causal_conv")
    u = u.astype(real, copy=False)
    L = K.shape[-1]
    n = 2 * L
    Uf = scipy.fft.rfft(u, n, workers=-1)
    Uf *= scipy.fft.rfft(K.astype(real, copy=False), n, workers=-1)
    y = scipy.fft.irfft(Uf, n, workers=-1)[..., :L]
    if D is not None:
        y += (_skip(D) * u).astype(real)
    return np.ascontiguousarray(y)
