"""CuPy raw-kernel twins of ``refimpl.attention``: ``attention`` and ``attention_with_kvcache``.

Same names and signatures as the reference, plus ``num_splits`` (0: chosen to fill the device). Inputs may
be NumPy or CuPy arrays; float16 inputs compute in float16 with float32 accumulation and return float16,
anything else computes in float32 and returns float32; lse is float32. Head dimension d: 64 or 128.

Kernels (one grid/block comment at the top of each file):
    flash_fwd_sm90.cu  prefill on Hopper: FlashAttention-3-style warpgroup MMA (wgmma, sm_90a; compiled by
                     NVRTC for sm_90a here, see _sm90_module), two warpgroups of 64 query rows, K and V from
                     swizzled shared memory, P from registers; used for float16 with s_q > 16, d in {64, 128},
                     on devices of compute capability 9.0.
    flash_fwd.cu     prefill: FlashAttention-2-style tiles on tensor cores (mma.sync m16n8k16, fp16 in,
                     fp32 accumulate), online softmax in registers; used for float16 with s_q > 16 elsewhere.
    flash_decode.cu  split-K (flash-decoding): several blocks per (batch row, kv head), each over a piece
                     of the keys, pieces merged by log-sum-exp in a fixed order (deterministic); used for
                     decode (s_q <= 16), for float32, and whenever ``num_splits`` is given.
                     decode_tc (float16, s_q * h / h_k <= 8 rows per group: GQA decode): tensor cores,
                     each warp on its own keys. On compute capability 9.0, where all of them fit at once,
                     each group's blocks run as one thread-block cluster and the leader merges the pieces in
                     its shared memory (decode_tc_cl: b8 32K); elsewhere (b1: 8 clusters of 16 blocks do
                     not fit on an H100, 7 do) the last block of each group merges the pieces from the
                     workspace. gpu.plan replays the launches as a CUDA graph. decode_split (the rest): CUDA
                     cores, the last block of each group merges. One launch in every case.
Both read per-row key counts (``cache_seqlens`` + s_new), share one GQA index (query head hh reads kv head
hh // (h // h_k)), align the causal mask bottom-right, and index global memory with 64-bit offsets.

Glossary as in ``refimpl.attention``: q (b, s_q, h, d); k, v / caches (b, s_k or s_cache, h_k, d).
"""

from __future__ import annotations

import functools
import json
import os
import pathlib

import numpy as np

from .. import _gpu
from .._gpu import cp
from . import _writable_cache, attention_shape, check_filled_finite, kvcache_shape, scale_of, seqlens_of

__all__ = ["attention", "attention_with_kvcache", "plan"]

_HERE = pathlib.Path(__file__).parent
_FWD = _HERE / "flash_fwd.cu"
_FWD90 = _HERE / "flash_fwd_sm90.cu"
_DEC = _HERE / "flash_decode.cu"
_HEAD_DIMS = (64, 128)
_LOG2E = 1.4426950408889634
# Compile-time shapes of the kernels (macros of the .cu files), chosen by the sweep in
# benchmarks/cases/attention.py on an H100; both files build with any of the values listed there.
# The automatic split count (not macros): pieces per (batch row, kv head, row block) group =
# floor(blocks-per-SM x SMs / groups), a floor so that no SM gets a block more than the others (the old ceil
# rule put 3 blocks on some SMs and 2 on the rest, and the SMs with 3 finished last). Blocks per SM: a full
# wave of resident blocks (3 here: shared memory) when there are many groups (b8: 64 groups), but
# DEC_FEW_GROUPS_PER_SM (2) when groups < SMs / 4 (b1): fewer, longer pieces were faster there (measured on
# the H100: b1 32K 74 us at 2 vs 79 at 3). decode_tc always takes one wave of resident blocks (1 a SM with
# its 128 KB ring: 16 pieces at b1, 2 at b8; measured on the H100, two waves of smaller blocks were slower).
# DEC_BLOCKS_PER_SM > 0 forces that many blocks per SM.
# REFIMPL_ATTENTION_CONFIG (a JSON object of these names) overrides them, for tuning.
FWD_CONFIG = {"FWD_WARPS": 8, "FWD_BN": 64, "FWD_MINB": 1, "FWD_QREG": 1, "FWD_FASTEXP": 0, "FWD_DBUF": 0}
DEC_CONFIG = {"DEC_UNROLL": 4, "DEC_STAGES": 4, "DEC_BLOCKS_PER_SM": 0, "DEC_FEW_GROUPS_PER_SM": 2,
              "DEC_TC": 1, "DEC_TC_WARPS": 8, "DEC_TC_KT": 1, "DEC_TC_STAGES": 2, "DEC_TC_MERGE": 1,
              "DEC_PDL": 1, "DEC_TC_CLUSTER": 1, "DEC_LEN": 1,
              "DEC_TC_EVICT": 1}
