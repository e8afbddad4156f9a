"""Chapter 6: attention with a KV cache. Every claim of the chapter is one of these tests.

Ground truth independent of refimpl: a per-row loop with ``scipy.special.logsumexp`` and an explicit mask,
repeated kv heads for GQA, and torch's SDPA where torch is importable. Twins run over the reference, ``cpu``
and ``gpu`` (head dimension 64: the GPU kernels take d in {64, 128}); inputs are rounded to the dtype under
test before the float64 truth is computed, so the comparison measures the kernel, not the rounding of q.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp

import refimpl.attention as ref
from refimpl.testing import assert_close, tolerance
from tests.twins import twins

DTYPES = {"reference": ("float64",), "cpu": ("float32", "float64"), "gpu": ("float16", "float32")}
D = 64


def truth(q, k, v, causal, scale=None):
    """(out, lse) by a plain loop over (batch, head, query): logsumexp over the visible keys only."""
    b, s_q, h, d = q.shape
    s_k, h_k = k.shape[1], k.shape[2]
    scale = 1 / np.sqrt(d) if scale is None else scale
    out = np.zeros((b, s_q, h, d))
    lse = np.full((b, h, s_q), -np.inf)
    for r in range(b):
        for hh in range(h):
            kv = hh // (h // h_k)
            for i in range(s_q):
                n = min(s_k, i + s_k - s_q + 1) if causal else s_k
                if n <= 0:
                    continue
                s = scale * (k[r, :n, kv].astype(np.float64) @ q[r, i, hh].astype(np.float64))
                lse[r, hh, i] = logsumexp(s)
                out[r, i, hh] = np.exp(s - lse[r, hh, i]) @ v[r, :n, kv].astype(np.float64)
    return out, lse


def qkv(rng, b, s_q, s_k, h, h_k, d=D, dtype="float64", scale=1.0):
    q = (scale * rng.standard_normal((b, s_q, h, d))).astype(dtype)
    k = (scale * rng.standard_normal((b, s_k, h_k, d))).astype(dtype)
    v = rng.standard_normal((b, s_k, h_k, d)).astype(dtype)
    return q, k, v


def dev(impl, x):
    """Inputs as the twin takes them: CuPy arrays for the GPU (so caches are updated on the device)."""
    if impl.name == "gpu":
        import cupy as cp

        return cp.asarray(x)
    return x


def poison_gpu_pool():
    """Fill the free blocks of CuPy's memory pool with NaN, so that an output a kernel forgets to write shows."""
    import cupy as cp

    junk = cp.full(1 << 24, cp.nan, dtype=cp.float32)
    del junk


SHAPES = [(6, 6), (4, 9), (9, 4), (1, 13)]  # s_q = s_k, s_q < s_k, s_q > s_k (rows that see no key), decode
GPU_SHAPES = [(80, 80), (40, 150), (150, 40), (1, 333), (3, 700), (130, 129)]  # tensor-core tiles and tails


# ---------------------------------------------------------------------------------------------------------
# the definition

@pytest.mark.parametrize("impl", twins("attention"))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
def test_attention_matches_loop(impl, causal, heads, rng):
    h, h_k = heads
    shapes = SHAPES + (GPU_SHAPES if impl.name == "gpu" else [])
    for dtype in DTYPES[impl.name]:
        for s_q, s_k in shapes:
            q, k, v = qkv(rng, 2, s_q, s_k, h, h_k, dtype=dtype)
            if impl.name == "gpu":
                poison_gpu_pool()
            out, lse = impl.attention(dev(impl, q), dev(impl, k), dev(impl, v), causal=causal, return_lse=True)
            want_out, want_lse = truth(q, k, v, causal)
            assert impl.to_host(out).dtype == (np.float64 if impl.name == "reference" else np.dtype(dtype))
            assert_close(impl.to_host(out), want_out, op="attention", dtype=dtype, name=f"out {s_q}x{s_k}")
            assert_close(impl.to_host(lse), want_lse, op="attention", dtype=dtype, name=f"lse {s_q}x{s_k}")


@pytest.mark.parametrize("impl", twins("attention"))
def test_rows_that_see_no_key_are_zero(impl, rng):
    """s_q > s_k, causal, bottom-right: query i < s_q - s_k sees no key; out is exactly 0 and lse is -inf."""
    for dtype in DTYPES[impl.name]:
        q, k, v = qkv(rng, 1, 7, 3, 2, 2, dtype=dtype)
        out, lse = impl.attention(dev(impl, q), dev(impl, k), dev(impl, v), causal=True, return_lse=True)
        out, lse = impl.to_host(out), impl.to_host(lse)
        assert np.all(out[:, :4] == 0) and np.all(np.isneginf(lse[:, :, :4]))
        assert np.all(np.isfinite(out)) and np.all(np.isfinite(lse[:, :, 4:]))


