"""Chapter 6 benchmarks: causal prefill (compute-bound) and decode over a KV cache (memory-bound).

GPU (PERFORMANCE.md): prefill fp16 b1 h32 d128 at L 4096 and 16384 against torch SDPA's TFLOP/s; decode fp16,
GQA 32/8, d128 at b1 cache 32K, b8 cache 32K and b1 cache 128K against copy bandwidth and SDPA. ``gpu`` times
the kernel launches of a call whose arguments were checked once (``gpu.plan``; for decode the two launches
are replayed as one CUDA graph, as a serving loop would, or as one cluster launch where the clusters fit; b1 32K
reads at 89-90% of copy: on the H100, device time, a graph of an empty kernel of decode's grid takes 3.0 us (3.9
with the merge node) and a pure read of the 134 MB in decode's layout 46.2-46.6 us, so a read plus an empty merge
(47.1) leaves 2.4 us under the 90% line (49.5 us) for the math, the block combine and the merge, which take about
2.7 since s15 (49.8-50.1 us; 52.7 before); see flash_decode.cu); ``gpu:api`` times the public
call (``check_finite=False``), whose host-side checks add launch latency; ``gpu:mma.sync`` times the prefill
fallback kernel flash_fwd.cu (the ``gpu`` prefill on the H100 is flash_fwd_sm90.cu). Causal flops are counted as
4·b·h·s_q·s_k·d/2 (the masked half is not work); decode bytes are the K and V read once plus q and out.
CPU: decode against the NumPy reference and torch SDPA on CPU where torch is installed.
"""

from __future__ import annotations

import json

import numpy as np

from benchmarks.core import Case

PREFILL_GOAL = "attention.gpu.attention causal prefill fp16: >= 50% of SDPA's TFLOP/s first; then >= 80%"
DECODE_GOAL = "attention.gpu.attention_with_kvcache decode fp16: >= 90% of copy bandwidth (ahead of SDPA at b1)"
CPU_GOAL = "attention.cpu.attention_with_kvcache decode: at least as fast as torch SDPA on CPU; >= 20x NumPy"


def _prefill_gpu(b, h, L, d, api, fallback=False):
    """``fallback``: flash_fwd.cu (mma.sync, FlashAttention-2 style), the kernel used where flash_fwd_sm90.cu
    (wgmma, the default on the H100) does not apply, timed in the same run for comparison."""
    def setup():
        import cupy as cp

        from refimpl.attention import gpu

        rs = cp.random.RandomState(0)
        q, k, v = (rs.standard_normal((b, L, h, d), dtype=cp.float32).astype(cp.float16) for _ in range(3))
        if api:
            return lambda: gpu.attention(q, k, v, causal=True, check_finite=False)
        on = gpu.F90_CONFIG["F90_ON"]
        gpu.F90_CONFIG["F90_ON"] = 0 if fallback else on
        try:
            return gpu.plan(q, k, v, causal=True)  # the kernel is chosen here, once
        finally:
            gpu.F90_CONFIG["F90_ON"] = on
    return setup


def _sdpa_torch(q_shape, kv_shape, device, **kw):
    """torch SDPA on random (batch, heads, length, d) q and k, v: float16 on the GPU, float32 on the CPU."""
    def setup():
        import torch

        g = torch.Generator(device=device).manual_seed(0)
        dt = torch.float16 if device == "cuda" else torch.float32
        q = torch.randn(q_shape, device=device, dtype=dt, generator=g)
        k, v = (torch.randn(kv_shape, device=device, dtype=dt, generator=g) for _ in range(2))
        F = torch.nn.functional
        return lambda: F.scaled_dot_product_attention(q, k, v, **kw)
    return setup


def _prefill_torch(b, h, L, d):
    return _sdpa_torch((b, h, L, d), (b, h, L, d), "cuda", is_causal=True)


def _decode_gpu(b, h, h_k, d, L, api):
    def setup():
        import cupy as cp

        from refimpl.attention import gpu

        rs = cp.random.RandomState(0)
        q = rs.standard_normal((b, 1, h, d), dtype=cp.float32).astype(cp.float16)
        kc, vc = (rs.standard_normal((b, L, h_k, d), dtype=cp.float32).astype(cp.float16) for _ in range(2))
        if api:
            return lambda: gpu.attention_with_kvcache(q, kc, vc, cache_seqlens=L, check_finite=False)
        return gpu.plan(q, kc, vc, cache_seqlens=L)
    return setup


