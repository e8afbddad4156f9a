"""Chapter 6: softmax attention, its causal mask, and the KV cache that makes decoding O(N) per token.

Glossary (the letters of flash-attn's API; Vaswani et al. write Q, K, V and d_k)
    b        batch
    s_q      query positions (the new tokens);  s_k  key/value positions (all tokens seen so far)
    h        query heads;  h_k  key/value heads (h_k = h: multi-head; 1 < h_k < h: GQA; h_k = 1: MQA)
    d        head dimension (d_k = d_v = d)
    q        (b, s_q, h, d);   k, v  (b, s_k, h_k, d);   out (b, s_q, h, d);   lse (b, h, s_q)
    g        h // h_k, the query heads that share one key/value head: query head i reads kv head i // g
    s_cache  the allocated length of a KV cache (b, s_cache, h_k, d); cache_seqlens its filled length

Scaled dot-product attention (Vaswani et al., eq. 1), one query row at a time:

    S_ij = scale · q_i · k_j,    P_ij = exp(S_ij − lse_i),    lse_i = log Σ_j exp(S_ij),    out_i = Σ_j P_ij v_j

with scale = 1/√d by default. The causal mask is aligned **bottom-right**, as in flash-attn ≥ 2.1: with
s_q queries and s_k keys, query i sees key j when j ≤ i + s_k − s_q, so the last query sees every key. A row
that sees no key (possible only when s_q > s_k) outputs 0 and lse = −inf.

Every function here computes in float64 whatever it is given and returns float64. ``refimpl.attention.cpu``
(Numba, online softmax) and ``refimpl.attention.gpu`` (CuPy raw kernels) are its fast twins.
"""

from __future__ import annotations

import numbers

import numpy as np

from .._checks import as_array, check_rank

__all__ = ["attention", "attention_with_kvcache", "causal_mask", "merge_lse", "attention_split",
           "kv_cache_bytes", "score_matrix_bytes"]


# ---------------------------------------------------------------------------------------------------------
# shapes and arguments (shared with the twins)

def attention_shape(q_shape, k_shape, v_shape, *, k_name="k", v_name="v"):
    """(b, s_q, h, d, s_k, h_k) of ``attention``'s arguments, or a ``ValueError`` naming the culprit."""
    check_rank("q", q_shape, ndim=4)
    check_rank(k_name, k_shape, ndim=4)
    check_rank(v_name, v_shape, ndim=4)
    b, s_q, h, d = q_shape
    if tuple(k_shape[:1]) != (b,) or k_shape[3] != d:
        raise ValueError(f"{k_name}: expected shape (b, s_k, h_k, d) = ({b}, s_k, h_k, {d}) to match q, "
                         f"got {tuple(k_shape)}")
    if tuple(v_shape) != tuple(k_shape):
        raise ValueError(f"{v_name}: expected the shape of {k_name} {tuple(k_shape)}, got {tuple(v_shape)}")
    s_k, h_k = k_shape[1], k_shape[2]
    if h_k < 1 or h % h_k:
        raise ValueError(f"{k_name}: the query heads h = {h} must be a multiple of the key/value heads h_k, "
                         f"got h_k = {h_k} (shape {tuple(k_shape)})")
    if d < 1:
        raise ValueError(f"q: expected a head dimension d >= 1, got shape {tuple(q_shape)}")
    return b, s_q, h, d, s_k, h_k


def scale_of(softmax_scale, d):
    """The softmax scale: 1/√d by default, else a finite real number."""
    if softmax_scale is None:
        return 1.0 / np.sqrt(d)
    if isinstance(softmax_scale, (bool, np.bool_)) or not isinstance(softmax_scale, numbers.Real) \
            or not np.isfinite(softmax_scale):
        raise ValueError(f"softmax_scale: expected a finite real number or None, got {softmax_scale!r}")
    return float(softmax_scale)