def test_bottom_right_alignment_and_the_top_left_bug(rng):
    """The newest query of a cache sees every key; a top-left mask (torch.tril) hides the cached ones."""
    np.testing.assert_array_equal(ref.causal_mask(3, 5), np.tril(np.ones((3, 5), bool), k=2))
    np.testing.assert_array_equal(ref.causal_mask(4, 4), ref.causal_mask(4, 4, align="top-left"))
    q, k, v = qkv(rng, 1, 1, 9, 2, 2)
    assert_close(ref.attention(q, k, v, causal=True), ref.attention(q, k, v), op="attention", dtype="float64")
    top_left = ref.causal_mask(1, 9, align="top-left")  # the one new token would see only key 0
    assert top_left.sum() == 1
    S = np.einsum("qhd,khd->hqk", q[0], k[0]) / np.sqrt(D)
    wrong = np.where(top_left, S, -np.inf)
    wrong_out = np.einsum("hqk,khd->qhd", np.exp(wrong - logsumexp(wrong, axis=-1, keepdims=True)), v[0])
    assert np.linalg.norm(wrong_out - ref.attention(q, k, v, causal=True)[0]) > 0.1


def test_gqa_is_attention_over_repeated_kv_heads(rng):
    q, k, v = qkv(rng, 2, 5, 7, 8, 2)
    want = ref.attention(q, np.repeat(k, 4, axis=2), np.repeat(v, 4, axis=2), causal=True)
    assert_close(ref.attention(q, k, v, causal=True), want, op="attention", dtype="float64")


def test_causal_mask_makes_training_parallel(rng):
    """Row i of causal attention over the whole sequence equals attention of token i over its prefix."""
    q, k, v = qkv(rng, 1, 8, 8, 2, 2)
    full = ref.attention(q, k, v, causal=True)
    for i in range(8):
        assert_close(full[:, i], ref.attention(q[:, i:i + 1], k[:, :i + 1], v[:, :i + 1])[:, 0],
                     op="attention", dtype="float64")


def test_softmax_scale(rng):
    q, k, v = qkv(rng, 1, 4, 6, 2, 1)
    assert_close(ref.attention(q, k, v, softmax_scale=0.3), truth(q, k, v, False, scale=0.3)[0],
                 op="attention", dtype="float64")


@pytest.mark.parametrize("impl", twins("attention"))
def test_running_max_rises_across_tiles(impl, rng):
    """Scores that grow along the keys raise the running max in every tile of every kernel, so each
    rescale e^(m - m') of the online softmax is exercised (a kernel that skips it fails here)."""
    for dtype in DTYPES[impl.name]:
        s_k = 700
        q = rng.standard_normal((1, 3, 2, D))
        ramp = np.linspace(0.0, 12.0, s_k)[None, :, None, None]
        k = ramp * q[:, :1, :1] / np.linalg.norm(q[0, 0, 0]) * np.sqrt(np.sqrt(D)) + rng.standard_normal((1, s_k, 1, D))
        q, k = q.astype(dtype), k.astype(dtype)
        v = rng.standard_normal((1, s_k, 1, D)).astype(dtype)
        want = truth(q, k, v, True)[0]
        out = impl.attention(dev(impl, q), dev(impl, k), dev(impl, v), causal=True)
        assert_close(impl.to_host(out), want, op="attention", dtype=dtype)


@pytest.mark.parametrize("impl", twins("attention"))
def test_large_logits_do_not_overflow(impl, rng):
    """Logits of about ±1e3 (exp overflows past 88 in float32, 11 in fp16): subtracting the running max
    keeps every exponent <= 0. The error is that of the logits, ~ |logit| * eps, so rtol scales with it."""
    with np.errstate(over="ignore"):
        assert np.isinf(np.exp(np.float32(1000.0)))  # the naive softmax would overflow
    for dtype in DTYPES[impl.name]:
        q, k, v = qkv(rng, 1, 20, 40, 2, 1, dtype=dtype, scale=np.sqrt(1000.0 / np.sqrt(D)))
        out, lse = impl.attention(dev(impl, q), dev(impl, k), dev(impl, v), softmax_scale=1.0, causal=True,
                                  return_lse=True)
        want_out, want_lse = truth(q, k, v, True, scale=1.0)
        assert np.abs(want_lse).max() > 500
        out, lse = impl.to_host(out), impl.to_host(lse)
        assert np.isfinite(out).all() and np.isfinite(lse).all()
        eps = np.finfo(np.float32 if dtype == "float16" else dtype).eps
        rtol = max(tolerance("attention", dtype)[0], 1e3 * 8 * eps)
        assert_close(out, want_out, op="attention", dtype=dtype, rtol=rtol)
        assert_close(lse, want_lse, op="attention", dtype=dtype, rtol=rtol)


def test_split_results_merge_by_logsumexp(rng):
    """Split-K: attention over pieces of the keys, merged by lse, is attention; for any number of pieces."""
    q, k, v = qkv(rng, 2, 5, 11, 4, 2)
    want, want_lse = ref.attention(q, k, v, causal=True, return_lse=True)
    for n in (1, 2, 3, 5, 11):
        out, lse = ref.attention_split(q, k, v, n, causal=True, return_lse=True)
        assert_close(out, want, op="attention", dtype="float64")
        assert_close(lse, want_lse, op="attention", dtype="float64")


