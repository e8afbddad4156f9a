"""CuPy raw-kernel twins of ``refimpl.scan``: ``linear_scan`` (float32 / complex64) and ``selective_scan``.

Same names and signatures as the reference. Inputs may be NumPy or CuPy arrays; results are CuPy arrays on
the current device. Kernels:

- ``linear_scan.cu``: one pass over memory (a, b read once, h written once: 12 bytes per float32 element).
  Each block copies a tile of 4096 elements into shared memory (cp.async, 6 blocks per SM), scans it (serial
  per thread, warp shuffles across lanes and warps) and joins the tiles before it by a two-level decoupled
  look-back whose combination order depends only on the tile's index: bitwise identical results run to
  run. Its entries are single 8-byte words (no flags, no fences). 64-bit offsets.
- ``selective_scan.cu``, three kernels. For N <= 16 (Mamba's default): 4 lanes per (batch, channel), each
  lane four states over the whole sequence, no scan across lanes; y by a two-round shuffle reduce-scatter;
  u, delta, z streamed through a per-thread cp.async ring in shared memory (QPF blocks of 16 steps ahead),
  B and C tiles multi-buffered in shared memory (cp.async) for the block's 64 channels (``quad``; the
  earlier 8-lanes-x-2-states kernel ``states`` is kept, tested, selectable). Otherwise: one warp per
  channel, the sequence split across its lanes and joined by a shuffle scan per state. Real A only
  (complex A: use ``refimpl.scan.cpu`` or the reference).

Glossary as in ``refimpl.scan``: a, b, h (..., L), h0 (...); u, delta, z (b, d, L), A (d, N), B, C.
"""

from __future__ import annotations

import pathlib

import numpy as np

from .. import _gpu
from .._gpu import cp
from . import scan_shape, selective_shape

__all__ = ["linear_scan", "selective_scan"]

_HERE = pathlib.Path(__file__).parent


def _smem_attributes(fn, smem):
    """Allow ``smem`` bytes of dynamic shared memory and ask for the largest shared-memory carveout."""
    if smem > 48 * 1024:
        fn.max_dynamic_shared_size_bytes = smem
    if smem > 16 * 1024:
        try:
            fn.preferred_shared_memory_carveout = 100
        except (AttributeError, Exception):  # a hint only; older CuPy has no setter
            pass


def linear_scan(a, b, h0=None, *, check_finite=True):
    """GPU twin of ``refimpl.scan.linear_scan``: complex64 when an input is complex, else float32.

    One kernel launch; deterministic (bitwise identical run to run); any number of sequences and any L.
    """
    a, b, h0 = _gpu.device_array("a", a), _gpu.device_array("b", b), _gpu.device_array("h0", h0)
    shape = scan_shape(a.shape, b.shape, None if h0 is None else h0.shape)
    for name, x in (("a", a), ("b", b), ("h0", h0)):
        _gpu.require_finite(name, x, check_finite)
    cplx = any(x is not None and x.dtype.kind == "c" for x in (a, b, h0))
    dtype = cp.complex64 if cplx else cp.float32
    L = shape[-1]
    S = int(np.prod(shape[:-1], dtype=np.int64))
    # broadcast_to + ascontiguousarray copies only when an argument is really broadcast
    a2 = cp.ascontiguousarray(cp.broadcast_to(a, shape), dtype=dtype).reshape(S, L)
    b2 = cp.ascontiguousarray(cp.broadcast_to(b, shape), dtype=dtype).reshape(S, L)
    h02 = (cp.zeros(S, dtype=dtype) if h0 is None
           else cp.ascontiguousarray(cp.broadcast_to(h0, shape[:-1]), dtype=dtype).reshape(S))
    h = cp.empty((S, L), dtype=dtype)
    if S:
        _launch_linear(a2, b2, h02, h, S, L, cplx)
    return h.reshape(shape)


#: compile-time shape of linear_scan.cu: THREADS per block (and tiles per look-back window), J 16-byte copies
#: of a (and of b) per thread (tiles of 4096 floats, 32 KB of shared memory), MINB blocks per SM asked of the
#: compiler (__launch_bounds__), BACKOFF 1: sleep between polls of the look-back. (128, 8, 6) measured
#: fastest on an H100 among the variants in benchmarks/cases/scan.py:variants().
LINEAR_CONFIG = {"THREADS": 128, "J": 8, "MINB": 6, "BACKOFF": 1}