# not compile-time macros: the split rule, and DEC_TC (1: float16 groups of <= 8 rows take decode_tc).
# DEC_TC_MERGE 1: the last decode_tc block of each group merges its pieces (one launch); 0: a second launch
# (decode_merge) does. The fused merge used to be 15-20% slower, which s17 traced to the ring's alignment (see
# flash_decode.cu, dec_ring); aligned, it is the faster: H100 b1 32K 49.6-50.0 us against 50.4-50.6, b1 128K
# 177.1-179.6 against 177.6-180.3 (one process each, four machines).
# DEC_TC_CLUSTER 1: decode_tc_cl where the clusters fit (cuOccupancyMaxActiveClusters; H100: b8 32K 346.7-347.3
# us against 350.3 with the merge launch, one process). DEC_LEN 1: when every row has the same length the host
# passes it, and the blocks need not load kv_len before their first tiles. DEC_TC_EVICT 1: K and V are read
# with an L2 evict-first policy. Both: b1 32K 50.5 against 51.3 us, b8 32K 350.9 against 352.3, b1 128K 178.2
# against 179.3 (H100, one process; macros of flash_decode.cu, see there for what did not help).
# DEC_PDL 1 (with DEC_TC_MERGE 0): decode_merge is launched with programmatic dependent launch
# (cuLaunchKernelEx), so that its blocks are resident and waiting when decode_tc ends, instead of a kernel
# boundary and a launch (H100: b1 32K 55.8 vs 58.6 us, measured in one process). Each merge block waits on its
# group's counter, which decode_tc's blocks count up, so it gets ``counters`` too.
_DEC_SPLIT_KEYS = ("DEC_BLOCKS_PER_SM", "DEC_FEW_GROUPS_PER_SM", "DEC_TC", "DEC_PDL", "DEC_TC_CLUSTER",
                   "DEC_LEN")
# flash_fwd_sm90.cu's macros (F90_ON 0 turns it off: the flash_fwd.cu path), set like the others through
# REFIMPL_ATTENTION_CONFIG. F90_STAGES: K/V tiles in flight; F90_SYNC, F90_LATELOAD, F90_PINGPONG: see the .cu
# file (the defaults were the fastest of the variants measured there, on the H100); F90_ORDER: block order,
# -1 = by size (_F90_HEAD_FIRST_BYTES).
F90_CONFIG = {"F90_ON": 1, "F90_STAGES": 2, "F90_ORDER": -1, "F90_SYNC": 1, "F90_LATELOAD": 0, "F90_PINGPONG": 0}
# F90_ORDER -1: head fastest (the heaviest query blocks of every head first: better balanced) while K and V are
# at most about the L2 size, else query block fastest (the blocks of one head share its K and V in L2). On the
# H100, b1 h32 d128: L 4096 (64 MiB of K and V) 450 vs 422 TFLOP/s head first; L 16384 490 vs 394 the other way.
_F90_HEAD_FIRST_BYTES = 64 << 20
for _k, _v in json.loads(os.environ.get("REFIMPL_ATTENTION_CONFIG", "{}")).items():
    {"FWD_": FWD_CONFIG, "F90_": F90_CONFIG}.get(_k[:4], DEC_CONFIG)[_k] = int(_v)
_SMEM_SET = {}


def _kernel(path, name, config, smem):
    """The kernel compiled with ``config`` as -D macros, allowed ``smem`` bytes of dynamic shared memory."""
    options = tuple(f"-D{k}={v}" for k, v in sorted(config.items()) if k not in _DEC_SPLIT_KEYS)
    fn = _gpu.kernel(path, name, options)
    key = (str(path), name, options)
    if smem and _SMEM_SET.get(key, 0) < smem:  # static shared memory counts too: always raise the limit
        if hasattr(fn, "max_dynamic_shared_size_bytes"):  # cupy.RawKernel
            fn.max_dynamic_shared_size_bytes = smem
        else:  # a bare cupy.cuda.Function
            cp.cuda.driver.funcSetAttribute(fn.ptr, cp.cuda.driver.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                            smem)
        _SMEM_SET[key] = smem
    return fn