def test_merge_is_associative_with_identity(rng):
    o = rng.standard_normal((3, 4, 6))
    lse = rng.standard_normal((3, 4)) * 5
    def op(a, b):
        return ref.merge_lse(np.stack([a[0], b[0]]), np.stack([a[1], b[1]]))
    a, b, c = ((o[i], lse[i]) for i in range(3))
    left, right = op(op(a, b), c), op(a, op(b, c))
    assert_close(left[0], right[0], op="attention", dtype="float64")
    assert_close(left[1], right[1], op="attention", dtype="float64")
    ident = (np.zeros_like(o[0]), np.full_like(lse[0], -np.inf))
    assert_close(op(a, ident)[0], a[0], op="attention", dtype="float64")
    assert_close(op(ident, ident)[0], ident[0], op="attention", dtype="float64")


# ---------------------------------------------------------------------------------------------------------
# the KV cache

def empty_cache(impl, b, s_cache, h_k, dtype):
    """Caches whose unfilled tail is NaN: a kernel that reads past cache_seqlens + s_new returns NaN."""
    kc = np.full((b, s_cache, h_k, D), np.nan, dtype=dtype)
    return dev(impl, kc), dev(impl, kc.copy())


@pytest.mark.parametrize("impl", twins("attention"))
@pytest.mark.parametrize("heads", [(4, 2), (2, 2)], ids=["gqa", "mha"])
def test_prefill_then_decode_equals_causal_attention(impl, heads, rng):
    h, h_k = heads
    n, prefill = (60, 40) if impl.name == "gpu" else (12, 5)
    for dtype in DTYPES[impl.name]:
        q, k, v = qkv(rng, 2, n, n, h, h_k, dtype=dtype)
        kc, vc = empty_cache(impl, 2, n + 7, h_k, dtype)
        outs = [impl.attention_with_kvcache(dev(impl, q[:, :prefill]), kc, vc, dev(impl, k[:, :prefill]),
                                            dev(impl, v[:, :prefill]), cache_seqlens=0, causal=True)]
        for t in range(prefill, n):
            outs.append(impl.attention_with_kvcache(dev(impl, q[:, t:t + 1]), kc, vc, dev(impl, k[:, t:t + 1]),
                                                    dev(impl, v[:, t:t + 1]), cache_seqlens=t, causal=True))
        got = np.concatenate([impl.to_host(o) for o in outs], axis=1)
        assert_close(got, truth(q, k, v, True)[0], op="attention_with_kvcache", dtype=dtype)
        np.testing.assert_array_equal(impl.to_host(kc)[:, :n], k)  # the cache holds exactly what was written
        assert np.isnan(impl.to_host(vc)[:, n:]).all()  # and nothing past it


@pytest.mark.parametrize("impl", twins("attention"))
def test_per_row_cache_seqlens(impl, rng):
    """Each batch row attends to its own key count; the causal mask aligns to that count."""
    b, s_cache, h, h_k = 3, 50, 4, 2
    lens = np.array([0, 17, 41])
    s_new, s_q = 3, (20 if impl.name == "gpu" else 3)
    for dtype in DTYPES[impl.name]:
        kc_h = rng.standard_normal((b, s_cache, h_k, D)).astype(dtype)
        vc_h = rng.standard_normal((b, s_cache, h_k, D)).astype(dtype)
        q = rng.standard_normal((b, s_q, h, D)).astype(dtype)
        kn, vn = (rng.standard_normal((b, s_new, h_k, D)).astype(dtype) for _ in range(2))
        for causal in (False, True):
            kc, vc = dev(impl, kc_h.copy()), dev(impl, vc_h.copy())
            out, lse = impl.attention_with_kvcache(dev(impl, q), kc, vc, dev(impl, kn), dev(impl, vn),
                                                   cache_seqlens=lens, causal=causal, return_lse=True)
            for r in range(b):
                L = lens[r] + s_new
                keys = np.concatenate([kc_h[r, :lens[r]], kn[r]])[None]
                vals = np.concatenate([vc_h[r, :lens[r]], vn[r]])[None]
                w_out, w_lse = truth(q[r:r + 1], keys, vals, causal)
                assert_close(impl.to_host(out)[r:r + 1], w_out, op="attention_with_kvcache", dtype=dtype,
                             name=f"row {r} (L = {L})")
                assert_close(impl.to_host(lse)[r:r + 1], w_lse, op="attention_with_kvcache", dtype=dtype)


@pytest.mark.parametrize("impl", twins("attention"))
def test_independent_of_allocated_cache_length(impl, rng):
    for dtype in DTYPES[impl.name]:
        q, k, v = qkv(rng, 2, 1, 30, 4, 2, dtype=dtype)
        outs = []
        for s_cache in (30, 31, 64, 300):
            kc, vc = (np.full((2, s_cache, 2, D), np.nan, dtype=dtype) for _ in range(2))
            kc[:, :30], vc[:, :30] = k, v
            outs.append(impl.to_host(impl.attention_with_kvcache(dev(impl, q), dev(impl, kc), dev(impl, vc),
                                                                 cache_seqlens=30)))
        for o in outs:
            assert_close(o, truth(q, k, v, False)[0], op="attention_with_kvcache", dtype=dtype)


