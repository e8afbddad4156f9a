"""CuPy raw-kernel twin of ``refimpl.ssd``: ``ssd``, the chunked algorithm with its products on tensor cores.

Same name and signature as the reference (``chunk_size=None`` means 256 here). Inputs may be NumPy or CuPy
arrays; x is float16 or float32, and y comes back in x's dtype (a CuPy array), the final states in float32.
The matrix products take fp16 operands with fp32 accumulation (``mma.sync`` m16n8k16 PTX), so a float32 x
is rounded to fp16 on the way in: this twin's precision is fp16's (the ``float16`` row of the tolerance
table) whatever x's dtype.
Δ, the decays and the states are float32 (the state entering each chunk is stored in fp16, the precision the
products use it in). Kernels in ``ssd.cu`` (five launches):

    ssd_dt_cumsum -> ssd_bmm (C·Bᵀ per chunk and group) -> ssd_chunk_state -> ssd_state_passing -> ssd_chunk_scan

Glossary as in ``refimpl.ssd``: x (b, l, h, p), dt (b, l, h), A (h,), B and C (b, l, g, n), states (b, h, p, n).
"""

from __future__ import annotations

import pathlib

import numpy as np

from .. import _gpu
from .._checks import positive_int
from .._gpu import cp
from . import ssd_shape

__all__ = ["ssd"]

_HERE = pathlib.Path(__file__).parent
_CU = _HERE / "ssd.cu"
_TILE = 64

_DEBUG = None  # a dict to receive copies of the intermediate buffers (for diagnosing a kernel); None: off
_PROFILE = None  # a list to receive (kernel name, start event, stop event) of every launch; None: off


def _launch(fn, name, grid, block, args):
    if _PROFILE is None:
        fn(grid, block, args)
        return
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    fn(grid, block, args)
    stop.record()
    _PROFILE.append((name, start, stop))


def _empty(shape, dtype):
    """Every buffer this module allocates (the GPU tests replace it with one that fills NaN first)."""
    return cp.empty(shape, dtype=dtype)


def _aligned(a):
    """``a`` itself when its data is 16-byte aligned (the kernels load 8 halves at a time), else a copy."""
    return a if a.data.ptr % 16 == 0 else a.copy()