def _decode_torch(b, h, h_k, d, L, device):
    return _sdpa_torch((b, h, 1, d), (b, h_k, L, d), device, enable_gqa=True)


def _decode_cpu(b, h, h_k, d, L, impl):
    def setup():
        import refimpl.attention as ref
        from refimpl.attention import cpu

        rng = np.random.default_rng(0)
        q = rng.standard_normal((b, 1, h, d), dtype=np.float32)
        kc, vc = (rng.standard_normal((b, L, h_k, d), dtype=np.float32) for _ in range(2))
        mod = cpu if impl == "cpu" else ref
        return lambda: mod.attention_with_kvcache(q, kc, vc, cache_seqlens=L, check_finite=False)
    return setup


def cases(quick: bool) -> list[Case]:
    import os

    cfg = os.environ.get("REFIMPL_ATTENTION_CONFIG", "")
    note = f"kernel config REFIMPL_ATTENTION_CONFIG={cfg}" if cfg else "default kernel config"
    out = []
    d = 128
    for L in ((1024,) if quick else (4096, 16384)):
        b, h = 1, 32
        shape = {"b": b, "h": h, "L": L, "d": d, "causal": 1}
        flops = 4 * b * h * L * L * d / 2
        nbytes = 4 * b * L * h * d * 2
        for impl, setup in (("gpu", _prefill_gpu(b, h, L, d, False)), ("gpu:api", _prefill_gpu(b, h, L, d, True)),
                            ("gpu:mma.sync", _prefill_gpu(b, h, L, d, False, fallback=True)),
                            ("torch.sdpa(gpu)", _prefill_torch(b, h, L, d))):
            out.append(Case("attention", impl, "float16", shape, setup, bytes=nbytes, flops=flops, bound="compute",
                            peer=None if impl.startswith("torch") else "torch.sdpa(gpu)", goal=PREFILL_GOAL,
                            note=note))
    h, h_k = 32, 8
    for b, L in (((1, 4096),) if quick else ((1, 32768), (8, 32768), (1, 131072))):
        shape = {"b": b, "h": h, "h_k": h_k, "d": d, "cache": L}
        nbytes = 2 * b * L * h_k * d * 2 + 2 * b * h * d * 2
        flops = 4 * b * h * L * d
        for impl, setup in (("gpu", _decode_gpu(b, h, h_k, d, L, False)),
                            ("gpu:api", _decode_gpu(b, h, h_k, d, L, True)),
                            ("torch.sdpa(gpu)", _decode_torch(b, h, h_k, d, L, "cuda"))):
            out.append(Case("attention_with_kvcache", impl, "float16", shape, setup, bytes=nbytes, flops=flops,
                            peer=None if impl.startswith("torch") else "torch.sdpa(gpu)", goal=DECODE_GOAL,
                            repeats=50, note=note))
    # CPU decode: b1, GQA 32/8, d128, a 4K (quick: 1K) cache, float32
    L = 1024 if quick else 4096
    shape = {"b": 1, "h": h, "h_k": h_k, "d": d, "cache": L}
    nbytes = 2 * L * h_k * d * 4 + 2 * h * d * 4
    for impl, setup in (("cpu", _decode_cpu(1, h, h_k, d, L, "cpu")), ("numpy", _decode_cpu(1, h, h_k, d, L, "numpy")),
                        ("torch.sdpa", _decode_torch(1, h, h_k, d, L, "cpu"))):
        out.append(Case("attention_with_kvcache", impl, "float32", shape, setup, bytes=nbytes, flops=4 * h * L * d,
                        peer="torch.sdpa" if impl == "cpu" else None, goal=CPU_GOAL))
    return out




FWD_VARIANTS = [{}, {"FWD_FASTEXP": 1}, {"FWD_DBUF": 1}, {"FWD_DBUF": 1, "FWD_FASTEXP": 1}, {"FWD_BN": 32},
                {"FWD_DBUF": 1, "FWD_BN": 32}, {"FWD_WARPS": 8}, {"FWD_WARPS": 8, "FWD_DBUF": 1},
                {"FWD_WARPS": 8, "FWD_DBUF": 1, "FWD_FASTEXP": 1}]