@pytest.mark.parametrize("impl", twins("attention", names=("cpu", "gpu")))
def test_independent_of_split_count(impl, rng):
    """Split-K (pieces of the keys merged by log-sum-exp) gives the same function for any piece count."""
    for dtype in DTYPES[impl.name]:
        for s_q, causal in ((1, False), (4, True), (33, True)):
            q, k, v = qkv(rng, 2, s_q, 1000, 8, 2, dtype=dtype)
            want = truth(q, k, v, causal)[0]
            for n in (1, 2, 3, 7, 64, 1000, 5000):
                if impl.name == "gpu":
                    poison_gpu_pool()
                out = impl.attention(dev(impl, q), dev(impl, k), dev(impl, v), causal=causal, num_splits=n)
                assert_close(impl.to_host(out), want, op="attention", dtype=dtype, name=f"num_splits {n}")


@pytest.mark.parametrize("impl", twins("attention"))
def test_new_keys_are_written_in_place(impl, rng):
    dtype = DTYPES[impl.name][0]
    kc_h = rng.standard_normal((2, 10, 2, D)).astype(dtype)
    vc_h = rng.standard_normal((2, 10, 2, D)).astype(dtype)
    kn, vn = (rng.standard_normal((2, 3, 2, D)).astype(dtype) for _ in range(2))
    q = rng.standard_normal((2, 1, 4, D)).astype(dtype)
    kc, vc = dev(impl, kc_h.copy()), dev(impl, vc_h.copy())
    impl.attention_with_kvcache(dev(impl, q), kc, vc, dev(impl, kn), dev(impl, vn), cache_seqlens=[2, 7])
    want_k, want_v = kc_h.copy(), vc_h.copy()
    want_k[0, 2:5], want_v[0, 2:5], want_k[1, 7:10], want_v[1, 7:10] = kn[0], vn[0], kn[1], vn[1]
    np.testing.assert_array_equal(impl.to_host(kc), want_k)
    np.testing.assert_array_equal(impl.to_host(vc), want_v)


@pytest.mark.parametrize("impl", twins("attention"))
def test_writing_past_the_cache_raises_and_writes_nothing(impl, rng):
    dtype = DTYPES[impl.name][0]
    kc_h = rng.standard_normal((2, 10, 2, D)).astype(dtype)
    kn = rng.standard_normal((2, 3, 2, D)).astype(dtype)
    q = rng.standard_normal((2, 1, 4, D)).astype(dtype)
    for seqlens in (8, [2, 8], 10):  # row 0 would fit in the second case: still nothing is written
        kc, vc = dev(impl, kc_h.copy()), dev(impl, kc_h.copy())
        with pytest.raises(ValueError, match="cache_seqlens"):
            impl.attention_with_kvcache(dev(impl, q), kc, vc, dev(impl, kn), dev(impl, kn), cache_seqlens=seqlens)
        np.testing.assert_array_equal(impl.to_host(kc), kc_h)
        np.testing.assert_array_equal(impl.to_host(vc), kc_h)


def test_float16_cache_in_the_reference(rng):
    """The reference writes new keys in the cache's dtype and attends to what the cache then holds."""
    kc = np.zeros((1, 6, 1, 8), dtype=np.float16)
    vc = np.zeros_like(kc)
    kn, vn = rng.standard_normal((2, 1, 6, 1, 8))
    q = rng.standard_normal((1, 2, 2, 8))
    out = ref.attention_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=0, causal=True)
    np.testing.assert_array_equal(kc, kn.astype(np.float16))
    assert_close(out, truth(q, kn.astype(np.float16), vn.astype(np.float16), True)[0],
                 op="attention_with_kvcache", dtype="float64")
    with pytest.raises(ValueError, match="k_cache"):  # 1e5 does not fit in float16
        ref.attention_with_kvcache(q, kc, vc, kn * 1e5, vn, cache_seqlens=0)


# ---------------------------------------------------------------------------------------------------------
# bad input

@pytest.mark.parametrize("impl", twins("attention"))
def test_bad_input(impl, rng):
    dtype = DTYPES[impl.name][-1]
    q, k, v = qkv(rng, 1, 2, 3, 4, 2, dtype=dtype)
    q, k, v = dev(impl, q), dev(impl, k), dev(impl, v)
    with pytest.raises(ValueError, match="h_k"):
        impl.attention(q, k[:, :, :1].repeat(3, axis=2), v[:, :, :1].repeat(3, axis=2))
    with pytest.raises(ValueError, match="^q"):
        impl.attention(q[0], k, v)
    with pytest.raises(ValueError, match="^v"):
        impl.attention(q, k, v[:, :2])
    bad = impl.to_host(q).copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        impl.attention(dev(impl, bad), k, v)
    with pytest.raises(ValueError, match="softmax_scale"):
        impl.attention(q, k, v, softmax_scale=float("inf"))
    kc, vc = dev(impl, np.zeros((1, 5, 2, D), dtype)), dev(impl, np.zeros((1, 5, 2, D), dtype))
    with pytest.raises(ValueError, match="k, v"):
        impl.attention_with_kvcache(q, kc, vc, k)
    with pytest.raises(ValueError, match="cache_seqlens"):
        impl.attention_with_kvcache(q, kc, vc, cache_seqlens=6)
    with pytest.raises(ValueError, match="cache_seqlens"):
        impl.attention_with_kvcache(q, kc, vc, cache_seqlens=[1, 2])
    with pytest.raises(ValueError, match="^k:"):
        impl.attention_with_kvcache(q, kc, vc, k[:, :, :1], v[:, :, :1], cache_seqlens=0)


