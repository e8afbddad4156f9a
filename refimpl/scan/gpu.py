"""CuPy raw-kernel twins of ``refimpl.scan``: ``linear_scan`` (float32 / complex64) and ``selective_scan``.

Same names and signatures as the reference. Inputs may be NumPy or CuPy arrays; results are CuPy arrays on
the current device. Kernels:

- ``linear_scan.cu``: one pass over memory (a, b read once, h written once: 12 bytes per float32 element).
  Each block copies a tile of 8192 elements into shared memory (cp.async, 3 blocks per SM), scans it (serial
  per thread, warp shuffles across lanes and warps) and joins the tiles before it by a two-level decoupled
  look-back whose combination order depends only on the tile's index: bitwise identical results run to
  run. Its entries are single 8-byte words (no flags, no fences). 64-bit offsets.
- ``selective_scan.cu``, four kernels. For N <= 16 (Mamba's default): 4 lanes per (batch, channel), each
  lane four states over the whole sequence, no scan across lanes; y by a two-round shuffle reduce-scatter;
  u, delta, z streamed through a per-thread cp.async ring in shared memory (QPF blocks of 16 steps ahead, with
  an L2 prefetch hint),
  B and C tiles multi-buffered in shared memory (cp.async) for the block's 64 channels (``quad``; the
  earlier 8-lanes-x-2-states kernel ``states`` is kept, tested, selectable). Blocks of 64 channels take its
  warp-specialised form (``selective_qws``, QUAD_CONFIG QWS): 8 warps only scan, 4 producer warps stream
  u, delta, z, form dt, dt*u and the outputs, and copy the B/C tiles; mbarriers per 16 channels hand over. Otherwise: one warp per
  channel, the sequence split across its lanes and joined by a shuffle scan per state. Real A only
  (complex A: use ``refimpl.scan.cpu`` or the reference).

Glossary as in ``refimpl.scan``: a, b, h (..., L), h0 (...); u, delta, z (b, d, L), A (d, N), B, C.
"""

from __future__ import annotations

import copy
import functools
import math
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
    S = math.prod(shape[:-1])
    a2, b2 = _rows(a, shape, dtype), _rows(b, shape, dtype)
    # no h0: a null pointer, and the kernel starts from 0 (no fill kernel to launch)
    h02 = None if h0 is None else _rows(h0, shape[:-1], dtype)
    h = cp.ndarray(shape, dtype=dtype)  # cp.empty without its wrapper: host time counts (see _linear_plan)
    if S:
        _launch_linear(a2, b2, h02, h, S, L, cplx)
    return h


def _rows(x, shape, dtype):
    """``x`` broadcast to ``shape`` as a C-contiguous array of ``dtype``: ``x`` itself when it already is one
    (the common case, checked first: each CuPy call costs microseconds of host time that a single launch
    waits for), else a copy."""
    if x.shape == shape and x.dtype == dtype and x.flags.c_contiguous:
        return x
    return cp.ascontiguousarray(cp.broadcast_to(x, shape), dtype=dtype)


#: compile-time shape of linear_scan.cu: THREADS per block, J 16-byte copies of a (and of b) per thread (tiles
#: of 8192 floats, 64 KB of shared memory), MINB blocks per SM asked of the compiler (__launch_bounds__),
#: BACKOFF 1: sleep between polls of the look-back, WINDOW tiles per look-back window (<= THREADS). (128, 16, 3)
#: with windows of 32 measured fastest on an H100 among the variants in benchmarks/cases/scan.py:variants().
LINEAR_CONFIG = {"THREADS": 128, "J": 16, "MINB": 3, "BACKOFF": 1, "WINDOW": 32}