DEC_VARIANTS = [(4, 4), (4, 3), (8, 3), (2, 6), (8, 2), (4, 6)]
DEC_BLOCKS = (1, 2, 3, 4, 6, 8)
# split rules for the fused-merge decode kernel (sweep_decode): the shipped rule, then forced blocks per SM
DEC_RULES = [{}, {"DEC_BLOCKS_PER_SM": 2}, {"DEC_BLOCKS_PER_SM": 3}, {"DEC_FEW_GROUPS_PER_SM": 3},
             {"DEC_BLOCKS_PER_SM": 1}]


def sweep(best_path=None):
    """Tuning on the GPU: every kernel variant is checked against the reference on fresh inputs, then
    timed; the fastest correct configuration is written (JSON, for REFIMPL_ATTENTION_CONFIG) to best_path."""

    import cupy as cp

    import refimpl.attention as ref
    from benchmarks.core import gpu_ceiling, time_gpu
    from refimpl.attention import gpu
    from refimpl.testing import compare

    ceil = gpu_ceiling()
    bw = ceil["copy_bytes_per_s"]
    print(f"copy {bw / 1e9:.0f} GB/s, fp16 matmul {ceil['matmul_flops_per_s'] / 1e12:.0f} TFLOP/s")
    rng = np.random.default_rng(0)
    qs, ks, vs = (rng.standard_normal((2, 300, n, 128)).astype(np.float16) for n in (8, 2, 2))
    want_pre = ref.attention(qs, ks, vs, causal=True)
    qd = rng.standard_normal((3, 1, 8, 128)).astype(np.float16)
    kc, vc = (rng.standard_normal((3, 2000, 2, 128)).astype(np.float16) for _ in range(2))
    lens = np.array([5, 1999, 777])
    want_dec = ref.attention_with_kvcache(qd, kc, vc, cache_seqlens=lens, causal=True)
    rs = cp.random.RandomState(1)
    base_f, base_d = dict(gpu.FWD_CONFIG), dict(gpu.DEC_CONFIG)
    best = {}

    def save(cfg):
        best.update(cfg)
        if best_path:
            with open(best_path, "w") as f:
                json.dump(best, f)

    pre = {L: tuple(rs.standard_normal((1, L, 32, 128), dtype=cp.float32).astype(cp.float16) for _ in range(3))
           for L in (4096, 16384)}
    base_ms, best_score = None, None
    for var in FWD_VARIANTS:
        gpu.FWD_CONFIG.clear()
        gpu.FWD_CONFIG.update(base_f, **var)
        err = compare(gpu.attention(qs, ks, vs, causal=True), want_pre, rtol=5e-3, atol=1e-4)
        line = f"fwd {var}: err {err.rel_l2:.1e} {'ok' if err.passed else 'FAIL'}"
        ms = {}
        for L, (q, k, v) in pre.items():
            ms[L] = time_gpu(gpu.plan(q, k, v, causal=True), repeats=10)
            line += f" | L{L} {ms[L]:.3f} ms {4 * 32 * L * L * 128 / 2 / ms[L] / 1e9:4.0f} TF/s"
        base_ms = base_ms or ms
        score = sum(ms[L] / base_ms[L] for L in ms)
        if err.passed and (best_score is None or score < best_score):
            best_score = score
            save(dict(gpu.FWD_CONFIG))
        print(line, flush=True)
    del pre
    gpu.FWD_CONFIG.clear()
    gpu.FWD_CONFIG.update(base_f)
    shapes = ((1, 32768), (8, 32768), (1, 131072))
    dec = {(b, L): (rs.standard_normal((b, 1, 32, 128), dtype=cp.float32).astype(cp.float16),
                    *(rs.standard_normal((b, L, 8, 128), dtype=cp.float32).astype(cp.float16) for _ in range(2)))
           for b, L in shapes}
    best_min = None
    for unroll, stages in DEC_VARIANTS:
        gpu.DEC_CONFIG.update(DEC_UNROLL=unroll, DEC_STAGES=stages)
        errs = [compare(gpu.attention_with_kvcache(qd, kc, vc, cache_seqlens=lens, causal=True, num_splits=n),
                        want_dec, rtol=5e-3, atol=1e-4) for n in (0, 1, 7)]
        ok = all(e.passed for e in errs)
        print(f"dec unroll {unroll} stages {stages}: err {max(e.rel_l2 for e in errs):.1e} {'ok' if ok else 'FAIL'}",
              flush=True)
        for per_sm in DEC_BLOCKS:
            gpu.DEC_CONFIG["DEC_BLOCKS_PER_SM"] = per_sm
            line, pct = f"  blocks/SM {per_sm}:", []
            for (b, L), (q, k, v) in dec.items():
                ms = time_gpu(gpu.plan(q, k, v, cache_seqlens=L), repeats=30)
                pct.append(100 * 2 * k.nbytes / ms / 1e-3 / bw)
                line += f" b{b} L{L} {1e3 * ms:.0f} us {pct[-1]:.0f}% |"
            print(line, flush=True)
            if ok and (best_min is None or min(pct) > best_min):
                best_min = min(pct)
                save(dict(gpu.DEC_CONFIG))
    gpu.DEC_CONFIG.clear()
    gpu.DEC_CONFIG.update(base_d)
    print("best", json.dumps(best))