def kernel_chunk(chunk_size):
    """The chunk length the kernels use: ``chunk_size`` (None: 256) rounded up to a multiple of 64, at most 256.

    The function computed does not depend on the chunk length (only the rounding does), so any positive
    ``chunk_size`` is accepted.
    """
    Q = positive_int("chunk_size", 256 if chunk_size is None else chunk_size)
    return min(256, -(-Q // _TILE) * _TILE)


def ssd(x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False, initial_states=None,
        return_final_states=False, chunk_size=None, check_finite=True):
    """GPU twin of ``refimpl.ssd.ssd`` (fp16 tensor-core products, fp32 accumulation and state)."""
    named = (("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z), ("dt_bias", dt_bias),
             ("initial_states", initial_states))
    args = {k: _gpu.device_array(k, v, complex_ok=False) for k, v in named}
    shp = {k: (None if v is None else v.shape) for k, v in args.items()}
    b, l, h, p, g, n = ssd_shape(shp["x"], shp["dt"], shp["A"], shp["B"], shp["C"], shp["D"], shp["z"],
                                 shp["dt_bias"], shp["initial_states"])
    Q = kernel_chunk(chunk_size)
    if args["x"].dtype not in (cp.float16, cp.float32):
        raise TypeError(f"x: expected dtype float16 or float32, got {args['x'].dtype}")
    PP, NN = -(-p // 16) * 16, -(-n // 32) * 32  # the padded sizes of ssd.cu
    if p > 128 or n > 256 or PP + NN > 320:
        raise ValueError(f"x, B: the GPU twin supports p <= 128, n <= 256 and p + n <= 320 (shared memory), "
                         f"got p = {p}, n = {n}; use refimpl.ssd.cpu.ssd")
    if check_finite:
        for k, v in args.items():
            if v is not None and v.dtype.kind == "f" and not bool(cp.isfinite(v).all()):
                raise ValueError(f"{k}: contains NaN or inf (pass check_finite=False to skip this check)")
    out_half = args["x"].dtype == cp.float16
    out_dtype = cp.float16 if out_half else cp.float32
    f32 = lambda v: cp.ascontiguousarray(v, dtype=cp.float32)  # noqa: E731
    f16 = lambda v: cp.ascontiguousarray(v, dtype=cp.float16)  # noqa: E731

    nc = max(1, -(-l // Q))
    y = _empty((b, l, h, p), out_dtype)
    final = _empty((b, h, PP, NN), cp.float32)
    if l == 0 or b == 0 or h == 0:
        H = cp.zeros((b, h, p, n), cp.float32) if args["initial_states"] is None else f32(args["initial_states"])
        return (y, H) if return_final_states else y

    xh, Bh, Ch = (_aligned(f16(args[k])) for k in ("x", "B", "C"))
    dtf, Af = f32(args["dt"]), f32(args["A"])
    bias = cp.zeros(h, cp.float32) if args["dt_bias"] is None else f32(args["dt_bias"])
    has_D, has_z = args["D"] is not None, args["z"] is not None
    Dm = f32(cp.broadcast_to(args["D"].reshape(h, -1), (h, p))) if has_D else cp.zeros(1, cp.float32)
    zz = cp.ascontiguousarray(args["z"], dtype=out_dtype) if has_z else cp.zeros(1, out_dtype)
    has_init = args["initial_states"] is not None
    if has_init:
        init = cp.zeros((b, h, PP, NN), cp.float32)
        init[:, :, :p, :n] = args["initial_states"]
    else:
        init = cp.zeros(1, cp.float32)

    dtq = _empty((b, h, nc * Q), cp.float32)
    acum = _empty((b, h, nc * Q), cp.float32)
    wend = _empty((b, h, nc * Q), cp.float32)
    npair = (Q // _TILE) * (Q // _TILE + 1) // 2
    CB = _empty((b, nc, g, Q, Q), cp.float32)
    states = _empty((b, nc, h, PP, NN), cp.float32)

    opts = (f"-DSSD_P={p}", f"-DSSD_N={n}", f"-DSSD_Q={Q}", f"-DSSD_OUT_HALF={int(out_half)}")

    def run(name, grid, block, kargs):
        _launch(_gpu.kernel(_CU, name, opts), name, (grid,), (block,), kargs)

    I = np.int64  # noqa: E741  (every size goes in as a 64-bit integer: 64-bit offsets in the kernels)
    warps = b * nc * h
    run("ssd_dt_cumsum", -(-warps * 32 // 256), 256,
        (dtf, Af, bias, np.int32(bool(dt_softplus)), dtq, acum, wend, I(b), I(l), I(h), I(nc)))
    run("ssd_bmm", b * nc * g * npair, 128, (Bh, Ch, CB, I(b), I(l), I(g), I(nc)))
    run("ssd_chunk_state", b * nc * h, 256, (xh, Bh, wend, states, I(b), I(l), I(h), I(g), I(nc)))
    if _DEBUG is not None:
        _DEBUG.update(dtq=dtq.copy(), acum=acum.copy(), wend=wend.copy(), CB=CB.copy(), own_states=states.copy())
    Hin = _empty((b, nc, h, PP, NN), cp.float16)
    per = -(-(PP * NN // 4) // 256)
    run("ssd_state_passing", b * h * per, 256, (states, acum, init, Hin, final, np.int32(has_init), I(b), I(h), I(nc)))
    run("ssd_chunk_scan", b * nc * (Q // _TILE) * h, 128,
        (xh, Ch, CB, Hin, dtq, acum, Dm, zz, y, np.int32(has_D), np.int32(has_z), I(b), I(l), I(h), I(g), I(nc)))
    if _DEBUG is not None:
        _DEBUG.update(entering=Hin.copy())
    if not return_final_states:
        return y
    return y, cp.ascontiguousarray(final[:, :, :p, :n])
