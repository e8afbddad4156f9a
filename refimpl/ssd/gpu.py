"""CuPy raw-kernel twin of ``refimpl.ssd``: ``ssd``, the chunked algorithm with its products on tensor cores.

Same name and signature as the reference (``chunk_size=None`` means 256 here). Inputs may be NumPy or CuPy
arrays; x is float16 or float32, and y comes back in x's dtype (a CuPy array), the final states in float32.
The matrix products take fp16 operands with fp32 accumulation (``mma.sync`` m16n8k16 PTX), so a float32 x
is rounded to fp16 on the way in: this twin's precision is fp16's (the ``float16`` row of the tolerance
table) whatever x's dtype.
Δ, the decays and the states are float32 (the state entering each chunk is stored in fp16, the precision the
products use it in; so is C·Bᵀ). Kernels in ``ssd.cu`` (five launches):

    ssd_dt_cumsum -> ssd_bmm (C·Bᵀ per chunk and group) -> ssd_chunk_state -> ssd_state_passing -> ssd_chunk_scan

Glossary as in ``refimpl.ssd``: x (b, l, h, p), dt (b, l, h), A (h,), B and C (b, l, g, n), states (b, h, p, n).
"""

from __future__ import annotations

import functools
import json
import os
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

# Tuning macros of ssd.cu (REFIMPL_SSD_CONFIG, a JSON object of these names, overrides them): SSD_HB heads per
# ssd_chunk_scan block (2 is used only where the two heads of a pair read one group), SSD_NS its copy-ring depth,
# SSD_MINB_Y / SSD_MINB_S the minimum resident blocks per SM that cap the registers of ssd_chunk_scan /
# ssd_chunk_state (0: the most that their shared memory allows; for ssd_chunk_state 3 with 4 warps, 2 with 8),
# SSD_SW warps per ssd_chunk_state block (0: 8 where n > 128, else 4). Chosen by the variant timings on an H100
# (b4 l8192 and b1 l65536, h64 p64 n128): ssd_chunk_scan 0.635 / 1.264 ms with 2 heads per block against
# 0.674 / 1.333 with 1; a 3-deep ring (fewer resident blocks) was slower, 0.739 / 1.488.
CONFIG = {"SSD_HB": 2, "SSD_NS": 2, "SSD_MINB_Y": 0, "SSD_MINB_S": 0, "SSD_SW": 0}
CONFIG.update({k: int(v) for k, v in json.loads(os.environ.get("REFIMPL_SSD_CONFIG", "{}")).items()})
_SMEM_PER_SM = 227 * 1024  # H100: 228 KB per SM, 1 KB of it reserved per resident block

_DEBUG = None  # a dict to receive copies of the intermediate buffers (for diagnosing a kernel); None: off
_PROFILE = None  # a list to receive (kernel name, start event, stop event) of every launch; None: off


def _launch(fn, name, grid, block, args, smem=0):
    if _PROFILE is None:
        fn(grid, block, args, shared_mem=smem)
        return
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    fn(grid, block, args, shared_mem=smem)
    stop.record()
    _PROFILE.append((name, start, stop))


