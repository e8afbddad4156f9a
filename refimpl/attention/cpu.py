"""Numba twins of ``refimpl.attention``: online-softmax attention that never forms the s_q × s_k scores.

Same names and signatures as the reference; they compute in the inputs' precision (float32 or float64) and
return that dtype. One kernel serves both: a task owns one (batch row, kv head, block of up to ``_ROWS``
query rows), where a query row is one (query position, query head of the kv head's group). It reads its
keys in tiles of ``_TILE`` and keeps, per query row, the running max m, the running sum l and the
unnormalized output acc (the online softmax, Milakov & Gimelshein 2018):

    m' = max(m, max_j s_j),   l' = e^{m − m'} l + Σ_j e^{s_j − m'},   acc' = e^{m − m'} acc + Σ_j e^{s_j − m'} v_j

so memory is O(rows · d) per task, and a decode step (s_q = 1) reads each cached key and value once per kv
head (GQA: the g query heads of a group share the read). Tasks run in parallel (``numba.prange``); when
there are fewer tasks than threads (decode at batch 1), the keys are split into pieces as well, each
piece normalized on its own and the pieces merged by their log-sum-exp (``_merge``; see ``merge_lse``).
Decode (s_q = 1) has its own loop, ``_decode_attention``: a task owns a piece of the keys for every head,
so it streams a contiguous stretch of the (b, s, h_k, d) cache; a task per kv head would read rows 4 KB
apart, which the hardware prefetcher does not follow (measured: twice as slow on this layout).

Glossary as in ``refimpl.attention``: q (b, s_q, h, d); k, v (b, s_k, h_k, d); out (b, s_q, h, d).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from . import _append, _kvcache_inputs, _writable_cache, attention_shape, scale_of
from .._checks import as_array, float_dtype

__all__ = ["attention", "attention_with_kvcache"]

_ROWS = 16  # query rows per task
_TILE = 64  # keys per tile


# reassoc + contract only: the dot products and sums vectorize, while -inf and NaN keep their meaning
_FAST = {"reassoc", "contract"}


@numba.njit(parallel=True, cache=True, fastmath=_FAST)
def _online_attention(q, k, v, kv_len, causal, scale, chunk, out, lse):
    """Piece sp of every query: out[sp, b, i, hh] (normalized) and lse[sp, b, hh, i] over the keys
    [sp * chunk, (sp + 1) * chunk) that the row sees; row b has keys [0, kv_len[b]) of k, v."""
    nsplit = out.shape[0]
    b, s_q, h, d = q.shape
    h_k = k.shape[2]
    g = h // h_k
    R = s_q * g
    nblk = (R + _ROWS - 1) // _ROWS
    zero = scale - scale  # 0 in the input's precision: float32 sums stay float32 (and vectorize)
    for task in numba.prange(b * h_k * nblk * nsplit):
        sp = task % nsplit
        blk = task // nsplit
        bi = blk // (h_k * nblk)
        hk = (blk // nblk) % h_k
        r0 = (blk % nblk) * _ROWS
        nr = min(R, r0 + _ROWS) - r0
        L = kv_len[bi]
        qs = np.empty((_ROWS, d), dtype=q.dtype)
        limit = np.zeros(_ROWS, dtype=np.int64)  # keys [j_begin, limit) are visible to the row
        j_begin = sp * chunk
        for r in range(nr):
            i = (r0 + r) // g
            hh = hk * g + (r0 + r) % g
            for c in range(d):
                qs[r, c] = q[bi, i, hh, c] * scale
            lim = i + 1 + L - s_q if causal else L  # bottom-right: j <= i + L - s_q
            limit[r] = min(max(lim, 0), L, j_begin + chunk)
        m = np.full(_ROWS, -np.inf, dtype=q.dtype)
        l = np.zeros(_ROWS, dtype=q.dtype)
        acc = np.zeros((_ROWS, d), dtype=q.dtype)
        s = np.empty(_TILE, dtype=q.dtype)
        kmax = 0
        for r in range(nr):
            kmax = max(kmax, limit[r])
        for j0 in range(j_begin, kmax, _TILE):
            for r in range(nr):
                j1 = min(limit[r], j0 + _TILE)
                if j1 <= j0:
                    continue
                tmax = -np.inf
                for j in range(j0, j1):
                    x = zero
                    for c in range(d):
                        x += qs[r, c] * k[bi, j, hk, c]
                    s[j - j0] = x
                    tmax = max(tmax, x)
                m_new = max(m[r], tmax)
                alpha = math.exp(m[r] - m_new)  # exp(-inf) = 0 on the first tile
                l[r] *= alpha
                for c in range(d):
                    acc[r, c] *= alpha
                for j in range(j0, j1):
                    s[j - j0] = math.exp(s[j - j0] - m_new)
                    p = s[j - j0]  # read back in the input's precision
                    l[r] += p
                    for c in range(d):
                        acc[r, c] += p * v[bi, j, hk, c]
                m[r] = m_new
        for r in range(nr):
            i = (r0 + r) // g
            hh = hk * g + (r0 + r) % g
            if l[r] > 0:
                for c in range(d):
                    out[sp, bi, i, hh, c] = acc[r, c] / l[r]
                lse[sp, bi, hh, i] = m[r] + math.log(l[r])
            else:  # the row sees no key in this piece
                for c in range(d):
                    out[sp, bi, i, hh, c] = 0.0
                lse[sp, bi, hh, i] = -np.inf


@numba.njit(parallel=True, cache=True, fastmath=_FAST)
def _decode_attention(q, k, v, kv_len, scale, chunk, out, lse):
    """Decode (s_q = 1): piece sp covers keys [sp * chunk, (sp + 1) * chunk) of row b for ALL heads, so each task
    streams one contiguous stretch of the (b, s, h_k, d) cache instead of one head's rows 4 KB apart (which
    defeats the hardware prefetcher, as a task per kv head does). Same online softmax, same outputs as above."""
    nsplit = out.shape[0]
    b, _, h, d = q.shape
    h_k = k.shape[2]
    g = h // h_k
    zero = scale - scale
    for task in numba.prange(b * nsplit):
        sp = task % nsplit
        bi = task // nsplit
        j_begin = sp * chunk
        j_end = min(kv_len[bi], j_begin + chunk)
        qs = np.empty((h, d), dtype=q.dtype)
        for hh in range(h):
            for c in range(d):
                qs[hh, c] = q[bi, 0, hh, c] * scale
        m = np.full(h, -np.inf, dtype=q.dtype)
        l = np.zeros(h, dtype=q.dtype)
        acc = np.zeros((h, d), dtype=q.dtype)
        for j in range(j_begin, j_end):
            for hk in range(h_k):
                for r in range(g):
                    hh = hk * g + r
                    x = zero
                    for c in range(d):
                        x += qs[hh, c] * k[bi, j, hk, c]
                    if x > m[hh]:  # rescale only when the running max moves
                        alpha = math.exp(m[hh] - x)
                        l[hh] *= alpha
                        for c in range(d):
                            acc[hh, c] *= alpha
                        m[hh] = x
                    p = math.exp(x - m[hh])
                    l[hh] += p
                    for c in range(d):
                        acc[hh, c] += p * v[bi, j, hk, c]
        for hh in range(h):
            if l[hh] > 0:
                for c in range(d):
                    out[sp, bi, 0, hh, c] = acc[hh, c] / l[hh]
                lse[sp, bi, hh, 0] = m[hh] + math.log(l[hh])
            else:
                for c in range(d):
                    out[sp, bi, 0, hh, c] = 0.0
                lse[sp, bi, hh, 0] = -np.inf


@numba.njit(parallel=True, cache=True)
def _merge(out_p, lse_p, out, lse):
    """Merge the pieces by log-sum-exp: out = sum_s exp(lse_s - lse) out_s, lse = log sum_s exp(lse_s)."""
    nsplit, b, s_q, h, d = out_p.shape
    for task in numba.prange(b * s_q * h):
        bi = task // (s_q * h)
        i = (task // h) % s_q
        hh = task % h
        mx = -np.inf
        for sp in range(nsplit):
            mx = max(mx, lse_p[sp, bi, hh, i])
        for c in range(d):
            out[bi, i, hh, c] = 0.0
        if mx == -np.inf:  # no piece saw a key
            lse[bi, hh, i] = -np.inf
            continue
        total = 0.0
        for sp in range(nsplit):
            w = math.exp(lse_p[sp, bi, hh, i] - mx)
            total += w
            for c in range(d):
                out[bi, i, hh, c] += w * out_p[sp, bi, i, hh, c]
        for c in range(d):
            out[bi, i, hh, c] /= total
        lse[bi, hh, i] = mx + math.log(total)


def _attend(q, k, v, kv_len, causal, scale, num_splits=0):
    """Run the kernel; split the keys into pieces when there are fewer (row block, kv head) tasks than threads."""
    b, s_q, h, d = q.shape
    h_k = k.shape[2]
    dtype = q.dtype
    tasks = b * h_k * -(-(s_q * (h // h_k)) // _ROWS)
    max_len = int(kv_len.max()) if b else 0
    if s_q == 1:  # decode tasks are (row, piece of the keys), all heads at once
        tasks = b
    if not num_splits:
        num_splits = min(-(-2 * numba.get_num_threads() // max(tasks, 1)), -(-max_len // 512)) if max_len else 1
    chunk = max(1, -(-max_len // max(num_splits, 1)))
    nsplit = max(1, -(-max_len // chunk))
    out_p = np.empty((nsplit, b, s_q, h, d), dtype=dtype)
    lse_p = np.empty((nsplit, b, h, s_q), dtype=dtype)
    if s_q == 1:  # decode: the one query sees every key of its row, causal or not (bottom-right alignment)
        _decode_attention(q, k, v, kv_len, dtype.type(scale), chunk, out_p, lse_p)
    else:
        _online_attention(q, k, v, kv_len, bool(causal), dtype.type(scale), chunk, out_p, lse_p)
    if nsplit == 1:
        return out_p[0], lse_p[0]
    out = np.empty((b, s_q, h, d), dtype=dtype)
    lse = np.empty((b, h, s_q), dtype=dtype)
    _merge(out_p, lse_p, out, lse)
    return out, lse


def _twin_arrays(dtype, *arrays):
    return tuple(np.ascontiguousarray(a, dtype=dtype) for a in arrays)


def _splits(num_splits):
    if isinstance(num_splits, (bool, np.bool_)) or not isinstance(num_splits, (int, np.integer)) or num_splits < 0:
        raise ValueError(f"num_splits: expected an integer >= 0 (0: automatic), got {num_splits!r}")
    return int(num_splits)


def attention(q, k, v, *, causal=False, softmax_scale=None, return_lse=False, check_finite=True,
              num_splits=0):
    """Numba twin of ``refimpl.attention.attention`` (online softmax, O(rows · d) memory per task).

    ``num_splits`` > 0 splits the keys into that many pieces merged by log-sum-exp (0: automatic).
    """
    q = as_array("q", q, ndim=4, complex_ok=False, check_finite=check_finite)
    k = as_array("k", k, ndim=4, complex_ok=False, check_finite=check_finite)
    v = as_array("v", v, ndim=4, complex_ok=False, check_finite=check_finite)
    b, s_q, h, d, s_k, h_k = attention_shape(q.shape, k.shape, v.shape)
    dtype = float_dtype("q", q, complex_allowed=())
    for name, a in (("k", k), ("v", v)):
        float_dtype(name, a, complex_allowed=())
    scale = scale_of(softmax_scale, d)
    q, k, v = _twin_arrays(dtype, q, k, v)
    out, lse = _attend(q, k, v, np.full(b, s_k, dtype=np.int64), causal, scale, _splits(num_splits))
    return (out, lse) if return_lse else out


def attention_with_kvcache(q, k_cache, v_cache, k=None, v=None, *, cache_seqlens=None, causal=False,
                           softmax_scale=None, return_lse=False, check_finite=True, num_splits=0):
    """Numba twin of ``refimpl.attention.attention_with_kvcache``: writes k, v in place, then attends.

    The caches must be writable NumPy arrays of q's dtype (float32 or float64) when new keys are given,
    since the new keys go into them in place; computation is in q's dtype.
    """
    q, kc, vc, kn, vn, (b, s_q, h, d, s_cache, h_k, s_new, seqlens) = _kvcache_inputs(
        q, k_cache, v_cache, k, v, cache_seqlens, check_finite)
    dtype = float_dtype("q", q, complex_allowed=())
    scale = scale_of(softmax_scale, d)
    for name, c in (("k_cache", kc), ("v_cache", vc)):
        if c.dtype != dtype:
            raise TypeError(f"{name}: expected the dtype of q ({dtype}), got {c.dtype}")
    if s_new:
        _writable_cache("k_cache", k_cache, kn)
        _writable_cache("v_cache", v_cache, vn)
    lengths = _append(kc, vc, kn, vn, seqlens, s_new, check_finite)
    qq = np.ascontiguousarray(q)
    kk = kc if kc.flags.c_contiguous else np.ascontiguousarray(kc)
    vv = vc if vc.flags.c_contiguous else np.ascontiguousarray(vc)
    out, lse = _attend(qq, kk, vv, lengths, causal, scale, _splits(num_splits))
    return (out, lse) if return_lse else out