def test_reference_cache_must_be_writable(rng):
    q, k, v = qkv(rng, 1, 1, 2, 2, 2)
    kc = np.zeros((1, 4, 2, D))
    kc.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        ref.attention_with_kvcache(q, kc, np.zeros_like(kc), k, v, cache_seqlens=0)
    with pytest.raises(TypeError, match="k_cache"):
        ref.attention_with_kvcache(q, list(np.zeros((1, 4, 2, D))), np.zeros((1, 4, 2, D)), k, v, cache_seqlens=0)


# ---------------------------------------------------------------------------------------------------------
# memory, computed

def test_memory_figures():
    gib = 2**30
    assert ref.kv_cache_bytes(80, 8, 128, 1) == 327_680  # 320 KiB per token with GQA (8 kv heads)
    assert ref.kv_cache_bytes(80, 8, 128, 131072) == 40 * gib  # 42.9 GB at 128K tokens
    assert ref.kv_cache_bytes(80, 64, 128, 131072) == 320 * gib  # 343.6 GB without GQA (64 kv heads)
    assert 131072**2 == 17_179_869_184  # ≈ 1.7e10 scores per head
    assert ref.score_matrix_bytes(131072) == 34_359_738_368  # 34.4 GB = 32 GiB in fp16, per head and layer
    assert ref.kv_cache_bytes(1, 1, 1, 1, "bfloat16") == 4


# ---------------------------------------------------------------------------------------------------------
# peers