@functools.lru_cache(maxsize=256)
def _linear_plan(S, L, cplx, aligned, config, device_id):
    """What a launch of linear_scan.cu needs for one shape, worked out once: (the launcher, which takes the
    seven pointers, the word counts of the look-back's three arrays). Host time counts here: a call's
    single-launch timing sees the GPU idle until the launch (about 0.1 ms of Python before this cache; 25-40
    us after it with a ctypes block built per launch, on the H100 machine, of which the launch was 24)."""
    cfg = dict(config)
    threads, J = cfg["THREADS"], cfg["J"]
    per = 2 if cplx else 4  # elements per 16-byte load
    tile = threads * J * per
    W = cfg.get("WINDOW", threads)  # tiles per window, windows per super-window
    if not 1 <= W <= threads:
        raise ValueError(f"LINEAR_CONFIG: WINDOW must lie in [1, THREADS = {threads}], got {W}")
    tiles = -(-L // tile)
    windows = -(-tiles // W)
    supers = -(-windows // W)
    ntiles = S * tiles
    if ntiles >= 2**31:
        raise ValueError(f"a: {S} x {L} elements make {ntiles} tiles, more than one launch takes (2^31 - 1)")
    pw = 2 if cplx else 1  # 8-byte words per published (A, B) pair
    counts = (ntiles * pw, S * windows * pw, S * supers)
    name = f"linear_scan_{'c64' if cplx else 'f32'}{'_vec' if aligned else ''}"
    fn = _gpu.kernel(_HERE / "linear_scan.cu", name, options=tuple(f"-D{k}={int(v)}" for k, v in config))
    smem = 2 * tile * (8 if cplx else 4)  # a and b of one tile
    _smem_attributes(fn, smem + 1024)  # + the kernel's static shared memory (< 1 KB): it counts against 48 KB too
    go = _gpu.packed_launcher(fn, ntiles, threads, (0,) * 7 + (L, tiles, windows, supers), shared_mem=smem)
    return go, counts


def _launch_linear(a, b, h0, h, S, L, cplx):
    ptr = [x.data.ptr for x in (a, b, h)]
    aligned = L % (2 if cplx else 4) == 0 and all(p % 16 == 0 for p in ptr)
    go, (nt, nw, nx) = _linear_plan(S, L, cplx, aligned, tuple(sorted(LINEAR_CONFIG.items())),
                                    cp.cuda.runtime.getDevice())
    # the look-back's published words (tile pairs, window pairs, super-window states), all 0xFF bytes: "not
    # yet written" to the kernel
    words = cp.ndarray((nt + nw + nx,), dtype=cp.uint64)
    w = words.data.ptr
    cp.cuda.runtime.memsetAsync(w, 0xFF, words.nbytes, cp.cuda.get_current_stream().ptr)
    go([ptr[0], ptr[1], 0 if h0 is None else h0.data.ptr, ptr[2], w, w + 8 * nt, w + 8 * (nt + nw)])


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
#: multiple of 16*QV), QL lanes per channel (4, or 2 with 8 states each), QC channels per thread (1, or 2 sharing
#: each B, C read; variable B and C only). H100, b2 d4096 L4096 N16, kernel alone (20 back-to-back calls): QV 1
#: with QPF 2 / 4 / 8: 0.343 / 0.313 / 0.314 ms (QST 128: 0.309); in a later run QV 1 QPF 8: 0.311, QV 2 QPF 4:
#: 0.370 (QST 128: 0.339). After the straight-line element-wise rewrite (one run, single call / kernel alone):
#: QST 64 0.298 / 0.282, QST 128 0.296 / 0.279; QL 2: 0.374 / 0.356; QC 2: 0.336 / 0.324 (QST 128 0.326,
#: QPF 4 0.330, QPF 12 0.357); the previous kernel 0.349 / 0.315 in the same run. QPFB: the L2 prefetch size
#: (bytes; 0 = none) of the u, delta, z copies. After the integer-work rewrite (2026-11-22, kernel alone, same
#: runs): QPF 8 with QPFB 0 / 128 / 256: 0.276 / 0.269-0.271 / 0.269-0.271; QPF 6: 0.267; QPF 12: 0.272
#: QWS 1: blocks of 64 channels (QL 4, QV 1, QC 1) go to selective_qws (warp-specialised: 256/QWC scan threads
#: of QWC channels each and 4 producer warps, QWSS >= 2 stages of dt, dt*u and y between them)
QUAD_CONFIG = {"QV": 1, "QPF": 6, "QST": 128, "QL": 4, "QC": 1, "QPFB": 128, "QWS": 1, "QWSS": 2, "QWC": 1}


def _quad_smem(threads, cpb, bvar, cvar, cfg):
    """Bytes of dynamic shared memory of the quad kernel: the ring, the B/C tile buffers, dt and dt*u."""
    qv, pf, st, ql, qc = cfg["QV"], cfg["QPF"], cfg["QST"], cfg["QL"], cfg["QC"]
    if st % (16 * qv):
        raise ValueError(f"QUAD_CONFIG: QST = {st} must be a multiple of 16*QV = {16 * qv}")
    tiles = -(-pf // (st // (16 * qv))) + 1  # QNT
    qdp = (16 * qv + 15) // 32 * 32 + 16  # QDP: a channel's dt (or dt*u) row
    return (16 * (pf + 1) * qc * 3 * (4 * qv // ql) * threads + 4 * (bvar + cvar) * tiles * 16 * (st + 4)
            + 4 * 2 * 2 * cpb * qdp)


def _qws_smem(bvar, cvar, cfg):
    """Bytes of dynamic shared memory of selective_qws: the producers' ring, the B/C tile buffers, the stages."""
    pf, st, ss = cfg["QPF"], cfg["QST"], cfg["QWSS"]
    tiles = (pf + ss + st // 16 - 1) // (st // 16) + 1  # QWNT
    if ss < 2 or cfg["QWC"] not in (1, 2):
        raise ValueError(f"QUAD_CONFIG: QWSS = {ss} must be at least 2, QWC = {cfg['QWC']} 1 or 2")
    return 16 * (pf + 1) * 3 * 2 * 128 + 4 * (bvar + cvar) * tiles * 16 * (st + 4) + ss * 3 * 64 * 16 * 4


_SEL_FN = {}  # (name, options) -> (the kernel, the most dynamic shared memory it has been allowed so far)


def _f32c(x):
    """``x`` as a C-contiguous float32 CuPy array: ``x`` itself when it is one already."""
    return x if x.dtype == np.float32 and x.flags.c_contiguous else cp.ascontiguousarray(x, dtype=cp.float32)


def _selective_fn(name, options, smem):
    """The kernel ``name``, allowed at least ``smem`` bytes of dynamic shared memory. One kernel object serves
    every plan of its name, so its limit is only ever raised: lowering it for a small plan would make a later
    larger launch fail (CUDA_ERROR_INVALID_VALUE)."""
    key = (name, tuple(options))
    fn, allowed = _SEL_FN.get(key, (None, -1))
    if fn is None:
        fn = _gpu.kernel(_HERE / "selective_scan.cu", name, options)
    if smem > allowed:
        _smem_attributes(fn, smem)
        _SEL_FN[key] = (fn, smem)
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


class _SelectivePlan:
    """A launch of selective_scan.cu for one set of argument shapes and options, worked out once (after the
    shape checks passed): kernel names (16-byte loads or not), grid, block, shared memory and the scalar
    arguments. A call writes the 10 pointers into the parameter block of a ``_gpu.packed_launcher`` and launches. Why: a single call's
    CUDA-event timing counts the host time before the launch (the GPU waits for it), and CuPy's generic
    call converts all 16 arguments every time (this path is a few microseconds)."""

    def __init__(self, batch, dim, L, N, GB, GC, opts, bvar, cvar, return_last_state):
        self.out_shape, self.last_shape = (batch, dim, L), ((batch, dim, N) if return_last_state else None)
        self.vec_ok, self.bvar, self.cvar = L % 4 == 0, bvar, cvar
        self.scalars = (np.int32(dim), np.int64(L), np.int32(N), np.int32(GB), np.int32(GC), np.int32(opts))
        self.fn, self.grid, self.settings = {}, None, None  # fn: the launchers (16-byte loads or not)
        if not (batch and dim and L):
            return
        groups = [g for g, var in ((GB, bvar), (GC, cvar)) if var]
        cpb = _channels_per_block(dim, groups, tuple(c for c in (32, 16, 8, 4) if c <= STATES_MAX_CHANNELS))
        kind = SELECTIVE_KERNEL
        if kind == "auto" or (kind == "quad" and N > 16):
            kind = "quad" if N <= 16 else "warp"
        if kind == "states" and not (N <= 16 and cpb):
            kind = "warp"
        if kind == "quad":  # QL lanes x 16/QL states per channel, qpb channels per block (may be < a warp)
            cfg = {"QL": 4, "QC": 1, **QUAD_CONFIG}
            qpb = _channels_per_block(dim, groups,
                                      tuple(c for c in (64, 32, 16, 8, 4, 2, 1) if c <= QUAD_MAX_CHANNELS))
            if not (bvar and cvar and qpb % cfg["QC"] == 0):  # QC channels per thread share variable B, C
                cfg["QC"] = 1
            threads, grid_x = cfg["QL"] * qpb // cfg["QC"], dim // qpb
            smem = _quad_smem(threads, qpb, bvar, cvar, cfg)
            prefix = "selective_quad"
            if cfg["QWS"] and qpb == 64 and (cfg["QL"], cfg["QV"], cfg["QC"]) == (4, 1, 1):
                threads, smem, prefix = 256 // cfg["QWC"] + 128, _qws_smem(bvar, cvar, cfg), "selective_qws"
            # the softplus and z bits of opts compiled in (straight-line element-wise code): one module per
            # combination of those two, holding the quad kernels alone (QUAD_ONLY)
            options = (tuple(SELECTIVE_OPTIONS) + tuple(f"-D{k}={int(v)}" for k, v in sorted(cfg.items()))
                       + (f"-DQOPTS={opts & 5}", "-DQUAD_ONLY"))
        elif kind == "states":  # lanes over states, 8 lanes per channel, cpb channels per block
            threads, grid_x = 8 * cpb, dim // cpb
            smem = 4 * ((bvar + cvar) * 2 * 16 * (_ST + 4) + 2 * 2 * cpb * _ST)
            prefix = "selective_states"
            options = tuple(SELECTIVE_OPTIONS)
        else:  # a warp per channel, the sequence split across its lanes
            ch = _channels_per_block(dim, groups, (8, 4, 2, 1))
            threads, grid_x = 32 * ch, dim // ch
            smem = 4 * ((bvar + cvar) * N * _T + 4 * ch * N)
            prefix = "selective_scan"
            options = tuple(SELECTIVE_OPTIONS)
        tail = f"_{'bv' if bvar else 'bi'}_{'cv' if cvar else 'ci'}"
        self.names = {True: f"{prefix}_vec{tail}", False: f"{prefix}{tail}"}
        self.options, self.grid, self.threads, self.smem = options, (grid_x, batch), threads, smem
        # the scalars as _gpu.packed_launcher takes them: each in the low bytes of its own 8-byte word
        self.words = tuple(int(v) & (2**64 - 1 if v.dtype == np.int64 else 2**32 - 1) for v in self.scalars)

    def launch(self, arrays):
        """Launch on the current stream with ``arrays`` = (u, delta, A, B, C, D, z, bias, out, last)."""
        p = [x.data.ptr for x in arrays]
        aligned = p[0] | p[1] | p[6] | p[8] | (p[3] if self.bvar else 0) | (p[4] if self.cvar else 0)
        vec = self.vec_ok and not aligned & 15
        go = self.fn.get(vec)
        if go is None:  # the parameter block built once per kernel (16-byte loads or not), pointers written per call
            fn = _selective_fn(self.names[vec], self.options, self.smem)
            go = self.fn[vec] = _gpu.packed_launcher(fn, self.grid, self.threads, (0,) * 10 + self.words,
                                                     shared_mem=self.smem)
        go(p)


_SEL_PLANS = {}  # (shapes, switches, device) -> _SelectivePlan (its .settings: the module settings it was made with)
_F32 = np.dtype(np.float32)
_SEL_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


_NDARRAY = cp.ndarray
# ``flags`` builds a Flags object per access (about 0.3 us; eight arrays per call): read CuPy's own attribute
# where it has one
_contiguous = ((lambda x: x._c_contiguous) if hasattr(_NDARRAY, "_c_contiguous")
               else (lambda x: x.flags.c_contiguous))


def _ready(x):
    """True where ``x`` goes to the kernels as it is: a C-contiguous float32 CuPy array (the exact type: a
    subclass takes the converting path, which is correct for any input)."""
    return type(x) is _NDARRAY and x.dtype is _F32 and _contiguous(x)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, *, check_finite=True):
    """GPU twin of ``refimpl.scan.selective_scan`` in float32 (real A; N <= 64). Deterministic."""
    arrays = [u, delta, A, B, C, D, z, delta_bias]
    ready = True
    for x in arrays:  # a loop, not all(...): the single call's timing counts every microsecond before the launch
        if x is not None and not _ready(x):
            ready = False
            break
    if not ready:  # NumPy, other dtypes, strides: to the device, then checked
        arrays = [_gpu.device_array(name, x, complex_ok=name in ("A", "B", "C"))
                  for name, x in zip(_SEL_NAMES, arrays)]
        for name, x in zip(("A", "B", "C"), arrays[2:5]):
            if x.dtype.kind == "c":
                raise TypeError(f"{name}: the GPU selective_scan takes real A, B, C (got {x.dtype}); for complex "
                                f"A use refimpl.scan.cpu.selective_scan or refimpl.scan.selective_scan")
    # every shape and switch that the checks and the launch depend on, and the device: calls with the same key
    # pass the same checks and launch the same way, as long as the module settings the plan was made with
    # still hold (compared one by one: cheaper than hashing them into the key on every call)
    key = (tuple([None if x is None else x.shape for x in arrays]), bool(delta_softplus), bool(return_last_state),
           cp.cuda.runtime.getDevice())
    plan = _SEL_PLANS.get(key)
    st = None if plan is None else plan.settings
    if (st is None or st[0] != SELECTIVE_KERNEL or st[1] != QUAD_MAX_CHANNELS or st[2] != STATES_MAX_CHANNELS
            or st[3] != SELECTIVE_OPTIONS or st[4] != QUAD_CONFIG):
        plan = _selective_plan(arrays, delta_softplus, return_last_state)
        # copies: a setting changed in place must not match its own plan
        plan.settings = (SELECTIVE_KERNEL, QUAD_MAX_CHANNELS, STATES_MAX_CHANNELS, copy.copy(SELECTIVE_OPTIONS),
                         dict(QUAD_CONFIG))
        if len(_SEL_PLANS) >= 256:
            _SEL_PLANS.clear()
        _SEL_PLANS[key] = plan
    if check_finite:
        for name, x in zip(_SEL_NAMES, arrays):
            _gpu.require_finite(name, x)
    if not ready:
        arrays = [None if x is None else _f32c(x) for x in arrays]
    # u stands for an absent D, z, bias or last: the kernels touch those only when opts says so
    arrays = [arrays[0] if x is None else x for x in arrays]
    out = _NDARRAY(plan.out_shape, dtype=_F32)  # cp.empty without its wrapper
    last = arrays[0] if plan.last_shape is None else _NDARRAY(plan.last_shape, dtype=_F32)
    if plan.grid is not None:
        plan.launch((*arrays, out, last))
    elif plan.last_shape is not None:
        last[...] = 0
    return (out, last) if return_last_state else out


def _selective_plan(arrays, delta_softplus, return_last_state):
    """Check the shapes (``ValueError`` naming the argument) and work out the launch."""
    u, delta, A, B, C, D, z, delta_bias = arrays
    batch, dim, L, N = selective_shape(u.shape, delta.shape, A.shape, B.shape, C.shape,
                                       None if D is None else D.shape, None if z is None else z.shape,
                                       None if delta_bias is None else delta_bias.shape)
    if batch > 65535:
        raise ValueError(f"u: the GPU selective_scan takes batch <= 65535, got shape {tuple(u.shape)}")
    if N > 64:
        raise ValueError(f"A: the GPU selective_scan takes N <= 64 states, got shape {tuple(A.shape)}")
    if L >= 2**31:
        raise ValueError(f"u: the GPU selective_scan takes L < 2^31, got shape {tuple(u.shape)}")
    # (batch, N, L) is (batch, 1, N, L) in memory: G = 1
    GB = B.shape[1] if B.ndim == 4 else 1
    GC = C.shape[1] if C.ndim == 4 else 1
    opts = (int(bool(delta_softplus)) | 2 * (D is not None) | 4 * (z is not None) | 8 * (delta_bias is not None)
            | 16 * bool(return_last_state))
    return _SelectivePlan(batch, dim, L, N, GB, GC, opts, B.ndim >= 3, C.ndim >= 3, return_last_state)