def _launch_linear(a, b, h0, h, S, L, cplx):
    cfg = dict(LINEAR_CONFIG)
    threads, J = cfg["THREADS"], cfg["J"]
    per = 2 if cplx else 4  # elements per 16-byte load
    tile = threads * J * per
    W = threads  # tiles per window, windows per super-window
    tiles = -(-L // tile)
    windows = -(-tiles // W)
    supers = -(-windows // W)
    ntiles = S * tiles
    if ntiles >= 2**31:
        raise ValueError(f"a: {S} x {L} elements make {ntiles} tiles, more than one launch takes (2^31 - 1)")
    pw = 2 if cplx else 1  # 8-byte words per published (A, B) pair
    nt, nw, nx = ntiles * pw, S * windows * pw, S * supers
    # the look-back's published words (tile pairs, window pairs, super-window states), all 0xFF bytes: "not
    # yet written" to the kernel
    words = cp.empty(nt + nw + nx, dtype=cp.uint64)
    cp.cuda.runtime.memsetAsync(words.data.ptr, 0xFF, words.nbytes, cp.cuda.get_current_stream().ptr)
    aligned = L % per == 0 and all(x.data.ptr % 16 == 0 for x in (a, b, h))
    args = (a, b, h0, h, np.int64(L), np.int64(tiles), np.int64(windows), np.int64(supers),
            words[:nt], words[nt:nt + nw], words[nt + nw:])
    name = f"linear_scan_{'c64' if cplx else 'f32'}{'_vec' if aligned else ''}"
    fn = _gpu.kernel(_HERE / "linear_scan.cu", name, options=tuple(f"-D{k}={int(v)}" for k, v in sorted(cfg.items())))
    smem = 2 * tile * h.dtype.itemsize  # a and b of one tile
    _smem_attributes(fn, smem + 1024)  # + the kernel's static shared memory (< 1 KB): it counts against 48 KB too
    fn((ntiles,), (threads,), args, shared_mem=smem)


# ---------------------------------------------------------------------------------------------------------

_K = 8
_T = 32 * _K


#: "auto": the quad kernel (4 lanes x 4 states per channel) where N <= 16, else the warp-per-channel kernel;
#: "quad", "states" (8 lanes x 2 states, 4 channels of one group per block at least) or "warp" force one
#: (the tests run all three)
SELECTIVE_KERNEL = "auto"
#: nvcc options of selective_scan.cu (e.g. "-DQUAD_LIBM_SOFTPLUS", "-DDIAG_NO_EX2")
SELECTIVE_OPTIONS = ()
#: most channels per block of the quad kernel (4 lanes each); 64 (256 threads, one block per SM at b2 d4096)
#: measured fastest on an H100 among 16, 32 and 64
QUAD_MAX_CHANNELS = 64
#: compile-time shape of the quad kernel: blocks of 16*QV steps (QV 16-byte vectors of u per lane), QPF blocks
#: of u, delta, z copied ahead (a ring of QPF + 1 per thread in shared memory), QST steps per B/C tile (a
#: multiple of 16*QV). H100, b2 d4096 L4096 N16, kernel alone (20 back-to-back calls): QV 1 with QPF 2 / 4 / 8:
#: 0.343 / 0.313 / 0.314 ms (QST 128: 0.309); in a later run QV 1 QPF 8: 0.311, QV 2 QPF 4: 0.370 (QST 128: 0.339)
QUAD_CONFIG = {"QV": 1, "QPF": 8, "QST": 64}


def _quad_smem(threads, cpb, bvar, cvar, cfg):
    """Bytes of dynamic shared memory of the quad kernel: the ring, the B/C tile buffers, dt and dt*u."""
    qv, pf, st = cfg["QV"], cfg["QPF"], cfg["QST"]
    if st % (16 * qv):
        raise ValueError(f"QUAD_CONFIG: QST = {st} must be a multiple of 16*QV = {16 * qv}")
    tiles = -(-pf // (st // (16 * qv))) + 1  # QNT
    return (16 * (pf + 1) * 3 * qv * threads + 4 * (bvar + cvar) * tiles * 16 * (st + 4)
            + 4 * 2 * 2 * cpb * (16 * qv + 4))


_SEL_FN = {}  # (name, options, smem) -> the kernel with its shared-memory attributes set: once, not per call


def _f32c(x):
    """``x`` as a C-contiguous float32 CuPy array: ``x`` itself when it is one already."""
    return x if x.dtype == np.float32 and x.flags.c_contiguous else cp.ascontiguousarray(x, dtype=cp.float32)


def _selective_fn(name, options, smem):
    key = (name, tuple(options), smem)
    fn = _SEL_FN.get(key)
    if fn is None:
        fn = _SEL_FN[key] = _gpu.kernel(_HERE / "selective_scan.cu", name, options)
        _smem_attributes(fn, smem)
    return fn
_ST = 64  # steps per chunk of the states kernel (ST in selective_scan.cu)
#: most channels per block of the states kernel (they share one B and C tile); 16 measured fastest on an
#: H100 among 8, 16 and 32
STATES_MAX_CHANNELS = 16


def _channels_per_block(dim, groups, choices):
    """The most channels per block among ``choices`` such that a block's channels share one group of B, C."""
    for ch in choices:
        if dim % ch == 0 and all((dim // g) % ch == 0 for g in groups):
            return ch
    return 0


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, *, check_finite=True):
    """GPU twin of ``refimpl.scan.selective_scan`` in float32 (real A; N <= 64). Deterministic."""
    u, delta = _gpu.device_array("u", u, complex_ok=False), _gpu.device_array("delta", delta, complex_ok=False)
    A, B, C = _gpu.device_array("A", A), _gpu.device_array("B", B), _gpu.device_array("C", C)
    D, z = _gpu.device_array("D", D, complex_ok=False), _gpu.device_array("z", z, complex_ok=False)
    delta_bias = _gpu.device_array("delta_bias", delta_bias, complex_ok=False)
    batch, dim, L, N = selective_shape(u.shape, delta.shape, A.shape, B.shape, C.shape,
                                       None if D is None else D.shape, None if z is None else z.shape,
                                       None if delta_bias is None else delta_bias.shape)
    for name, x in (("A", A), ("B", B), ("C", C)):
        if x.dtype.kind == "c":
            raise TypeError(f"{name}: the GPU selective_scan takes real A, B, C (got {x.dtype}); for complex A "
                            f"use refimpl.scan.cpu.selective_scan or refimpl.scan.selective_scan")
    if batch > 65535:
        raise ValueError(f"u: the GPU selective_scan takes batch <= 65535, got shape {tuple(u.shape)}")
    if N > 64:
        raise ValueError(f"A: the GPU selective_scan takes N <= 64 states, got shape {tuple(A.shape)}")
    for name, x in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("delta_bias", delta_bias)):
        _gpu.require_finite(name, x, check_finite)
    if L >= 2**31:
        raise ValueError(f"u: the GPU selective_scan takes L < 2^31, got shape {tuple(u.shape)}")
    # float32 C-contiguous arrays pass as they are (the common case: no CuPy call, a few microseconds of host
    # time less per array, and the benchmark's event timing counts host time before the launch)
    uf, df, Af, Bf, Cf, Df, zf, bf = (None if x is None else _f32c(x)
                                      for x in (u, delta, A, B, C, D, z, delta_bias))
    # (batch, N, L) is (batch, 1, N, L) in memory: G = 1
    GB = Bf.shape[1] if Bf.ndim == 4 else 1
    GC = Cf.shape[1] if Cf.ndim == 4 else 1
    dummy = uf  # stands for an absent D, z, bias or last: the kernels touch those only when opts says so
    Df = dummy if Df is None else Df
    zf = dummy if zf is None else zf
    bf = dummy if bf is None else bf
    f32 = cp.float32
    out = cp.empty((batch, dim, L), dtype=f32)
    last = cp.empty((batch, dim, N), dtype=f32) if return_last_state else dummy
    opts = (int(bool(delta_softplus)) | 2 * (D is not None) | 4 * (z is not None) | 8 * (delta_bias is not None)
            | 16 * bool(return_last_state))
    if batch and dim and L:
        bvar, cvar = Bf.ndim >= 3, Cf.ndim >= 3
        vec = L % 4 == 0 and all(x.data.ptr % 16 == 0 for x in (uf, df, zf, out) + ((Bf,) if bvar else ())
                                 + ((Cf,) if cvar else ()))
        groups = [g for g, M in ((GB, Bf), (GC, Cf)) if M.ndim >= 3]
        cpb = _channels_per_block(dim, groups, tuple(c for c in (32, 16, 8, 4) if c <= STATES_MAX_CHANNELS))
        kind = SELECTIVE_KERNEL
        if kind == "auto" or (kind == "quad" and N > 16):
            kind = "quad" if N <= 16 else "warp"
        if kind == "states" and not (N <= 16 and cpb):
            kind = "warp"
        if kind == "quad":  # 4 lanes x 4 states per channel, qpb channels per block (any, the block may be < a warp)
            qpb = _channels_per_block(dim, groups,
                                      tuple(c for c in (64, 32, 16, 8, 4, 2, 1) if c <= QUAD_MAX_CHANNELS))
            threads, grid_x = 4 * qpb, dim // qpb
            smem = _quad_smem(threads, qpb, bvar, cvar, QUAD_CONFIG)
            prefix = "selective_quad"
            options = tuple(SELECTIVE_OPTIONS) + tuple(f"-D{k}={int(v)}" for k, v in sorted(QUAD_CONFIG.items()))
        elif kind == "states":  # lanes over states, 8 lanes per channel, cpb channels per block
            threads, grid_x = 8 * cpb, dim // cpb
            smem = 4 * ((bvar + cvar) * 2 * 16 * (_ST + 4) + 2 * 2 * cpb * _ST)
            prefix = "selective_states"
        else:  # a warp per channel, the sequence split across its lanes
            ch = _channels_per_block(dim, groups, (8, 4, 2, 1))
            threads, grid_x = 32 * ch, dim // ch
            smem = 4 * ((bvar + cvar) * N * _T + 4 * ch * N)
            prefix = "selective_scan"
        if kind != "quad":
            options = tuple(SELECTIVE_OPTIONS)
        name = f"{prefix}{'_vec' if vec else ''}_{'bv' if bvar else 'bi'}_{'cv' if cvar else 'ci'}"
        fn = _selective_fn(name, options, smem)
        fn((grid_x, batch), (threads,), (uf, df, Af, Bf, Cf, Df, zf, bf, out, last, np.int32(dim), np.int64(L),
                                         np.int32(N), np.int32(GB), np.int32(GC), np.int32(opts)),
           shared_mem=smem)
    elif return_last_state:
        last[...] = 0
    return (out, last) if return_last_state else out
