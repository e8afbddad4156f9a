"""CuPy raw-kernel twins of ``refimpl.attention``: ``attention`` and ``attention_with_kvcache``.

Same names and signatures as the reference, plus ``num_splits`` (0: chosen to fill the device). Inputs may
be NumPy or CuPy arrays; float16 inputs compute in float16 with float32 accumulation and return float16,
anything else computes in float32 and returns float32; lse is float32. Head dimension d: 64 or 128.

Kernels (one grid/block comment at the top of each file):
    flash_fwd.cu     prefill: FlashAttention-2-style tiles on tensor cores (mma.sync m16n8k16, fp16 in,
                     fp32 accumulate), online softmax in registers; used for float16 with s_q > 16.
    flash_decode.cu  split-K (flash-decoding): several blocks per (batch row, kv head), each over a piece
                     of the keys, pieces merged by log-sum-exp in a fixed order (deterministic); used for
                     decode (s_q <= 16), for float32, and whenever ``num_splits`` is given.
                     decode_tc (float16, s_q * h / h_k <= 8 rows per group: GQA decode): tensor cores,
                     each warp on its own keys, the merge a second small launch; decode_split (the rest):
                     CUDA cores, the last block of each group merges (one launch).
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
# its 192 KB ring: 16 pieces at b1, 2 at b8; measured on the H100, two waves of smaller blocks were slower).
# DEC_BLOCKS_PER_SM > 0 forces that many blocks per SM.
# REFIMPL_ATTENTION_CONFIG (a JSON object of these names) overrides them, for tuning.
FWD_CONFIG = {"FWD_WARPS": 8, "FWD_BN": 64, "FWD_MINB": 1, "FWD_QREG": 1, "FWD_FASTEXP": 0, "FWD_DBUF": 0}
DEC_CONFIG = {"DEC_UNROLL": 4, "DEC_STAGES": 4, "DEC_BLOCKS_PER_SM": 0, "DEC_FEW_GROUPS_PER_SM": 2,
              "DEC_TC": 1, "DEC_TC_WARPS": 8, "DEC_TC_KT": 1, "DEC_TC_STAGES": 3, "DEC_TC_MERGE": 0}
# not compile-time macros: the split rule, and DEC_TC (1: float16 groups of <= 8 rows take decode_tc).
# DEC_TC_MERGE 0: decode_tc's pieces are merged by a second launch; the fused last-block merge (1) made the
# whole decode 15-20% slower on the H100 (b8 32K 415 vs 362 us with the merge skipped; cause not found).
_DEC_SPLIT_KEYS = ("DEC_BLOCKS_PER_SM", "DEC_FEW_GROUPS_PER_SM", "DEC_TC")
for _k, _v in json.loads(os.environ.get("REFIMPL_ATTENTION_CONFIG", "{}")).items():
    (FWD_CONFIG if _k.startswith("FWD_") else DEC_CONFIG)[_k] = int(_v)
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


def _launcher(q, k, v, kv_len, max_len, causal, scale, num_splits):
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
        cfg = dict(FWD_CONFIG)
        bm, bn, threads = 16 * cfg["FWD_WARPS"], cfg["FWD_BN"], 32 * cfg["FWD_WARPS"]
        smem = (bm + (4 if cfg["FWD_DBUF"] else 2) * bn) * d * 2
        fn = _kernel(_FWD, f"flash_fwd_f16_d{d}", cfg, smem)
        grid = (-(-s_q // bm), h, b)
        args = (q, k, v, out, lse, kv_len, np.int32(s_q), np.int32(h), np.int32(h_k), kv_batch_stride,
                scale_log2, np.int32(bool(causal)))
        return (lambda: fn(grid, (threads,), args, shared_mem=smem)), out, lse
    fn, grid, splits, chunk, ring, threads, merge = _decode_config(tname, b, s_q, h, h_k, d, max_len, num_splits,
                                                                   tuple(sorted(DEC_CONFIG.items())))
    work, counters = _scratch(splits * b * s_q * h * (d + 1), grid[1] * grid[2])
    args = (q, k, v, work, out, lse, counters, kv_len, np.int32(b), np.int32(s_q), np.int32(h), np.int32(h_k),
            kv_batch_stride, np.int32(chunk), scale_log2, np.int32(bool(causal)))
    steps = [(fn, grid, threads, ring, args)]
    if merge is not None:  # decode_tc's pieces merged by a second launch (decode_merge_d*)
        steps.append((merge, (h_k, b, 1), 128, 0, (work, out, lse, np.int32(b), np.int32(s_q), np.int32(h),
                                                  np.int32(h_k), np.int32(splits))))

    def launch():
        for f, gr, th, sm, ar in steps:
            f(gr, (th,), ar, shared_mem=sm)
    launch.steps = steps  # for plan: _packed_launch(steps)
    return launch, out, lse


def _packed_launch(steps):
    """``launch()`` of the kernels ``steps`` = [(kernel, grid, threads, dynamic shared bytes, args)], with fixed
    arguments, through cuLaunchKernel with each parameter block packed once (ctypes); None where a handle or an
    argument type is not the expected one. CuPy's own call converts every argument on every launch (about
    5 us of host time on the H100 machine, measured, which CUDA-event timings of one decode step include
    while the GPU waits for the launch)."""
    import ctypes

    try:
        launch_kernel = cp.cuda.driver.launchKernel
        ptrs = [int(getattr(fn, "kernel", fn).ptr) for fn, *_ in steps]
    except Exception:
        return None
    packed, keep = [], []
    for ptr, (_, grid, threads, smem, args) in zip(ptrs, steps):
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
        params = (ctypes.c_void_p * len(vals))(*(ctypes.addressof(x) for x in vals))
        packed.append((ptr, *grid, threads, 1, 1, smem, ctypes.addressof(params)))
        keep.append((vals, params, args))
    stream = cp.cuda.get_current_stream

    def launch():
        s = stream().ptr
        for ptr, gx, gy, gz, tx, ty, tz, smem, where in packed:
            launch_kernel(ptr, gx, gy, gz, tx, ty, tz, smem, s, where, 0)
    launch.keep = keep  # the packed values and the arrays they point to live as long as launch
    return launch


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
        static, regs = 9296, 128
    by_smem = smem_sm // (smem + static + 1024)  # 1 KB per block reserved by the system
    by_regs = regs_sm // (-(-regs // 8) * 8 * threads)
    return max(1, min(by_smem, by_regs, 2048 // threads, 32))


@functools.lru_cache(maxsize=256)
def _decode_config(tname, b, s_q, h, h_k, d, max_len, num_splits, config):
    """(kernel, grid, splits, chunk, dynamic shared bytes, threads per block, merge kernel or None) of
    flash_decode.cu for one shape: computed once per shape, so a decode step costs one or two launches and no
    host-side arithmetic beyond the cache look-up."""
    g = h // h_k
    R = s_q * g
    cfg = dict(config)
    tc = tname == "f16" and R <= 8 and cfg["DEC_TC"]
    merge = None
    if tc:  # tensor cores; any chunk, rounded to 16-key tiles
        nrb, tk, threads = 1, 16, 32 * cfg["DEC_TC_WARPS"]
        ring = cfg["DEC_TC_WARPS"] * cfg["DEC_TC_STAGES"] * 2 * 16 * cfg["DEC_TC_KT"] * d * 2
        fn = _kernel(_DEC, f"decode_tc_d{d}", cfg, ring)
        if not cfg["DEC_TC_MERGE"]:
            merge = _kernel(_DEC, f"decode_merge_d{d}", cfg, 0)
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
    return fn, (splits, h_k * nrb, b), splits, chunk, ring, threads, merge


_SCRATCH = {}
_SCRATCH_KEEP = 1 << 24  # floats (64 MiB): larger workspaces are allocated per call


def _scratch(n_floats, n_counters):
    """(workspace, counters) of the decode kernel, kept per (device, stream) and grown on demand: no allocation
    per call. Launches on one stream run one after another, so they can share them; the counters are zero
    between launches (the last block of each group sets its counter back to 0)."""
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


def _run(q, k, v, kv_len, max_len, causal, scale, num_splits):
    launch, out, lse = _launcher(q, k, v, kv_len, max_len, causal, scale, num_splits)
    launch()
    return out, lse


def plan(q, k, v, *, causal=False, softmax_scale=None, cache_seqlens=None, num_splits=0):
    """Check the arguments once; return a function that launches the kernels and returns ``out``.

    For benchmarks: the launches alone, without the host-side checks of each call. k, v are the keys and
    values (``cache_seqlens`` None) or caches read up to ``cache_seqlens`` (nothing is appended). The
    function writes the same output array on every call.
    """
    q, k, v = (_gpu.device_array(n, a, complex_ok=False) for n, a in (("q", q), ("k", k), ("v", v)))
    b, s_q, h, d, s_k, h_k = attention_shape(q.shape, k.shape, v.shape)
    _check_head_dim(d)
    dtype = _compute_dtype(q)
    q, k, v = (_contiguous(a, dtype) for a in (q, k, v))
    lengths = np.full(b, s_k, dtype=np.int64) if cache_seqlens is None else seqlens_of(cache_seqlens, b, s_k)
    kv_len = _kv_len(tuple(int(x) for x in lengths))
    launch, out, _ = _launcher(q, k, v, kv_len, int(lengths.max()) if b else 0, causal,
                               scale_of(softmax_scale, d), _num_splits(num_splits))
    if hasattr(launch, "steps"):  # decode: the parameter blocks packed once
        launch = _packed_launch(launch.steps) or launch

    def run():
        launch()
        return out
    return run


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
    out, lse = _run(q, k, v, kv_len, s_k, causal, scale, ns)
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
    out, lse = _run(qd, kk, vv, kv_len, int(lengths.max()) if b else 0, causal, scale, ns)
    return (out, lse) if return_lse else out
