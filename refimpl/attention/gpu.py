"""CuPy raw-kernel twins of ``refimpl.attention``: ``attention`` and ``attention_with_kvcache``.

Same names and signatures as the reference, plus ``num_splits`` (0: chosen to fill the device). Inputs may
be NumPy or CuPy arrays; float16 inputs compute in float16 with float32 accumulation and return float16,
anything else computes in float32 and returns float32; lse is float32. Head dimension d: 64 or 128.

Kernels (one grid/block comment at the top of each file):
    flash_fwd.cu     prefill: FlashAttention-2-style tiles on tensor cores (mma.sync m16n8k16, fp16 in,
                     fp32 accumulate), online softmax in registers; used for float16 with s_q > 16.
    flash_decode.cu  split-K on CUDA cores (flash-decoding): several blocks per (batch row, kv head), each
                     over a piece of the keys, merged by log-sum-exp in ``combine``; used for decode
                     (s_q <= 16), for float32, and whenever ``num_splits`` is given.
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
# The automatic split count (not macros): DEC_WAVES whole waves of decode blocks, a wave being as many blocks
# as the device holds at once (blocks resident per SM x SMs): a partly filled last wave leaves SMs idle
# while the slowest pieces finish, which is what one blocks-per-SM rule got wrong for some shapes. Each piece
# is at least DEC_MIN_TILES tiles long (fewer, longer pieces where the per-block start and the merge cost
# more than the bandwidth gained). DEC_BLOCKS_PER_SM > 0 restores the old rule (that many blocks per SM).
# REFIMPL_ATTENTION_CONFIG (a JSON object of these names) overrides them, for tuning.
FWD_CONFIG = {"FWD_WARPS": 8, "FWD_BN": 64, "FWD_MINB": 1, "FWD_QREG": 1, "FWD_FASTEXP": 0, "FWD_DBUF": 0}
DEC_CONFIG = {"DEC_UNROLL": 4, "DEC_STAGES": 4, "DEC_WAVES": 1, "DEC_MIN_TILES": 0, "DEC_BLOCKS_PER_SM": 0}
_DEC_SPLIT_KEYS = ("DEC_WAVES", "DEC_MIN_TILES", "DEC_BLOCKS_PER_SM")  # not compile-time macros
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


def _device(name, x):
    a = x if isinstance(x, cp.ndarray) else cp.asarray(np.asarray(x))
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected a real array, got dtype {a.dtype}")
    return a


def _finite(name, a, check_finite):
    if check_finite and a.size and not bool(cp.isfinite(a).all()):
        raise ValueError(f"{name}: contains NaN or inf (pass check_finite=False to skip this check)")


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
    fn, grid, splits, chunk, ring = _decode_config(tname, b, s_q, h, h_k, d, max_len, num_splits,
                                                   tuple(sorted(DEC_CONFIG.items())))
    n_rows = b * s_q * h
    o_part = cp.empty((splits, n_rows, d), dtype=cp.float32)
    lse_part = cp.empty((splits, n_rows), dtype=cp.float32)
    args = (q, k, v, o_part, lse_part, out, lse, _counters(grid[1] * grid[2]), kv_len, np.int32(b), np.int32(s_q),
            np.int32(h), np.int32(h_k), kv_batch_stride, np.int32(chunk), scale_log2, np.int32(bool(causal)))
    return (lambda: fn(grid, (128,), args, shared_mem=ring)), out, lse


def _resident_blocks(fn, smem, threads=128):
    """Blocks of ``fn`` one SM holds at once (shared memory and registers; the occupancy calculation)."""
    dev = cp.cuda.Device().id
    rt = cp.cuda.runtime
    try:
        smem_sm = rt.deviceGetAttribute(rt.cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev)
        regs_sm = rt.deviceGetAttribute(rt.cudaDevAttrMaxRegistersPerMultiprocessor, dev)
    except Exception:  # H100 figures
        smem_sm, regs_sm = 228 * 1024, 65536
    static = int(getattr(fn, "shared_size_bytes", 0) or 0)
    regs = int(getattr(fn, "num_regs", 0) or 128)
    by_smem = smem_sm // (smem + static + 1024)  # 1 KB per block reserved by the system
    by_regs = regs_sm // (-(-regs // 8) * 8 * threads)
    return max(1, min(by_smem, by_regs, 2048 // threads, 32))


@functools.lru_cache(maxsize=256)
def _decode_config(tname, b, s_q, h, h_k, d, max_len, num_splits, config):
    """(kernel, grid, splits, chunk, dynamic shared bytes) of flash_decode.cu for one shape: computed once
    per shape, so a decode step costs one launch and no host-side arithmetic beyond the cache look-up."""
    g = h // h_k
    R = s_q * g
    rows = next(r for r in (1, 2, 4, 8) if r >= min(R, 8))
    nrb = -(-R // rows)
    cfg = dict(config)
    tk = (128 // (d // (16 // (2 if tname == "f16" else 4)))) * cfg["DEC_UNROLL"]  # keys per tile (TK)
    ring = cfg["DEC_STAGES"] * 2 * cfg["DEC_UNROLL"] * 128 * 16
    fn = _kernel(_DEC, f"decode_{tname}_d{d}_r{rows}", cfg, ring)
    groups = b * h_k * nrb
    if num_splits:
        chunk = max(1, -(-max_len // int(num_splits)))
    else:
        tiles = max(1, -(-max_len // tk))
        if cfg["DEC_BLOCKS_PER_SM"] > 0:  # the old rule: about that many blocks per SM
            want = -(-cfg["DEC_BLOCKS_PER_SM"] * _sm_count() // groups)
        else:  # whole waves: as many pieces as fill DEC_WAVES waves of resident blocks
            slots = _resident_blocks(fn, ring) * _sm_count()
            want = max(1, cfg["DEC_WAVES"] * slots // groups)
            if cfg["DEC_MIN_TILES"] > 0:
                want = min(want, max(1, tiles // cfg["DEC_MIN_TILES"]))
        want = max(1, min(want, tiles))
        chunk = -(-(-(-max_len // want)) // tk) * tk  # a whole number of tiles per piece
    splits = max(1, -(-max_len // chunk))
    return fn, (splits, h_k * nrb, b), splits, chunk, ring


_COUNTERS = {}


def _counters(n):
    """int32 counters, zero between launches (the last block of each group sets its counter back to 0); one
    buffer per (device, stream), grown on demand, so launches on one stream never share a counter in flight."""
    key = (cp.cuda.Device().id, cp.cuda.get_current_stream().ptr)
    buf = _COUNTERS.get(key)
    if buf is None or buf.size < n:
        buf = _COUNTERS[key] = cp.zeros(max(n, 1024), dtype=cp.int32)
    return buf


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
    q, k, v = _device("q", q), _device("k", k), _device("v", v)
    b, s_q, h, d, s_k, h_k = attention_shape(q.shape, k.shape, v.shape)
    _check_head_dim(d)
    dtype = _compute_dtype(q)
    q, k, v = (cp.ascontiguousarray(a, dtype=dtype) for a in (q, k, v))
    lengths = np.full(b, s_k, dtype=np.int64) if cache_seqlens is None else seqlens_of(cache_seqlens, b, s_k)
    kv_len = cp.asarray(lengths.astype(np.int32))
    launch, out, _ = _launcher(q, k, v, kv_len, int(lengths.max()) if b else 0, causal,
                               scale_of(softmax_scale, d), _num_splits(num_splits))

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
    q, k, v = _device("q", q), _device("k", k), _device("v", v)
    b, s_q, h, d, s_k, h_k = attention_shape(q.shape, k.shape, v.shape)
    scale = scale_of(softmax_scale, d)
    _check_head_dim(d)
    ns = _num_splits(num_splits)
    for name, a in (("q", q), ("k", k), ("v", v)):
        _finite(name, a, check_finite)
    dtype = _compute_dtype(q)
    q, k, v = (cp.ascontiguousarray(a, dtype=dtype) for a in (q, k, v))
    kv_len = cp.full(b, s_k, dtype=cp.int32)
    out, lse = _run(q, k, v, kv_len, s_k, causal, scale, ns)
    return (out, lse) if return_lse else out


def attention_with_kvcache(q, k_cache, v_cache, k=None, v=None, *, cache_seqlens=None, causal=False,
                           softmax_scale=None, return_lse=False, check_finite=True, num_splits=0):
    """GPU twin of ``refimpl.attention.attention_with_kvcache``: writes k, v in place, then attends.

    CuPy caches are updated in place on the device; NumPy caches are copied to the device for the call
    and the new keys and values are written into the NumPy arrays as well (so both stay in step). A cache
    that receives new keys must have the compute dtype (float16 for float16 q, else float32).
    """
    qd = _device("q", q)
    kc = k_cache if isinstance(k_cache, cp.ndarray) else _device("k_cache", k_cache)
    vc = v_cache if isinstance(v_cache, cp.ndarray) else _device("v_cache", v_cache)
    kn = None if k is None else _device("k", k)
    vn = None if v is None else _device("v", v)
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
    _finite("q", qd, check_finite)
    if s_new:
        _finite("k", kn, check_finite)
        _finite("v", vn, check_finite)
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
    qd = cp.ascontiguousarray(qd, dtype=dtype)
    kk = cp.ascontiguousarray(kc, dtype=dtype)
    vv = cp.ascontiguousarray(vc, dtype=dtype)
    kv_len = cp.asarray(lengths.astype(np.int32))
    out, lse = _run(qd, kk, vv, kv_len, int(lengths.max()) if b else 0, causal, scale, ns)
    return (out, lse) if return_lse else out