def _sm90_cubin(options):
    """flash_fwd_sm90.cu compiled by NVRTC for sm_90a: the cubin (bytes).

    CuPy's RawModule (refimpl._gpu.module) asks NVRTC for the plain sm_90 target, which has no wgmma; so this one
    file is compiled here. It includes no header, so NVRTC needs no include path."""
    from cupy_backends.cuda.libs import nvrtc

    prog = nvrtc.createProgram(_FWD90.read_text(), _FWD90.name, (), ())
    try:
        try:
            # -default-device: NVRTC takes the kernel's generic lambda for host code without it
            nvrtc.compileProgram(prog, ("--gpu-architecture=sm_90a", "-std=c++17", "-default-device")
                                 + tuple(options))
        except nvrtc.NVRTCError as exc:
            raise RuntimeError(f"NVRTC {nvrtc.getVersion()} could not compile {_FWD90.name} for sm_90a: {exc}\n"
                               f"{nvrtc.getProgramLog(prog)}") from exc
        cubin = nvrtc.getCUBIN(prog)
    finally:
        nvrtc.destroyProgram(prog)
    # CuPy's getCUBIN drops the last byte (as if it were a string's NUL): the cubins it returned on the H100 ended
    # one byte short of their ELF program header table, whose last byte is a 0. The driver loads them anyway
    # (nvdisasm does not); put the byte back where the length falls one short of the headers' end.
    u = lambda a, b: int.from_bytes(cubin[a:b], "little")  # noqa: E731 (ELF64 header fields)
    end = max(u(0x28, 0x30) + u(0x3A, 0x3C) * u(0x3C, 0x3E), u(0x20, 0x28) + u(0x36, 0x38) * u(0x38, 0x3A))
    return cubin + b"\0" if len(cubin) == end - 1 else cubin


@functools.lru_cache(maxsize=None)
def _sm90_module(options, device_id):
    """The module of ``_sm90_cubin(options)``, loaded once per process and device (a module belongs to the
    context it was loaded in: ``cupy.cuda.function.Module``)."""
    mod = cp.cuda.function.Module()
    mod.load(_sm90_cubin(options))
    return mod


@functools.lru_cache(maxsize=None)
def _sm90_on(device_id):
    """Whether flash_fwd_sm90.cu can run here: a device of compute capability 9.0 (sm_90a code runs on no other)."""
    return cp.cuda.Device(device_id).compute_capability == "90"