def sweep_decode(rules=None):
    """Decode split rules on the GPU (fused merge): each rule is checked against the reference (automatic and
    forced split counts), then the three PERFORMANCE.md decode shapes are timed through ``gpu.plan`` (the
    launch alone) and the public call; % of the copy bandwidth measured in the same run."""
    import cupy as cp

    import refimpl.attention as ref
    from benchmarks.core import gpu_ceiling, time_gpu
    from refimpl.attention import gpu
    from refimpl.testing import compare

    bw = gpu_ceiling()["copy_bytes_per_s"]
    print(f"copy {bw / 1e9:.0f} GB/s", flush=True)
    rng = np.random.default_rng(0)
    qd = rng.standard_normal((3, 1, 8, 128)).astype(np.float16)
    kc, vc = (rng.standard_normal((3, 2000, 2, 128)).astype(np.float16) for _ in range(2))
    lens = np.array([5, 1999, 777])
    want = ref.attention_with_kvcache(qd, kc, vc, cache_seqlens=lens, causal=True)
    rs = cp.random.RandomState(1)
    shapes = ((1, 32768), (8, 32768), (1, 131072))
    dec = {(b, L): (rs.standard_normal((b, 1, 32, 128), dtype=cp.float32).astype(cp.float16),
                    *(rs.standard_normal((b, L, 8, 128), dtype=cp.float32).astype(cp.float16) for _ in range(2)))
           for b, L in shapes}
    base = dict(gpu.DEC_CONFIG)
    for rule in rules or DEC_RULES:
        gpu.DEC_CONFIG.clear()
        gpu.DEC_CONFIG.update(base, **rule)
        errs = [compare(gpu.attention_with_kvcache(qd, kc, vc, cache_seqlens=lens, causal=True, num_splits=n),
                        want, rtol=5e-3, atol=1e-4) for n in (0, 1, 7)]
        line = f"{json.dumps(rule):<52} err {max(e.rel_l2 for e in errs):.1e} {'ok' if all(e.passed for e in errs) else 'FAIL'}"
        for (b, L), (q, k, v) in dec.items():
            splits = gpu._decode_config("f16", b, 1, 32, 8, 128, L, 0, tuple(sorted(gpu.DEC_CONFIG.items())))[2]
            ms = time_gpu(gpu.plan(q, k, v, cache_seqlens=L), repeats=30)
            api = time_gpu(lambda: gpu.attention_with_kvcache(q, k, v, cache_seqlens=L, check_finite=False), repeats=30)
            line += f" | b{b} L{L // 1024}K x{splits} {1e3 * ms:.0f} us {100 * 2 * k.nbytes / ms / 1e-3 / bw:.0f}% api {1e3 * api:.0f}"
        print(line, flush=True)
    gpu.DEC_CONFIG.clear()
    gpu.DEC_CONFIG.update(base)