def kvcache_shape(q_shape, kc_shape, vc_shape, k_shape, v_shape, cache_seqlens):
    """Validate ``attention_with_kvcache``'s shapes; return (b, s_q, h, d, s_cache, h_k, s_new, seqlens).

    ``seqlens`` (b,) int64 is the filled length of each row before the new keys are written. Raises
    ``ValueError`` when the new keys would run past the end of the cache — before anything is written.
    """
    b, s_q, h, d, s_cache, h_k = attention_shape(q_shape, kc_shape, vc_shape, k_name="k_cache",
                                                 v_name="v_cache")
    if (k_shape is None) != (v_shape is None):
        raise ValueError("k, v: pass both new keys and new values, or neither")
    s_new = 0
    if k_shape is not None:
        check_rank("k", k_shape, ndim=4)
        if tuple(k_shape[:1]) + tuple(k_shape[2:]) != (b, h_k, d):
            raise ValueError(f"k: expected shape (b, s_new, h_k, d) = ({b}, s_new, {h_k}, {d}), got {tuple(k_shape)}")
        if tuple(v_shape) != tuple(k_shape):
            raise ValueError(f"v: expected the shape of k {tuple(k_shape)}, got {tuple(v_shape)}")
        s_new = k_shape[1]
    seqlens = seqlens_of(cache_seqlens, b, s_cache)
    if s_new and seqlens.size and int(seqlens.max()) + s_new > s_cache:
        r = int(np.argmax(seqlens))
        raise ValueError(f"cache_seqlens: writing {s_new} new keys at position {int(seqlens[r])} of row {r} "
                         f"runs past the end of the cache (s_cache = {s_cache}); nothing was written")
    return b, s_q, h, d, s_cache, h_k, s_new, seqlens


def seqlens_of(cache_seqlens, b, s_cache):
    """cache_seqlens (None, an int or (b,) ints) as a (b,) int64 array in [0, s_cache]; None means full."""
    if cache_seqlens is None:
        return np.full(b, s_cache, dtype=np.int64)
    if hasattr(cache_seqlens, "get") and type(cache_seqlens).__module__.startswith("cupy"):
        cache_seqlens = cache_seqlens.get()
    a = np.asarray(cache_seqlens)
    if a.dtype.kind not in "iu" or a.ndim > 1 or (a.ndim == 1 and a.shape != (b,)):
        raise ValueError(f"cache_seqlens: expected an int or integers of shape (b,) = ({b},), "
                         f"got {a.dtype} of shape {a.shape}")
    a = np.broadcast_to(a.astype(np.int64), (b,)).copy()
    if a.size and (a.min() < 0 or a.max() > s_cache):
        raise ValueError(f"cache_seqlens: expected values in [0, s_cache = {s_cache}], got min {a.min()}, "
                         f"max {a.max()}")
    return a


# ---------------------------------------------------------------------------------------------------------
# the definition

def causal_mask(s_q, s_k, *, align="bottom-right"):
    """(s_q, s_k) bool, True where query i may see key j.

    bottom-right (flash-attn ≥ 2.1, and this package): j ≤ i + s_k − s_q, so the last query sees every key,
    as the newest token of a KV cache must. top-left (``torch.tril``, flash-attn < 2.1): j ≤ i, which is the
    same when s_q = s_k but hides the cached keys from a new token when s_q < s_k: the bug of chapter 6.
    """
    i = np.arange(s_q)[:, None]
    j = np.arange(s_k)[None, :]
    if align == "bottom-right":
        return j <= i + (s_k - s_q)
    if align == "top-left":
        return j <= i
    raise ValueError(f"align: expected 'bottom-right' or 'top-left', got {align!r}")


