"""The tolerance table: how close a twin computing in ``dtype`` must come to the float64 reference.

One table for every op, read by refimpl's own tests and by anyone checking a kernel against refimpl.
A result passes when its root-mean-square error is within ``atol + rtol * rms(expected)``, that is

    ||actual - expected||_2  <=  atol * sqrt(n)  +  rtol * ||expected||_2

so ``rtol`` bounds the relative L2 error and ``atol`` is a floor for outputs that are (nearly) zero.
The relative L2 error is robust where elementwise relative error is not (cancellation near zero), and a
single wrong element still fails it at these sizes. The rows below were set from measured errors of
refimpl's own twins, with headroom for other correct kernels (a different summation order, FMA or not).
"""

from __future__ import annotations

import numpy as np

#: base row per dtype (complex dtypes use the row of their real part)
BASE = {
    "float64": (1e-10, 1e-13),
    "float32": (2e-5, 1e-7),
    "float16": (5e-3, 1e-4),
    "bfloat16": (3e-2, 1e-3),
}

#: per-op rows that differ from BASE; an op is the reference function's name
OPS = {
    # chapter 1: dense exponentials in float32 lose cond(A) * eps
    "zoh": {"float32": (1e-4, 1e-7)},
    "bilinear": {"float32": (1e-4, 1e-7)},
    # chapter 2: a time-varying recurrence over L steps
    "legs_online": {"float32": (2e-4, 1e-6)},
    # chapter 3: powers Lambda^l up to l ~ 1e5 carry l * eps in the phase in a plain float32 kernel
    # (exp(l*dtLambda) in float32: up to 1.5e-5 relative at l = 65536; z**l: 3e-3, which this row rejects).
    # refimpl's twins restart from accurate powers every 64-128 taps: measured relative L2 error 2.8e-7 to
    # 6.8e-7 (gpu, H100) and 8.6e-7 to 1.3e-6 (cpu) at H 4, N 64, L 16384 and 65536.
    "vandermonde_kernel": {"float32": (2e-4, 1e-6)},
    "power_kernel": {"float32": (2e-4, 1e-6)},
    # float32 FFTs of length 2L: measured 1.7e-7 (cpu, scipy.fft single precision) at H 64, L 16384
    "causal_conv": {"float32": (5e-5, 1e-6)},
    # chapter 4: recurrences accumulate one rounding per step inside their memory window
    "linear_scan": {"float32": (5e-5, 1e-6)},
    "blelloch_scan": {"float32": (5e-5, 1e-6)},
    "selective_scan": {"float32": (2e-4, 1e-6), "float16": (1e-2, 1e-3), "bfloat16": (5e-2, 5e-3)},
    # chapter 5: chunked products with fp16/bf16 operands and fp32 accumulation
    "ssd": {"float32": (2e-4, 1e-6), "float16": (1e-2, 1e-3), "bfloat16": (5e-2, 5e-3)},
    "ssd_recurrent": {"float32": (2e-4, 1e-6)},
    "ssd_quadratic": {"float32": (2e-4, 1e-6)},
    "ssd_chunked": {"float32": (2e-4, 1e-6), "float16": (1e-2, 1e-3), "bfloat16": (5e-2, 5e-3)},
    # chapter 6: softmax-weighted sums; fp16 output rounding dominates
    "attention": {"float16": (5e-3, 1e-4)},
    "attention_with_kvcache": {"float16": (5e-3, 1e-4)},
}

_ALIASES = {"complex128": "float64", "complex64": "float32", "half": "float16", "double": "float64",
            "float": "float32", "single": "float32", "bf16": "bfloat16", "fp16": "float16",
            "fp32": "float32", "fp64": "float64"}


def _dtype_name(dtype) -> str:
    name = getattr(dtype, "name", None) or str(dtype)
    name = name.replace("torch.", "").replace("jnp.", "")
    if name not in BASE and name not in _ALIASES:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            pass
    name = _ALIASES.get(name, name)
    if name not in BASE:
        raise ValueError(f"dtype: expected one of {sorted(BASE)} (or a complex dtype), got {dtype!r}")
    return name


def tolerance(op: str, dtype) -> tuple[float, float]:
    """(rtol, atol) for ``op`` computed in ``dtype`` and compared with the float64 reference.

    >>> tolerance("zoh_diag", "float32")
    (2e-05, 1e-07)
    """
    if not isinstance(op, str) or not op:
        raise ValueError(f"op: expected the name of a reference function, got {op!r}")
    name = _dtype_name(dtype)
    return OPS.get(op, {}).get(name, BASE[name])


def table() -> list[tuple[str, str, float, float]]:
    """Every (op, dtype, rtol, atol) row that differs from the base rows, then the base rows ('*')."""
    rows = [(op, dt, *tol) for op, per in sorted(OPS.items()) for dt, tol in per.items()]
    return rows + [("*", dt, *tol) for dt, tol in BASE.items()]