def _sm90_launch(q, k, v, out, lse, kv_len, s_q, h, h_k, kv_batch_stride, scale_log2, causal):
    """``launch()`` of flash_fwd_sm90.cu, or None where it does not apply (d, device, F90_ON)."""
    b, d = q.shape[0], q.shape[3]
    cfg = dict(F90_CONFIG)
    if not cfg.pop("F90_ON") or d not in (64, 128) or scale_log2 <= 0 or not _sm90_on(cp.cuda.Device().id):
        return None  # (scale > 0: the kernel takes the row maximum of the unscaled scores)
    stages = cfg["F90_STAGES"]
    smem = 128 * d * 2 + 2 * stages * (128 * d * 2 + 8) + 1024  # Q, K and V rings, mbarriers, 1 KB to align
    if cfg["F90_ORDER"] < 0:
        cfg["F90_ORDER"] = int(2 * k.nbytes <= _F90_HEAD_FIRST_BYTES)
    options = tuple(f"-D{name}={val}" for name, val in sorted(cfg.items()))
    fn = _sm90_module(options, cp.cuda.Device().id).get_function(f"flash_fwd_sm90_d{d}")
    key = (str(_FWD90), fn.ptr)
    if _SMEM_SET.get(key, 0) < smem:
        cp.cuda.driver.funcSetAttribute(fn.ptr, cp.cuda.driver.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem)
        _SMEM_SET[key] = smem
    nmb = -(-s_q // 128)
    grid = (h, nmb, b) if cfg["F90_ORDER"] else (nmb, h, b)
    args = (q, k, v, out, lse, kv_len, np.int32(s_q), np.int32(h), np.int32(h_k), kv_batch_stride, scale_log2,
            np.int32(bool(causal)))
    return lambda: fn(grid, (256,), args, shared_mem=smem)


def _contiguous(a, dtype):
    """``a`` itself when it is already C-contiguous in ``dtype`` (no CuPy call on the hot path), else a copy."""
    return a if a.dtype == dtype and a.flags.c_contiguous else cp.ascontiguousarray(a, dtype=dtype)


def _kv_len(lengths):
    """Per-row key counts on the device, kept per tuple of lengths (decode steps repeat them): no host-to-device
    copy per call. The kernels only read it."""
    return _kv_len_on(cp.cuda.Device().id, lengths)


@functools.lru_cache(maxsize=64)
def _kv_len_on(device_id, lengths):
    return cp.asarray(np.asarray(lengths, dtype=np.int32))


def _compute_dtype(q):
    return cp.dtype(cp.float16) if q.dtype == cp.float16 else cp.dtype(cp.float32)


def _check_head_dim(d):
    if d not in _HEAD_DIMS:
        raise ValueError(f"q: the GPU kernels take head dimension d in {_HEAD_DIMS}, got d = {d} "
                         "(use refimpl.attention.cpu or the reference for other d)")


@functools.lru_cache(maxsize=None)
def _sm_count():
    return cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["multiProcessorCount"]


def _launcher(q, k, v, kv_len, max_len, causal, scale, num_splits, len_all=None):
    """(launch, out, lse): ``launch()`` runs the kernels that fill out (b, s_q, h, d) in q's dtype and
    lse (b, h, s_q) float32; k, v are contiguous (b, s_cache, h_k, d); workspaces are allocated here."""
    b, s_q, h, d = q.shape
    s_cache, h_k = k.shape[1], k.shape[2]
    dtype = q.dtype
    tname = "f16" if dtype == cp.float16 else "f32"
    out = cp.empty((b, s_q, h, d), dtype=dtype)
    lse = cp.empty((b, h, s_q), dtype=cp.float32)
    if out.size == 0:
        return (lambda: None), out, lse
    kv_batch_stride = np.int64(s_cache * h_k * d)
    scale_log2 = np.float32(scale * _LOG2E)
    if dtype == cp.float16 and s_q > 16 and not num_splits:
        launch = _sm90_launch(q, k, v, out, lse, kv_len, s_q, h, h_k, kv_batch_stride, scale_log2, causal)
        if launch is not None:
            return launch, out, lse
        cfg = dict(FWD_CONFIG)
        bm, bn, threads = 16 * cfg["FWD_WARPS"], cfg["FWD_BN"], 32 * cfg["FWD_WARPS"]
        smem = (bm + (4 if cfg["FWD_DBUF"] else 2) * bn) * d * 2
        fn = _kernel(_FWD, f"flash_fwd_f16_d{d}", cfg, smem)
        grid = (-(-s_q // bm), h, b)
        args = (q, k, v, out, lse, kv_len, np.int32(s_q), np.int32(h), np.int32(h_k), kv_batch_stride,
                scale_log2, np.int32(bool(causal)))
        return (lambda: fn(grid, (threads,), args, shared_mem=smem)), out, lse
    fn, grid, splits, chunk, ring, threads, merge, cluster = _decode_config(
        tname, b, s_q, h, h_k, d, max_len, num_splits, tuple(sorted(DEC_CONFIG.items())))
    # pieces: decode_split's (normalized O, lse), decode_tc's (unnormalized O, max, sum) per row and split
    work, counters = _scratch(splits * b * s_q * h * (d + 2), grid[1] * grid[2])
    args = (q, k, v, work, out, lse, counters, kv_len, np.int32(b), np.int32(s_q), np.int32(h), np.int32(h_k),
            kv_batch_stride, np.int32(chunk), scale_log2, np.int32(bool(causal)),
            # the length of every row when they are all equal (no load of kv_len before the first tiles), else -1
            np.int32(len_all if len_all is not None and DEC_CONFIG["DEC_LEN"] else -1))
    # steps: (kernel, grid, threads, dynamic shared bytes, args, launched with PDL, cluster size or 0)
    steps = [(fn, grid, threads, ring, args, False, cluster)]
    if merge is not None:  # decode_tc's pieces merged by a second launch (decode_merge_d*)
        steps.append((merge, (h_k, b, 1), 128, 0, (work, out, lse, counters, np.int32(b), np.int32(s_q),
                                                  np.int32(h), np.int32(h_k), np.int32(splits)),
                      bool(DEC_CONFIG["DEC_PDL"]), 0))

    def launch():
        for f, gr, th, sm, ar, pdl, cl in steps:
            if not ((pdl or cl) and _launch_now(f, gr, th, sm, ar, pdl, cl)):
                if cl:
                    raise RuntimeError("decode_tc_cl needs a cluster launch (cuLaunchKernelEx)")
                f(gr, (th,), ar, shared_mem=sm)
    launch.steps = steps  # for plan: _packed_launch(steps)
    return launch, out, lse


def _pack(args):
    """The kernel parameter block of ``args`` (ctypes): (pointer array, the values it points to), or None where
    an argument type is not one the kernels take."""
    import ctypes

    vals = []
    for a in args:
        if isinstance(a, cp.ndarray):
            vals.append(ctypes.c_void_p(a.data.ptr))
        elif isinstance(a, np.int32):
            vals.append(ctypes.c_int32(int(a)))
        elif isinstance(a, np.int64):
            vals.append(ctypes.c_int64(int(a)))
        elif isinstance(a, np.float32):
            vals.append(ctypes.c_float(float(a)))
        else:
            return None
    return (ctypes.c_void_p * len(vals))(*(ctypes.addressof(x) for x in vals)), vals


@functools.lru_cache(maxsize=None)
def _launch_ex():
    """libcuda's cuLaunchKernelEx through ctypes, with the structures it takes: (function, CUlaunchConfig type,
    CUlaunchAttribute type), or None (no PDL and no clusters then)."""
    import ctypes

    try:
        fn = ctypes.CDLL("libcuda.so.1").cuLaunchKernelEx
    except (OSError, AttributeError):
        return None

    class Attr(ctypes.Structure):  # CUlaunchAttribute: id, 4 bytes of padding, a 64-byte value union
        _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_uint), ("value", ctypes.c_uint * 16)]

    class Config(ctypes.Structure):  # CUlaunchConfig
        _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3), ("smem", ctypes.c_uint),
                    ("stream", ctypes.c_void_p), ("attrs", ctypes.POINTER(Attr)), ("num_attrs", ctypes.c_uint)]

    fn.argtypes = [ctypes.POINTER(Config), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn, Config, Attr


def _ex_config(grid, threads, smem, pdl, cluster, keep):
    """The CUlaunchConfig of a launch with PDL (``pdl``) and/or clusters of ``cluster`` blocks along x, or None
    where the driver lacks cuLaunchKernelEx. The structures it points to are appended to ``keep``."""
    import ctypes

    ex = _launch_ex()
    if ex is None:
        return None
    _, Config, Attr = ex
    attrs = []
    if pdl:  # 6: PROGRAMMATIC_STREAM_SERIALIZATION, allowed = 1
        attrs.append(Attr(6, 0, (ctypes.c_uint * 16)(1)))
    if cluster:  # 4: CLUSTER_DIMENSION (x, y, z)
        attrs.append(Attr(4, 0, (ctypes.c_uint * 16)(cluster, 1, 1)))
    arr = (Attr * max(1, len(attrs)))(*attrs)
    cfg = Config((ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(threads, 1, 1), smem, None, arr, len(attrs))
    keep.append((cfg, arr))
    return cfg


def _ex_call(ptr, grid, threads, smem, params, keep, pdl=False, cluster=0):
    """A launch of kernel handle ``ptr`` through cuLaunchKernelEx: with PDL (it may begin before the previous
    launch in the stream ends; the kernel itself waits for what it reads) and/or as clusters of ``cluster``
    blocks. None where the driver lacks cuLaunchKernelEx."""
    import ctypes

    cfg = _ex_config(grid, threads, smem, pdl, cluster, keep)
    if cfg is None:
        return None
    fn = _launch_ex()[0]
    stream = cp.cuda.get_current_stream

    def call():
        cfg.stream = stream().ptr
        rc = fn(ctypes.byref(cfg), ptr, ctypes.addressof(params), None)
        if rc:
            raise RuntimeError(f"cuLaunchKernelEx failed with CUresult {rc}")
    return call


def _launch_now(fn, grid, threads, smem, args, pdl, cluster):
    """Launch ``fn`` now through cuLaunchKernelEx (PDL, clusters); False where that is not possible."""
    packed = _pack(args)
    call = None if packed is None else _ex_call(int(getattr(fn, "kernel", fn).ptr), grid, threads, smem,
                                                packed[0], [packed], pdl, cluster)
    if call is None:
        return False
    call()
    return True


@functools.lru_cache(maxsize=None)
def _clusters_fit(ptr, grid, threads, smem, cluster):
    """Whether all grid[0] * grid[1] * grid[2] / cluster clusters of kernel handle ``ptr`` are resident at once
    (cuOccupancyMaxActiveClusters). Clusters that do not all fit run in a second wave, which the split rule (one
    wave of blocks) never wants: the blocks merge without clusters then. False where the driver cannot say."""
    import ctypes

    keep = []
    cfg = _ex_config(grid, threads, smem, False, cluster, keep)
    if cfg is None:
        return False
    try:
        occ = ctypes.CDLL("libcuda.so.1").cuOccupancyMaxActiveClusters
        n = ctypes.c_int(0)
        rc = occ(ctypes.byref(n), ctypes.c_void_p(ptr), ctypes.byref(cfg))
    except (OSError, AttributeError):
        return False
    return rc == 0 and n.value * cluster >= grid[0] * grid[1] * grid[2]


def _packed_launch(steps):
    """``launch()`` of the kernels ``steps`` = [(kernel, grid, threads, dynamic shared bytes, args, pdl, cluster)],
    with fixed arguments, through cuLaunchKernel (cuLaunchKernelEx for PDL or clusters) with each parameter block
    packed once (ctypes); None where a handle or an argument type is not the expected one. CuPy's own call
    converts every argument on every launch (about 5 us of host time on the H100 machine, measured, which
    CUDA-event timings of one decode step include while the GPU waits for the launch)."""
    import ctypes

    try:
        launch_kernel = cp.cuda.driver.launchKernel
        ptrs = [int(getattr(fn, "kernel", fn).ptr) for fn, *_ in steps]
    except Exception:
        return None
    calls, keep = [], []
    stream = cp.cuda.get_current_stream
    for ptr, (_, grid, threads, smem, args, pdl, cluster) in zip(ptrs, steps):
        packed = _pack(args)
        if packed is None:
            return None
        params, vals = packed
        keep.append((vals, params, args))
        call = _ex_call(ptr, grid, threads, smem, params, keep, pdl, cluster) if pdl or cluster else None
        if cluster and call is None:
            return None
        if call is None:
            where = ctypes.addressof(params)
            call = (lambda p=ptr, g=grid, t=threads, m=smem, w=where:
                    launch_kernel(p, *g, t, 1, 1, m, stream().ptr, w, 0))
        calls.append(call)

    def launch():
        for call in calls:
            call()
    launch.keep = keep  # the packed values and the arrays they point to live as long as launch
    return launch


def _graph_launch(launch):
    """``launch()`` captured once into a CUDA graph (on a private stream) and replayed on the current stream:
    one submission for both kernels, with the PDL edge between them kept. On the H100 machine a call costs 1.7
    us of host time instead of 10.7, and the GPU waits that much less for it (b1 32K 53.2 vs 55.2 us, one
    process). CuPy's ``Graph.launch`` costs 1.6-1.7 us of host time a call, and ``cuGraphLaunch`` through
    ctypes costs 1.9 us, with the same event time (measured in one process), so CuPy's is kept. None where
    capture fails (the caller keeps the plain launches)."""
    try:
        s = cp.cuda.Stream(non_blocking=True)
        with s:
            launch()
            s.synchronize()
            s.begin_capture()
            try:
                launch()
            finally:
                graph = s.end_capture()
        s.synchronize()
    except Exception:
        return None

    def replay():
        graph.launch()
    replay.keep = (launch, graph, s)  # the packed arguments and the arrays live as long as the graph
    return replay


def _resident_blocks(fn, smem, threads=128):
    """Blocks of ``fn`` one SM holds at once (shared memory and registers; the occupancy calculation)."""
    dev = cp.cuda.Device().id
    rt = cp.cuda.runtime
    try:
        smem_sm = rt.deviceGetAttribute(rt.cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev)
        regs_sm = rt.deviceGetAttribute(rt.cudaDevAttrMaxRegistersPerMultiprocessor, dev)
    except Exception:  # H100 figures
        smem_sm, regs_sm = 228 * 1024, 65536
    try:
        static, regs = int(fn.shared_size_bytes), int(fn.num_regs)
    except Exception:  # a handle without the attributes: the figures of decode_f16_d128_r4 (ptxas -v)
        static, regs = 10240, 128
    by_smem = smem_sm // (smem + static + 1024)  # 1 KB per block reserved by the system
    by_regs = regs_sm // (-(-regs // 8) * 8 * threads)
    return max(1, min(by_smem, by_regs, 2048 // threads, 32))


@functools.lru_cache(maxsize=256)
def _decode_config(tname, b, s_q, h, h_k, d, max_len, num_splits, config):
    """(kernel, grid, splits, chunk, dynamic shared bytes, threads per block, merge kernel or None, cluster) of
    flash_decode.cu for one shape: computed once per shape, so a decode step costs one or two launches and no
    host-side arithmetic beyond the cache look-up. ``cluster`` > 0: the kernel is decode_tc_cl, launched as
    clusters of that many blocks (one cluster per group, merged in its leader's shared memory)."""
    g = h // h_k
    R = s_q * g
    cfg = dict(config)
    tc = tname == "f16" and R <= 8 and cfg["DEC_TC"]
    if tc:  # tensor cores; any chunk, rounded to 16-key tiles
        nrb, tk, threads = 1, 16, 32 * cfg["DEC_TC_WARPS"]
        ring = cfg["DEC_TC_WARPS"] * cfg["DEC_TC_STAGES"] * 2 * 16 * cfg["DEC_TC_KT"] * d * 2
        fn = _kernel(_DEC, f"decode_tc_d{d}", cfg, ring)
    else:
        rows = next(r for r in (1, 2, 4, 8) if r >= min(R, 8))
        nrb = -(-R // rows)
        tk = (128 // (d // (16 // (2 if tname == "f16" else 4)))) * cfg["DEC_UNROLL"]  # keys per tile (TK)
        ring, threads = cfg["DEC_STAGES"] * 2 * cfg["DEC_UNROLL"] * 128 * 16, 128
        fn = _kernel(_DEC, f"decode_{tname}_d{d}_r{rows}", cfg, ring)
    groups = b * h_k * nrb
    if num_splits:
        chunk = max(1, -(-max_len // int(num_splits)))
    else:
        sms = _sm_count()
        per_sm = cfg["DEC_BLOCKS_PER_SM"]
        if per_sm <= 0 and (tc or 4 * groups >= sms):
            per_sm = _resident_blocks(fn, ring, threads)
        elif per_sm <= 0:
            per_sm = cfg["DEC_FEW_GROUPS_PER_SM"]
        want = max(1, min(per_sm * sms // groups, -(-max_len // tk)))
        chunk = max(1, -(-(-(-max_len // want)) // tk)) * tk  # a whole number of tiles per piece (>= 1)
    splits = max(1, -(-max_len // chunk))
    grid = (splits, h_k * nrb, b)
    merge, cluster = None, 0
    # one cluster of the group's `splits` blocks, where all the clusters are resident at once; the pieces go to
    # the leader block's shared memory, past its ring: splits x 8 rows x (D + 2) floats (a ring too large for
    # that, as with DEC_TC_STAGES 3, merges without clusters)
    smem = ring + splits * 8 * (d + 2) * 4
    if tc and cfg["DEC_TC_CLUSTER"] and 1 < splits <= 16 and _cc_major() >= 9 and smem <= _smem_optin():
        cl = _kernel(_DEC, f"decode_tc_cl_d{d}", cfg, smem)
        ptr = int(getattr(cl, "kernel", cl).ptr)
        try:
            cp.cuda.driver.funcSetAttribute(ptr, 14, 1)  # 14: NON_PORTABLE_CLUSTER_SIZE_ALLOWED (up to 16)
        except Exception:
            pass
        if _clusters_fit(ptr, grid, threads, smem, splits):
            fn, ring, cluster = cl, smem, splits
    if tc and not cluster and not cfg["DEC_TC_MERGE"]:
        merge = _kernel(_DEC, f"decode_merge_d{d}", cfg, 0)
        try:  # the shared-memory carveout of decode_tc (all of it), so its blocks can join decode_tc's SMs
            # 9: PREFERRED_SHARED_MEMORY_CARVEOUT (before s15 this passed the RawKernel itself and silently failed)
            cp.cuda.driver.funcSetAttribute(int(getattr(merge, "kernel", merge).ptr), 9, 100)
        except Exception:
            pass
    return fn, grid, splits, chunk, ring, threads, merge, cluster


@functools.lru_cache(maxsize=None)
def _smem_optin():
    """The most dynamic shared memory one block may ask for (227 KB on the H100)."""
    rt = cp.cuda.runtime
    return rt.deviceGetAttribute(rt.cudaDevAttrMaxSharedMemoryPerBlockOptin, cp.cuda.Device().id)


@functools.lru_cache(maxsize=None)
def _cc_major():
    return cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["major"]


_SCRATCH = {}
_SCRATCH_KEEP = 1 << 24  # floats (64 MiB): larger workspaces are allocated per call


def _scratch(n_floats, n_counters):
    """(workspace, counters) of the decode kernel, kept per (device, stream) and grown on demand: no allocation
    per call. Launches on one stream run one after another, so they can share them; the counters are zero
    between launches (decode_split's last block of each group, or the group's decode_tc merge block, sets its
    counter back to 0)."""
    key = (cp.cuda.Device().id, cp.cuda.get_current_stream().ptr)
    work, counters = _SCRATCH.get(key, (None, None))
    if counters is None or counters.size < n_counters:
        counters = cp.zeros(max(n_counters, 1024), dtype=cp.int32)
    if n_floats > _SCRATCH_KEEP:  # a rare, large split count (a forced num_splits): allocated, not kept
        _SCRATCH[key] = (work, counters)
        return cp.empty(n_floats, dtype=cp.float32), counters
    if work is None or work.size < n_floats:
        work = cp.empty(max(n_floats, 1 << 20), dtype=cp.float32)
    _SCRATCH[key] = (work, counters)
    return work, counters


def _run(q, k, v, kv_len, max_len, causal, scale, num_splits, len_all=None):
    launch, out, lse = _launcher(q, k, v, kv_len, max_len, causal, scale, num_splits, len_all)
    launch()
    return out, lse


def plan(q, k, v, *, causal=False, softmax_scale=None, cache_seqlens=None, num_splits=0):
    """Check the arguments once; return a function that launches the kernels and returns ``out``.

    For benchmarks: the launches alone, without the host-side checks of each call (decode: packed once and
    captured into a CUDA graph). k, v are the keys and values (``cache_seqlens`` None) or caches read up to
    ``cache_seqlens`` (nothing is appended). The function writes the same output array on every call.
    """
    q, k, v = (_gpu.device_array(n, a, complex_ok=False) for n, a in (("q", q), ("k", k), ("v", v)))
    b, s_q, h, d, s_k, h_k = attention_shape(q.shape, k.shape, v.shape)
    _check_head_dim(d)
    dtype = _compute_dtype(q)
    q, k, v = (_contiguous(a, dtype) for a in (q, k, v))
    lengths = np.full(b, s_k, dtype=np.int64) if cache_seqlens is None else seqlens_of(cache_seqlens, b, s_k)
    kv_len = _kv_len(tuple(int(x) for x in lengths))
    launch, out, _ = _launcher(q, k, v, kv_len, int(lengths.max()) if b else 0, causal,
                               scale_of(softmax_scale, d), _num_splits(num_splits), _uniform(lengths))
    if hasattr(launch, "steps"):  # decode: the parameter blocks packed once, the launches replayed as a graph
        launch = _packed_launch(launch.steps) or launch
        launch = _graph_launch(launch) or launch

    def run():
        launch()
        return out
    return run


def _uniform(lengths):
    """The common length of ``lengths`` when they are all equal, else None."""
    return int(lengths[0]) if len(lengths) and all(int(x) == int(lengths[0]) for x in lengths) else None


def _num_splits(num_splits):
    if num_splits is None:
        return 0
    if isinstance(num_splits, (bool, np.bool_)) or not isinstance(num_splits, (int, np.integer)) or num_splits < 0:
        raise ValueError(f"num_splits: expected an integer >= 0 (0: automatic), got {num_splits!r}")
    return int(num_splits)


def attention(q, k, v, *, causal=False, softmax_scale=None, return_lse=False, check_finite=True,
              num_splits=0):
    """GPU twin of ``refimpl.attention.attention``; float16 in -> float16 out (tensor cores), else float32.

    ``num_splits`` > 0 forces the split-K kernel with that many pieces of the keys (the result does not
    depend on it beyond rounding); 0 picks the tensor-core kernel for float16 prefill.
    """
    q, k, v = (_gpu.device_array(n, a, complex_ok=False) for n, a in (("q", q), ("k", k), ("v", v)))
    b, s_q, h, d, s_k, h_k = attention_shape(q.shape, k.shape, v.shape)
    scale = scale_of(softmax_scale, d)
    _check_head_dim(d)
    ns = _num_splits(num_splits)
    for name, a in (("q", q), ("k", k), ("v", v)):
        _gpu.require_finite(name, a, check_finite)
    dtype = _compute_dtype(q)
    q, k, v = (_contiguous(a, dtype) for a in (q, k, v))
    kv_len = _kv_len((s_k,) * b)
    out, lse = _run(q, k, v, kv_len, s_k, causal, scale, ns, s_k)
    return (out, lse) if return_lse else out


def attention_with_kvcache(q, k_cache, v_cache, k=None, v=None, *, cache_seqlens=None, causal=False,
                           softmax_scale=None, return_lse=False, check_finite=True, num_splits=0):
    """GPU twin of ``refimpl.attention.attention_with_kvcache``: writes k, v in place, then attends.

    CuPy caches are updated in place on the device; NumPy caches are copied to the device for the call
    and the new keys and values are written into the NumPy arrays as well (so both stay in step). A cache
    that receives new keys must have the compute dtype (float16 for float16 q, else float32).
    """
    qd = _gpu.device_array("q", q, complex_ok=False)
    kc = k_cache if isinstance(k_cache, cp.ndarray) else _gpu.device_array("k_cache", k_cache, complex_ok=False)
    vc = v_cache if isinstance(v_cache, cp.ndarray) else _gpu.device_array("v_cache", v_cache, complex_ok=False)
    kn = None if k is None else _gpu.device_array("k", k, complex_ok=False)
    vn = None if v is None else _gpu.device_array("v", v, complex_ok=False)
    b, s_q, h, d, s_cache, h_k, s_new, seqlens = kvcache_shape(
        qd.shape, kc.shape, vc.shape, None if kn is None else kn.shape, None if vn is None else vn.shape,
        cache_seqlens)
    scale = scale_of(softmax_scale, d)
    _check_head_dim(d)
    ns = _num_splits(num_splits)
    dtype = _compute_dtype(qd)
    for name, c, orig, new in (("k_cache", kc, k_cache, kn), ("v_cache", vc, v_cache, vn)):
        if c.dtype.kind != "f":
            raise TypeError(f"{name}: expected a floating-point cache, got dtype {c.dtype}")
        if s_new:
            if c.dtype != dtype:
                raise TypeError(f"{name}: new keys are written in place, so the cache must have the compute "
                                f"dtype {dtype} (that of q), got {c.dtype}")
            if isinstance(orig, np.ndarray):
                _writable_cache(name, orig, None)
            if bool(cp.isfinite(new).all()) and new.size and float(cp.abs(new).max()) > np.finfo(dtype).max:
                raise ValueError(f"{name}: the new values overflow the cache's dtype {dtype}")
    _gpu.require_finite("q", qd, check_finite)
    if s_new:
        _gpu.require_finite("k", kn, check_finite)
        _gpu.require_finite("v", vn, check_finite)
    if check_finite:
        check_filled_finite((("k_cache", kc), ("v_cache", vc)), seqlens, lambda a: bool(cp.isfinite(a).all()))
    lengths = seqlens + s_new
    if s_new:  # every check has passed: now write, on the device and (for NumPy caches) on the host
        rows = cp.arange(b)[:, None]
        pos = cp.asarray(seqlens)[:, None] + cp.arange(s_new)[None, :]
        kc[rows, pos] = kn.astype(dtype)
        vc[rows, pos] = vn.astype(dtype)
        for orig, new in ((k_cache, kn), (v_cache, vn)):
            if isinstance(orig, np.ndarray):
                host = new.astype(dtype).get()
                for r in range(b):
                    orig[r, seqlens[r]:lengths[r]] = host[r]
    qd, kk, vv = _contiguous(qd, dtype), _contiguous(kc, dtype), _contiguous(vc, dtype)
    kv_len = _kv_len(tuple(int(x) for x in lengths))
    out, lse = _run(qd, kk, vv, kv_len, int(lengths.max()) if b else 0, causal, scale, ns, _uniform(lengths))
    return (out, lse) if return_lse else out