def _attend(q, k, v, scale, mask):
    """Softmax attention of one batch row: q (s_q, h, d), k, v (s_k, h_k, d), mask (s_q, s_k) or None.

    Materializes the (h, s_q, s_k) scores: this is the definition, not the fast path.
    """
    h, h_k = q.shape[1], k.shape[1]
    kh = np.repeat(k, h // h_k, axis=1)  # query head i reads kv head i // g
    vh = np.repeat(v, h // h_k, axis=1)
    S = np.einsum("qhd,khd->hqk", q, kh) * scale
    if mask is not None:
        S = np.where(mask, S, -np.inf)
    m = S.max(axis=-1, initial=-np.inf, keepdims=True)
    seen = np.isfinite(m)
    P = np.exp(S - np.where(seen, m, 0.0))  # subtract the row max: no overflow for logits ~ 1e3
    l = P.sum(axis=-1, keepdims=True)
    out = np.einsum("hqk,khd->qhd", P / np.where(seen, l, 1.0), vh)
    with np.errstate(divide="ignore"):
        lse = np.where(seen, m + np.log(np.where(seen, l, 1.0)), -np.inf)[..., 0]
    return out, lse  # lse (h, s_q); rows that see no key: out 0 (P is all zero), lse -inf


def attention(q, k, v, *, causal=False, softmax_scale=None, return_lse=False, check_finite=True):
    """softmax(scale · q kᵀ + mask) v, per batch row and head; float64.

    q (b, s_q, h, d); k, v (b, s_k, h_k, d) with h % h_k == 0 (query head i reads kv head i // (h // h_k)).
    ``causal``: query i sees keys j ≤ i + s_k − s_q (bottom-right); a row that sees no key outputs 0 and
    lse −inf. Returns out (b, s_q, h, d), and lse (b, h, s_q) = log Σ_j exp(scale · q_i·k_j) when asked.
    """
    q = as_array("q", q, ndim=4, complex_ok=False, check_finite=check_finite)
    k = as_array("k", k, ndim=4, complex_ok=False, check_finite=check_finite)
    v = as_array("v", v, ndim=4, complex_ok=False, check_finite=check_finite)
    b, s_q, h, d, s_k, h_k = attention_shape(q.shape, k.shape, v.shape)
    scale = scale_of(softmax_scale, d)
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    mask = causal_mask(s_q, s_k) if causal else None
    out = np.empty((b, s_q, h, d))
    lse = np.empty((b, h, s_q))
    for r in range(b):
        out[r], lse[r] = _attend(q[r], k[r], v[r], scale, mask)
    return (out, lse) if return_lse else out


def _writable_cache(name, a, new):
    """A cache that can take the new keys in place: a writable float NumPy array that holds them finitely."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: the reference writes new keys in place, so it needs a NumPy array, "
                        f"got {type(a).__name__}")
    if a.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating-point cache, got dtype {a.dtype}")
    if not a.flags.writeable:
        raise ValueError(f"{name}: the cache is read-only, and the new keys are written into it in place")
    if new is not None and new.size and np.isfinite(new).all() and np.abs(new).max() > np.finfo(a.dtype).max:
        raise ValueError(f"{name}: the new values overflow the cache's dtype {a.dtype} "
                         f"(max |value| {np.abs(new).max():.3g} > {np.finfo(a.dtype).max:.3g})")


def _kvcache_inputs(q, k_cache, v_cache, k, v, cache_seqlens, check_finite):
    """NumPy views of ``attention_with_kvcache``'s arrays and its validated shapes (shared with the cpu twin)."""
    q = as_array("q", q, ndim=4, complex_ok=False, check_finite=check_finite)
    kc = as_array("k_cache", k_cache, ndim=4, complex_ok=False, check_finite=False)
    vc = as_array("v_cache", v_cache, ndim=4, complex_ok=False, check_finite=False)
    kn = None if k is None else as_array("k", k, ndim=4, complex_ok=False, check_finite=check_finite)
    vn = None if v is None else as_array("v", v, ndim=4, complex_ok=False, check_finite=check_finite)
    shape = kvcache_shape(q.shape, kc.shape, vc.shape, None if kn is None else kn.shape,
                          None if vn is None else vn.shape, cache_seqlens)
    return q, kc, vc, kn, vn, shape


def check_filled_finite(caches, seqlens, all_finite):
    """``ValueError`` when the filled part [0, seqlens[r]) of a cache row holds NaN or inf; the unfilled
    tail may hold anything. ``caches`` is ((name, array), ...); ``all_finite(a)`` -> bool (NumPy or CuPy)."""
    for name, c in caches:
        for r in range(len(seqlens)):
            if seqlens[r] and not all_finite(c[r, :int(seqlens[r])]):
                raise ValueError(f"{name}: contains NaN or inf in the filled part of row {r} "
                                 "(pass check_finite=False to skip this check)")


def _append(k_cache, v_cache, kn, vn, seqlens, s_new, check_finite):
    """Check the filled part, then write the new keys and values in place; return the new lengths."""
    if check_finite:
        check_filled_finite((("k_cache", k_cache), ("v_cache", v_cache)), seqlens, lambda a: np.isfinite(a).all())
    lengths = seqlens + s_new
    for r in range(len(seqlens) if s_new else 0):  # every check has passed: now write
        k_cache[r, seqlens[r]:lengths[r]] = kn[r]
        v_cache[r, seqlens[r]:lengths[r]] = vn[r]
    return lengths


def attention_with_kvcache(q, k_cache, v_cache, k=None, v=None, *, cache_seqlens=None, causal=False,
                           softmax_scale=None, return_lse=False, check_finite=True):
    """Decode step with a preallocated KV cache, as ``flash_attn_with_kvcache``; float64 out.

    q (b, s_q, h, d); k_cache, v_cache (b, s_cache, h_k, d); cache_seqlens None (the whole cache is filled),
    an int, or (b,) ints: the filled length of each row. New k, v (b, s_new, h_k, d) are first written IN
    PLACE into the caches at rows [cache_seqlens, cache_seqlens + s_new), in the caches' own dtype (a
    float16 cache holds the keys rounded to float16, and attention then reads the rounded keys, as the
    GPU kernels do); then row r's queries attend to its keys [0, cache_seqlens[r] + s_new), the causal mask
    aligned bottom-right to that count. Writing past the end raises ``ValueError`` with nothing written.
    Returns out (b, s_q, h, d), and lse (b, h, s_q) when asked.
    """
    q, kc, vc, kn, vn, (b, s_q, h, d, s_cache, h_k, s_new, seqlens) = _kvcache_inputs(
        q, k_cache, v_cache, k, v, cache_seqlens, check_finite)
    scale = scale_of(softmax_scale, d)
    if s_new:
        _writable_cache("k_cache", k_cache, kn)
        _writable_cache("v_cache", v_cache, vn)
    lengths = _append(k_cache, v_cache, kn, vn, seqlens, s_new, check_finite)
    q = q.astype(np.float64)
    out = np.empty((b, s_q, h, d))
    lse = np.empty((b, h, s_q))
    for r in range(b):
        L = int(lengths[r])
        kr = np.asarray(k_cache[r, :L], dtype=np.float64)
        vr = np.asarray(v_cache[r, :L], dtype=np.float64)
        out[r], lse[r] = _attend(q[r], kr, vr, scale, causal_mask(s_q, L) if causal else None)
    return (out, lse) if return_lse else out


# ---------------------------------------------------------------------------------------------------------
# split-K: attention over pieces of the keys, merged by log-sum-exp

def merge_lse(outs, lses):
    """Merge attention computed over disjoint pieces of the keys into attention over their union.

    outs (n, ..., s_q, d)-like and lses (n, ...) for n pieces, each normalized over its own keys. With
    lse = log Σ_n exp(lse_n) the union is out = Σ_n exp(lse_n − lse) · out_n. The operator
    (out_a, lse_a) ⊕ (out_b, lse_b) is associative and commutative, with identity (0, −inf): the same
    shape of operator as chapter 4's scan, so pieces can be merged in any grouping. The largest lse is
    subtracted first, so nothing overflows; pieces with lse = −inf (no key) get weight 0.
    ``lses`` must broadcast against ``outs`` with one trailing axis added (the head dimension).
    """
    outs = np.asarray(outs, dtype=np.float64)
    lses = np.asarray(lses, dtype=np.float64)
    m = lses.max(axis=0)
    seen = np.isfinite(m)
    w = np.exp(lses - np.where(seen, m, 0.0))  # (n, ...): 0 for empty pieces
    total = w.sum(axis=0)
    out = (w[..., None] * outs).sum(axis=0) / np.where(seen, total, 1.0)[..., None]
    with np.errstate(divide="ignore"):
        lse = np.where(seen, m + np.log(np.where(seen, total, 1.0)), -np.inf)
    return out, lse


def attention_split(q, k, v, num_splits, *, causal=False, softmax_scale=None, return_lse=False):
    """``attention`` computed as ``num_splits`` pieces of the keys, merged by ``merge_lse`` (split-K).

    Each piece is ordinary attention over keys [j0, j1) with the causal mask of the whole problem; the
    result equals ``attention`` for every ``num_splits`` ≥ 1 (the chapter and the tests check it).
    """
    q = as_array("q", q, ndim=4, complex_ok=False)
    k = as_array("k", k, ndim=4, complex_ok=False)
    v = as_array("v", v, ndim=4, complex_ok=False)
    b, s_q, h, d, s_k, h_k = attention_shape(q.shape, k.shape, v.shape)
    if isinstance(num_splits, (bool, np.bool_)) or not isinstance(num_splits, numbers.Integral) or num_splits < 1:
        raise ValueError(f"num_splits: expected an integer >= 1, got {num_splits!r}")
    scale = scale_of(softmax_scale, d)
    full = causal_mask(s_q, s_k) if causal else np.ones((s_q, s_k), dtype=bool)
    edges = np.linspace(0, s_k, num_splits + 1).round().astype(int)
    outs, lses = [], []
    for j0, j1 in zip(edges[:-1], edges[1:]):
        o = np.empty((b, s_q, h, d))
        lse = np.empty((b, h, s_q))
        for r in range(b):
            o[r], lse[r] = _attend(q[r].astype(np.float64), k[r, j0:j1].astype(np.float64),
                                   v[r, j0:j1].astype(np.float64), scale, full[:, j0:j1])
        outs.append(o)
        lses.append(lse.transpose(0, 2, 1))  # (b, s_q, h) to line up with out (b, s_q, h, d)
    out, lse = merge_lse(outs, lses)
    return (out, lse.transpose(0, 2, 1)) if return_lse else out


# ---------------------------------------------------------------------------------------------------------
# memory, computed rather than quoted

def _itemsize(dtype):
    return 2 if str(dtype) in ("bfloat16", "bf16") else np.dtype(dtype).itemsize


def kv_cache_bytes(layers, kv_heads, head_dim, tokens, dtype="float16", *, batch=1):
    """Bytes of a KV cache: 2 (K and V) · layers · kv_heads · head_dim · tokens · batch · bytes per element.

    >>> kv_cache_bytes(80, 8, 128, 131072) / 2**30   # a 70B-class model with GQA, fp16, 128K tokens: GiB
    40.0
    """
    return 2 * int(layers) * int(kv_heads) * int(head_dim) * int(tokens) * int(batch) * _itemsize(dtype)


def score_matrix_bytes(tokens, dtype="float16", *, heads=1, batch=1):
    """Bytes of the materialized tokens × tokens score matrix, per head (times ``heads`` and ``batch``)."""
    return int(tokens) ** 2 * int(heads) * int(batch) * _itemsize(dtype)