def test_cross_check_with_torch_sdpa(rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    for s_q, s_k in ((6, 6), (3, 9)):
        q, k, v = qkv(rng, 2, s_q, s_k, 4, 2)
        t = [torch.from_numpy(a).transpose(1, 2) for a in (q, np.repeat(k, 2, 2), np.repeat(v, 2, 2))]
        mask = torch.from_numpy(ref.causal_mask(s_q, s_k))
        want = F.scaled_dot_product_attention(*t, attn_mask=mask).transpose(1, 2).numpy()
        assert_close(ref.attention(q, k, v, causal=True), want, op="attention", dtype="float64")
        if s_q < s_k:  # torch's is_causal=True aligns top-left: a different function when s_q != s_k
            tl = F.scaled_dot_product_attention(*t, is_causal=True).transpose(1, 2).numpy()
            assert np.linalg.norm(tl - want) > 0.1


@pytest.mark.gpu
def test_gpu_cross_check_with_torch_sdpa_fp16(rng):
    torch = pytest.importorskip("torch")
    gpu = pytest.importorskip("refimpl.attention.gpu")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    q, k, v = qkv(rng, 1, 300, 300, 8, 2, d=128, dtype="float16")
    t = [torch.from_numpy(a).cuda().transpose(1, 2) for a in (q, np.repeat(k, 4, 2), np.repeat(v, 4, 2))]
    want = torch.nn.functional.scaled_dot_product_attention(*t, is_causal=True).transpose(1, 2)
    ours = gpu.attention(q, k, v, causal=True)
    assert_close(ours, want.float().cpu().numpy(), op="attention", dtype="float16")
    assert_close(ours, truth(q, k, v, True)[0], op="attention", dtype="float16")


@pytest.mark.gpu
@pytest.mark.parametrize("d", [128, 64])
def test_gpu_float16_prefill_kernels(d, rng):
    """The float16 prefill kernel (flash_fwd_sm90.cu, wgmma, on a device of compute capability 9.0; flash_fwd.cu
    elsewhere) at d = 128 and 64: s_q = s_k, s_q < s_k and s_q > s_k (rows that see no key), lengths that are no
    multiple of the 128-row tiles, MHA, GQA and MQA, two batch rows; then a cache whose rows hold different key
    counts (NaN past them) with 200 new keys each. Fresh pool poisoned with NaN before every call."""
    import cupy as cp

    gpu = pytest.importorskip("refimpl.attention.gpu")
    for causal in (True, False):
        for s_q, s_k, h, h_k in ((130, 130, 4, 4), (40, 300, 8, 2), (300, 40, 8, 2), (257, 1000, 4, 1),
                                 (1000, 257, 8, 2)):
            q, k, v = qkv(rng, 2, s_q, s_k, h, h_k, d=d, dtype="float16")
            poison_gpu_pool()
            out, lse = gpu.attention(q, k, v, causal=causal, return_lse=True)
            want_out, want_lse = truth(q, k, v, causal)
            name = f"{s_q}x{s_k} h {h}/{h_k} causal {causal}"
            assert_close(out.get(), want_out, op="attention", dtype="float16", name=f"out {name}")
            assert_close(lse.get(), want_lse, op="attention", dtype="float16", name=f"lse {name}")
    lens, s_new, h, h_k = np.array([0, 300, 997]), 200, 8, 2
    kc = np.full((3, 1300, h_k, d), np.nan, dtype=np.float16)
    vc = kc.copy()
    for r in range(3):
        kc[r, :lens[r]], vc[r, :lens[r]] = (rng.standard_normal((lens[r], h_k, d)) for _ in range(2))
    q, kn, vn = qkv(rng, 3, s_new, s_new, h, h_k, d=d, dtype="float16")
    for causal in (True, False):
        poison_gpu_pool()
        out = gpu.attention_with_kvcache(q, cp.asarray(kc), cp.asarray(vc), kn, vn, cache_seqlens=lens,
                                         causal=causal).get()
        for r in range(3):
            keys, vals = (np.concatenate([c[r, :lens[r]], n[r]])[None] for c, n in ((kc, kn), (vc, vn)))
            assert_close(out[r:r + 1], truth(q[r:r + 1], keys, vals, causal)[0], op="attention_with_kvcache",
                         dtype="float16", name=f"cache row {r} (L = {lens[r] + s_new}) causal {causal}")


@pytest.mark.gpu
def test_gpu_decode_merge_is_deterministic(rng):
    """The last block of each group merges the pieces in a fixed order: repeated calls agree bit for bit (and
    the per-group counters are back at zero after every call, or the second call would merge too early)."""
    gpu = pytest.importorskip("refimpl.attention.gpu")
    q, k, v = qkv(rng, 3, 1, 3000, 32, 8, d=128, dtype="float16")
    lens = np.array([3000, 1, 1777])
    for n in (0, 37, 3000):
        runs = [gpu.attention_with_kvcache(q, k, v, cache_seqlens=lens, num_splits=n, return_lse=True)
                for _ in range(3)]
        outs = [(o.get(), l.get()) for o, l in runs]
        for o, l in outs[1:]:
            np.testing.assert_array_equal(o, outs[0][0])
            np.testing.assert_array_equal(l, outs[0][1])
        for r in range(3):
            want, want_lse = truth(q[r:r + 1], k[r:r + 1, :lens[r]], v[r:r + 1, :lens[r]], False)
            assert_close(outs[0][0][r:r + 1], want, op="attention_with_kvcache", dtype="float16",
                         name=f"num_splits {n} row {r}")
            assert_close(outs[0][1][r:r + 1], want_lse, op="attention_with_kvcache", dtype="float16",
                         name=f"lse, num_splits {n} row {r}")


@pytest.mark.gpu
def test_gpu_decode_plan_matches_the_call(rng):
    """gpu.plan's packed launches (the merge launched early, PDL) give the public call's result bit for bit, on
    GQA, MQA, two query rows per group, per-row lengths that are not a multiple of the 16-key tile, and forced
    split counts; the output is poisoned between the plan's calls."""
    import cupy as cp

    gpu = pytest.importorskip("refimpl.attention.gpu")
    for b, s_q, h, h_k, d, lens in ((2, 1, 32, 8, 128, [2000, 777]), (2, 1, 8, 1, 128, [1500, 1500]),
                                    (3, 2, 8, 2, 64, [1, 999, 333]), (1, 1, 4, 4, 128, [4099])):
        q, k, v = qkv(rng, b, s_q, max(lens), h, h_k, d=d, dtype="float16")
        qd, kd, vd = cp.asarray(q), cp.asarray(k), cp.asarray(v)
        for n in (0, 7):
            run = gpu.plan(qd, kd, vd, cache_seqlens=lens, causal=True, num_splits=n)
            run().fill(cp.nan)
            got = run().get()
            call = gpu.attention_with_kvcache(qd, kd, vd, cache_seqlens=lens, causal=True, num_splits=n).get()
            np.testing.assert_array_equal(got, call)
            for r in range(b):
                want = truth(q[r:r + 1], k[r:r + 1, :lens[r]], v[r:r + 1, :lens[r]], True)[0]
                assert_close(got[r:r + 1], want, op="attention_with_kvcache", dtype="float16",
                             name=f"b{b} h{h}/{h_k} s_q {s_q} num_splits {n} row {r}")


@pytest.mark.gpu
@pytest.mark.parametrize("merge,pdl", [(1, 0), (0, 1), (0, 0)], ids=["last_block", "launch-pdl", "launch-no_pdl"])
def test_gpu_decode_merge_waits_for_its_pieces(merge, pdl, rng, monkeypatch):
    """decode_tc without clusters: every block writes its piece to the workspace and counts itself; the merge
    reads the pieces only after all of its group's are written, whether the group's last block does it (one
    launch, the default) or a second launch, started early (PDL) or not, whose block waits on the counter. With
    the workspace poisoned (NaN) before every call and fresh keys on every step, each result matches the
    reference: no merge read a piece before it was written, and after every call every counter is back at 0 (a
    stale count would let the next merge start at once, on the poison). Through the plan (a graph) and the call."""
    import cupy as cp

    gpu = pytest.importorskip("refimpl.attention.gpu")
    monkeypatch.setitem(gpu.DEC_CONFIG, "DEC_TC_MERGE", merge)
    monkeypatch.setitem(gpu.DEC_CONFIG, "DEC_PDL", pdl)
    monkeypatch.setitem(gpu.DEC_CONFIG, "DEC_TC_CLUSTER", 0)
    b, h, h_k, d, s_cache, lens = 2, 32, 8, 128, 5000, [5000, 2345]
    qd = cp.empty((b, 1, h, d), dtype=cp.float16)
    kc, vc = cp.empty((b, s_cache, h_k, d), dtype=cp.float16), cp.empty((b, s_cache, h_k, d), dtype=cp.float16)
    cfg = gpu._decode_config("f16", b, 1, h, h_k, d, max(lens), 0, tuple(sorted(gpu.DEC_CONFIG.items())))
    assert cfg[-1] == 0 and (cfg[6] is None) == bool(merge), "one launch exactly when the last block merges"
    run = gpu.plan(qd, kc, vc, cache_seqlens=lens)
    key = (cp.cuda.Device().id, cp.cuda.get_current_stream().ptr)
    for step in range(3):
        q, k, v = qkv(rng, b, 1, s_cache, h, h_k, d=d, dtype="float16")
        qd[...], kc[...], vc[...] = cp.asarray(q), cp.asarray(k), cp.asarray(v)
        for name, fn in (("plan", run), ("call", lambda: gpu.attention_with_kvcache(qd, kc, vc, cache_seqlens=lens))):
            for work, _ in gpu._SCRATCH.values():
                work.fill(cp.nan)
            got = fn().get()
            for r in range(b):
                want = truth(q[r:r + 1], k[r:r + 1, :lens[r]], v[r:r + 1, :lens[r]], False)[0]
                assert_close(got[r:r + 1], want, op="attention_with_kvcache", dtype="float16",
                             name=f"{name} step {step} row {r} merge {merge} pdl {pdl}")
            assert int(cp.count_nonzero(gpu._SCRATCH[key][1])) == 0, "a counter was left non-zero"


@pytest.mark.gpu
@pytest.mark.parametrize("d", [128, 64])
def test_gpu_decode_cluster_merge(d, rng):
    """On compute capability 9.0, decode_tc runs each (batch row, kv head) group as one cluster of its blocks
    (2 to 16) where the clusters all fit at once, and the leader merges the pieces in its shared memory (no
    second launch); elsewhere the merge launch does it. Against the reference: GQA and MQA, one and two query
    rows per group, causal, per-row lengths (rows of one key: most blocks see none), NaN in the cache past every
    row's length, automatic and forced split counts, the output pool poisoned before every call; repeated calls
    agree bit for bit, and so do the plan (a graph) and the call. At least four of the cases take the cluster
    path (asserted); with automatic splits the cluster may be smaller than the split rule's count (the largest
    that fits), or the merge launch may do it."""
    import cupy as cp

    gpu = pytest.importorskip("refimpl.attention.gpu")
    if cp.cuda.Device().compute_capability < "90":
        pytest.skip("thread-block clusters need compute capability 9.0 (this device has "
                    f"{cp.cuda.Device().compute_capability})")
    cases = [(8, 1, 32, 8, [3000, 1, 2999, 17, 1500, 3000, 64, 2048], 0), (1, 1, 32, 8, [6000], 8),
             (3, 2, 8, 2, [1, 999, 4000], 5), (2, 1, 8, 1, [3000, 3000], 16), (1, 1, 16, 4, [777], 2),
             (2, 1, 32, 8, [5000, 2345], 0)]
    took = 0
    for b, s_q, h, h_k, lens, n in cases:
        s_cache = max(lens) + 37
        q, k, v = qkv(rng, b, s_q, s_cache, h, h_k, d=d, dtype="float16")
        for r in range(b):
            k[r, lens[r]:] = np.nan
            v[r, lens[r]:] = np.nan
        qd, kd, vd = cp.asarray(q), cp.asarray(k), cp.asarray(v)
        cfg = gpu._decode_config("f16", b, s_q, h, h_k, d, max(lens), n, tuple(sorted(gpu.DEC_CONFIG.items())))
        took += cfg[-1] > 0
        assert cfg[-1] in (0, cfg[2])
        print(f"b{b} h{h}/{h_k} d{d} num_splits {n}: {cfg[2]} splits, cluster {cfg[-1]}")
        for causal in (False, True):
            poison_gpu_pool()
            out, lse = gpu.attention_with_kvcache(qd, kd, vd, cache_seqlens=lens, causal=causal, num_splits=n,
                                                  return_lse=True, check_finite=False)
            again = gpu.attention_with_kvcache(qd, kd, vd, cache_seqlens=lens, causal=causal, num_splits=n,
                                               check_finite=False)
            run = gpu.plan(qd, kd, vd, cache_seqlens=lens, causal=causal, num_splits=n)
            run().fill(cp.nan)
            np.testing.assert_array_equal(again.get(), out.get())
            np.testing.assert_array_equal(run().get(), out.get())
            for r in range(b):
                want, want_lse = truth(q[r:r + 1], k[r:r + 1, :lens[r]], v[r:r + 1, :lens[r]], causal)
                name = f"b{b} s_q {s_q} h{h}/{h_k} d{d} num_splits {n} (cluster {cfg[-1]}) causal {causal} row {r}"
                assert_close(out.get()[r:r + 1], want, op="attention_with_kvcache", dtype="float16", name=name)
                assert_close(lse.get()[r:r + 1], want_lse, op="attention_with_kvcache", dtype="float16",
                             name="lse " + name)
    assert took >= 4, f"only {took} of {len(cases)} cases took the cluster path"


@pytest.mark.gpu
def test_gpu_decode_big_ring_stays_out_of_clusters(rng, monkeypatch):
    """A tuning override whose ring leaves no room for the cluster slots (DEC_TC_STAGES 3: 192 KB, plus 16
    pieces of 8 rows) merges without clusters instead of asking for more shared memory than a block may have
    (it raised CUDA_ERROR_INVALID_VALUE before s16), and still agrees with the reference."""
    import cupy as cp

    gpu = pytest.importorskip("refimpl.attention.gpu")
    monkeypatch.setitem(gpu.DEC_CONFIG, "DEC_TC_STAGES", 3)
    b, h, h_k, d, lens = 1, 32, 8, 128, [3000]
    q, k, v = qkv(rng, b, 1, lens[0], h, h_k, d=d, dtype="float16")
    cfg = gpu._decode_config("f16", b, 1, h, h_k, d, lens[0], 0, tuple(sorted(gpu.DEC_CONFIG.items())))
    assert cfg[4] + cfg[2] * 8 * (d + 2) * 4 > gpu._smem_optin(), "the case must not leave room for the slots"
    assert cfg[-1] == 0, "no cluster launch"
    poison_gpu_pool()
    out = gpu.attention_with_kvcache(cp.asarray(q), cp.asarray(k), cp.asarray(v), cache_seqlens=lens).get()
    assert_close(out, truth(q, k, v, False)[0], op="attention_with_kvcache", dtype="float16", name="3 stages")


@pytest.mark.gpu
@pytest.mark.parametrize("merge", [1, 0])
def test_gpu_decode_ring_is_aligned(merge, monkeypatch):
    """The decode kernels' dynamic shared memory (their cp.async ring) starts past their static variables, so it
    is 1024-byte aligned only if the static part is a multiple of 1024 bytes (dec_ring's __align__). With 80
    bytes there, as before s17, every row of copies spanned one more 128-byte line and decode_tc streamed 15 %
    slower on the H100. Checked on the compiled kernels: decode_tc (with and without the last block's merge, which
    declares a static variable), decode_tc_cl and every decode_split."""
    gpu = pytest.importorskip("refimpl.attention.gpu")
    monkeypatch.setitem(gpu.DEC_CONFIG, "DEC_TC_MERGE", merge)
    names = [f"decode_tc_d{d}" for d in (64, 128)] + [f"decode_tc_cl_d{d}" for d in (64, 128)]
    names += [f"decode_{t}_d{d}_r{r}" for t in ("f16", "f32") for d in (64, 128) for r in (1, 2, 4, 8)]
    for name in names:
        fn = gpu._kernel(gpu._DEC, name, gpu.DEC_CONFIG, 0)
        static = int(fn.shared_size_bytes)
        assert static % 1024 == 0, f"{name}: {static} bytes of static shared memory put the ring off 1024 bytes"


@pytest.mark.gpu
def test_gpu_64bit_offsets(rng):
    """A cache of more than 2^31 elements: row 1 starts past 2^31, which 32-bit offsets would wrap."""
    import cupy as cp

    gpu = pytest.importorskip("refimpl.attention.gpu")
    s_cache, h_k, d = (1 << 21) + 64, 8, 128
    assert s_cache * h_k * d > 2**31
    kc = cp.empty((2, s_cache, h_k, d), dtype=cp.float16)
    vc = cp.empty_like(kc)
    lens = np.array([100, 300])
    k = rng.standard_normal((2, 300, h_k, d)).astype(np.float16)
    v = rng.standard_normal((2, 300, h_k, d)).astype(np.float16)
    kc[:, :300], vc[:, :300] = cp.asarray(k), cp.asarray(v)
    kc[:, -16:] = cp.nan  # near the end of the allocation: a wrapped offset would land somewhere else
    for s_q in (1, 40):
        q = rng.standard_normal((2, s_q, 32, d)).astype(np.float16)
        out = gpu.attention_with_kvcache(q, kc, vc, cache_seqlens=lens, causal=True, check_finite=False).get()
        for r in range(2):
            want = truth(q[r:r + 1], k[r:r + 1, :lens[r]], v[r:r + 1, :lens[r]], True)[0]
            assert_close(out[r:r + 1], want, op="attention_with_kvcache", dtype="float16", name=f"s_q {s_q} row {r}")
    del kc, vc