@functools.lru_cache(maxsize=None)
def _kernels(device_id, p, n, Q, out_half, hb, ns, minb_y, minb_s, sw):
    """{name: (function, dynamic shared bytes)} of ssd.cu for one size combination, compiled and set up once."""
    PP, NN, TILE_H = -(-p // 16) * 16, -(-n // 32) * 32, _TILE * (_TILE + 8)
    smem = {"ssd_chunk_scan": ns * (1 + hb) * TILE_H * 2,
            "ssd_chunk_state": 2 * (TILE_H + _TILE * (NN + 8)) * 2}
    static = {"ssd_chunk_scan": hb * Q * 10, "ssd_chunk_state": Q * 2}
    sw = sw if sw > 0 else (8 if NN > 128 else 4)
    if minb_s <= 0:
        minb_s = 3 if sw == 4 else 2
    if minb_y <= 0:  # as many blocks as shared memory allows, at most 8 (a register cap of 64)
        minb_y = max(1, min(8, _SMEM_PER_SM // (smem["ssd_chunk_scan"] + static["ssd_chunk_scan"] + 1024)))
    opts = (f"-DSSD_P={p}", f"-DSSD_N={n}", f"-DSSD_Q={Q}", f"-DSSD_OUT_HALF={int(out_half)}", f"-DSSD_HB={hb}",
            f"-DSSD_NS={ns}", f"-DSSD_MINB_Y={minb_y}", f"-DSSD_MINB_S={minb_s}", f"-DSSD_SW={sw}")
    out = {}
    for name in ("ssd_dt_cumsum", "ssd_bmm", "ssd_chunk_state", "ssd_state_passing", "ssd_chunk_scan"):
        fn = _gpu.kernel(_CU, name, opts)
        sm = smem.get(name, 0)
        if sm + static.get(name, 0) > 48 * 1024:
            fn.max_dynamic_shared_size_bytes = sm
        if sm:
            try:  # a hint for the largest shared-memory carveout: the blocks per SM are counted on it
                fn.preferred_shared_memory_carveout = 100
            except Exception:  # older CuPy has no setter
                pass
        out[name] = (fn, sm)
    out["warps_state"] = sw
    return out


@functools.lru_cache(maxsize=None)
def _zeros(device_id, n, dtype):
    """A zero vector kept per device (the kernels only read it): no allocation and fill per call."""
    return cp.zeros(n, dtype=dtype)


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

    dev = cp.cuda.Device().id
    hb = CONFIG["SSD_HB"] if (h // g) % CONFIG["SSD_HB"] == 0 else 1  # the heads of a block share one group
    kern = _kernels(dev, p, n, Q, bool(out_half), hb, CONFIG["SSD_NS"], CONFIG["SSD_MINB_Y"], CONFIG["SSD_MINB_S"],
                    CONFIG["SSD_SW"])

    def run(name, grid, block, kargs):
        fn, smem = kern[name]
        _launch(fn, name, (grid,), (block,), kargs, smem)

    I = np.int64  # noqa: E741  (every size goes in as a 64-bit integer: 64-bit offsets in the kernels)
    dtf, Af = f32(args["dt"]), f32(args["A"])
    bias = _zeros(dev, h, cp.float32) if args["dt_bias"] is None else f32(args["dt_bias"])
    dtq = _empty((b, h, nc * Q), cp.float32)
    acum = _empty((b, h, nc * Q), cp.float32)
    wend = _empty((b, h, nc * Q), cp.float32)
    run("ssd_dt_cumsum", b * nc * -(-h // 8), 256,
        (dtf, Af, bias, np.int32(bool(dt_softplus)), dtq, acum, wend, I(b), I(l), I(h), I(nc)))

    xh, Bh, Ch = (_aligned(f16(args[k])) for k in ("x", "B", "C"))
    npair = (Q // _TILE) * (Q // _TILE + 1) // 2
    CB = _empty((b, nc, g, Q, Q), cp.float16)
    run("ssd_bmm", b * nc * g * npair, 128, (Bh, Ch, CB, I(b), I(l), I(g), I(nc)))
    states = _empty((b, nc, h, PP, NN), cp.float32)
    ncp = -(-PP // 64)  # blocks along p (64 rows or columns of p each)
    run("ssd_chunk_state", b * nc * ncp * h, 32 * kern["warps_state"],
        (xh, Bh, wend, states, I(b), I(l), I(h), I(g), I(nc)))
    if _DEBUG is not None:
        _DEBUG.update(dtq=dtq.copy(), acum=acum.copy(), wend=wend.copy(), CB=CB.copy(), own_states=states.copy())
    has_init = args["initial_states"] is not None
    if has_init:
        init = cp.zeros((b, h, PP, NN), cp.float32)
        init[:, :, :p, :n] = args["initial_states"]
    else:
        init = _zeros(dev, 1, cp.float32)
    Hin = _empty((b, nc, h, PP, NN), cp.float16)
    per = -(-(PP * NN // 4) // 256)
    run("ssd_state_passing", b * h * per, 256, (states, acum, init, Hin, final, np.int32(has_init), I(b), I(h), I(nc)))
    has_D, has_z = args["D"] is not None, args["z"] is not None
    Dm = _aligned(f32(cp.broadcast_to(args["D"].reshape(h, -1), (h, p)))) if has_D else _zeros(dev, 1, cp.float32)
    zz = _aligned(cp.ascontiguousarray(args["z"], dtype=out_dtype)) if has_z else _zeros(dev, 1, out_dtype)
    run("ssd_chunk_scan", b * nc * (Q // _TILE) * ncp * (h // hb), 128 * hb,
        (xh, Ch, CB, Hin, dtq, acum, Dm, zz, y, np.int32(has_D), np.int32(has_z), I(b), I(l), I(h), I(g), I(nc)))
    if _DEBUG is not None:
        _DEBUG.update(entering=Hin.copy())
    if not return_final_states:
        return y
    return y, cp.ascontiguousarray(final[:, :, :p, :n])
