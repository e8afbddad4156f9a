"""Chapter 5 benchmarks: ssd (the chunked SSD algorithm of Mamba-2).

GPU: ``refimpl.ssd.gpu.ssd`` fp16 in / fp32 accumulate at h64 p64 n128 g1 chunk 256, b4 l8192 and b1 l65536,
against (a) mamba_ssm's ``mamba_chunk_scan_combined`` (Triton) where installed - it is not on the device
machine, so its PERFORMANCE.md figures (1.669 ms / 3.060 ms on the same H100 model) are quoted in the note -
and (b) the minimal SSD of the Mamba-2 paper's listing as PyTorch einsums in float32 (restated below).
CPU: ``refimpl.ssd.cpu.ssd`` float32 against the NumPy reference and the same einsum listing on PyTorch CPU.
"""

from __future__ import annotations

import numpy as np

from benchmarks.core import Case

GOAL_GPU = ("gpu ssd fp16, h64 p64 n128 g1 chunk 256: <= 2x mamba_chunk_scan_combined first, then at or under it "
            "(PERFORMANCE.md: 1.669 ms at b4 l8192, 3.060 ms at b1 l65536 on H100)")
GOAL_CPU = "cpu ssd: >= 20x the NumPy reference; >= 2x ssd_minimal_discrete on PyTorch CPU (PERFORMANCE.md)"
MAMBA_MS = {8192: 1.669, 65536: 3.060}  # PERFORMANCE.md, bf16, measured on an H100 80GB HBM3


def torch_ssd_minimal(x, dt, A, B, C, chunk_size):
    """The minimal SSD of Dao & Gu (2024), Listing 1, restated with PyTorch einsums (float32).

    x (b, l, h, p), dt (b, l, h), A (h,), B, C (b, l, h, n) (groups already expanded); l % chunk_size == 0.
    Returns y (b, l, h, p) and the final state. The four steps as in ``refimpl.ssd.ssd_chunked``; the
    segment sums use the masked-cumsum form (stable), the chunk-end decays the cumsum difference, as published.
    """
    import torch

    b, l, h, p = x.shape
    n = B.shape[-1]
    c, Q = l // chunk_size, chunk_size
    X = (x * dt[..., None]).reshape(b, c, Q, h, p)
    a = (dt * A).reshape(b, c, Q, h).permute(0, 3, 1, 2)          # (b, h, c, Q)
    Bc, Cc = B.reshape(b, c, Q, h, n), C.reshape(b, c, Q, h, n)

    def segsum(v):
        T = v.shape[-1]
        v = v[..., None].expand(*v.shape, T)
        v = v.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool, device=v.device), -1), 0)
        s = torch.cumsum(v, dim=-2)
        return s.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool, device=v.device)), -torch.inf)

    a_cum = torch.cumsum(a, dim=-1)
    L = torch.exp(segsum(a))
    Y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", Cc, Bc, L, X)
    decay_states = torch.exp(a_cum[..., -1:] - a_cum)
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bc, decay_states, X)
    states = torch.cat([torch.zeros_like(states[:, :1]), states], dim=1)
    decay_chunk = torch.exp(segsum(torch.nn.functional.pad(a_cum[..., -1], (1, 0))))
    new_states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    states, final = new_states[:, :-1], new_states[:, -1]
    Y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, states, torch.exp(a_cum))
    return (Y_diag + Y_off).reshape(b, l, h, p), final


def _inputs(b, l, h, p, g, n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, l, h, p), dtype=np.float32)
    dt = np.log1p(np.exp(rng.standard_normal((b, l, h), dtype=np.float32) - 1.0))
    A = -np.linspace(0.5, 4.0, h, dtype=np.float32)
    B = rng.standard_normal((b, l, g, n), dtype=np.float32) / np.float32(np.sqrt(n))
    C = rng.standard_normal((b, l, g, n), dtype=np.float32)
    return x, dt, A, B, C


def _counts(b, l, h, p, g, n, Q, xbytes):
    flops = 2.0 * b * l * Q * g * n / 2 + 2.0 * b * l * Q * h * p / 2 + 2 * 2.0 * b * l * h * p * n
    nbytes = 2.0 * xbytes * b * l * h * p + 2 * xbytes * b * l * g * n + 4.0 * b * l * h
    return flops, nbytes


def _gpu_case(impl, b, l, h=64, p=64, g=1, n=128, Q=256):
    fp16 = impl in ("gpu", "mamba_ssm(gpu)")
    flops, nbytes = _counts(b, l, h, p, g, n, Q, 2 if fp16 else 4)

    def setup():
        import cupy as cp

        x, dt, A, B, C = (cp.asarray(v) for v in _inputs(b, l, h, p, g, n))
        if impl == "gpu":
            from refimpl.ssd import gpu

            xh, Bh, Ch = x.astype(cp.float16), B.astype(cp.float16), C.astype(cp.float16)
            return lambda: gpu.ssd(xh, dt, A, Bh, Ch, chunk_size=Q, check_finite=False)
        import torch

        t = [torch.as_tensor(v, device="cuda") for v in (x, dt, A, B, C)]
        if impl == "mamba_ssm(gpu)":
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

            xb, Bb, Cb = (v.to(torch.bfloat16) for v in (t[0], t[3], t[4]))
            return lambda: mamba_chunk_scan_combined(xb, t[1], t[2], Bb, Cb, chunk_size=Q)
        Bx, Cx = (v.expand(b, l, h, n) if g == 1 else v.repeat_interleave(h // g, dim=2) for v in (t[3], t[4]))
        return lambda: torch_ssd_minimal(t[0], t[1], t[2], Bx, Cx, Q)

    note = f"mamba_chunk_scan_combined (PERFORMANCE.md, not installed on the device): {MAMBA_MS.get(l)} ms"
    return Case(op="ssd", impl=impl, dtype="float16" if impl == "gpu" else ("bfloat16" if fp16 else "float32"),
                shape={"b": b, "l": l, "h": h, "p": p, "g": g, "n": n, "chunk": Q}, setup=setup, bytes=nbytes,
                flops=flops, bound="compute", peer="torch_einsum(gpu)" if impl == "gpu" else None,
                goal=GOAL_GPU if impl == "gpu" else "", note=note, repeats=10 if impl != "gpu" else 30)


def _cpu_case(impl, b, l, h, p, g, n, Q):
    flops, nbytes = _counts(b, l, h, p, g, n, Q, 8 if impl == "numpy" else 4)

    def setup():
        x, dt, A, B, C = _inputs(b, l, h, p, g, n)
        if impl == "numpy":
            import refimpl.ssd as m

            args = [v.astype(np.float64) for v in (x, dt, A, B, C)]
            return lambda: m.ssd(*args, chunk_size=Q, check_finite=False)
        if impl == "cpu":
            import refimpl.ssd.cpu as m

            m.ssd(x[:, :Q], dt[:, :Q], A, B[:, :Q], C[:, :Q])  # compile (cached)
            return lambda: m.ssd(x, dt, A, B, C, chunk_size=Q, check_finite=False)
        import torch

        t = [torch.as_tensor(v) for v in (x, dt, A, B, C)]
        Bx, Cx = (v.expand(b, l, h, n) for v in (t[3], t[4]))
        return lambda: torch_ssd_minimal(t[0], t[1], t[2], Bx, Cx, Q)

    return Case(op="ssd", impl=impl, dtype="float64" if impl == "numpy" else "float32",
                shape={"b": b, "l": l, "h": h, "p": p, "g": g, "n": n, "chunk": Q}, setup=setup, bytes=nbytes,
                flops=flops, bound="memory", peer={"cpu": "torch_einsum(cpu)"}.get(impl),
                goal=GOAL_CPU if impl == "cpu" else "", repeats=5)


def cases(quick: bool) -> list[Case]:
    out = []
    gpu_shapes = [(1, 4096)] if quick else [(4, 8192), (1, 65536)]
    for b, l in gpu_shapes:
        out += [_gpu_case(impl, b, l) for impl in ("gpu", "mamba_ssm(gpu)", "torch_einsum(gpu)")]
    cb, cl, ch = (1, 1024, 4) if quick else (1, 8192, 8)
    out += [_cpu_case(impl, cb, cl, ch, 64, 1, 64, 64) for impl in ("cpu", "numpy", "torch_einsum(cpu)")]
    return out


def device_report():
    """On the GPU machine: the einsum peer against the reference, and per-kernel times of ``gpu.ssd``.

        PYTHONPATH=. python3 -c "from benchmarks.cases.ssd import device_report; device_report()"
    """
    import statistics

    import cupy as cp
    import torch

    import refimpl.ssd as ref
    from refimpl.ssd import gpu
    from refimpl.testing import compare

    x, dt, A, B, C = _inputs(2, 512, 4, 16, 1, 32, seed=3)
    y0 = ref.ssd(*(v.astype(np.float64) for v in (x, dt, A, B, C)))
    t = [torch.as_tensor(v, device="cuda") for v in (x, dt, A, B, C)]
    yt, _ = torch_ssd_minimal(t[0], t[1], t[2], t[3].expand(2, 512, 4, 32), t[4].expand(2, 512, 4, 32), 64)
    print("torch einsum peer vs reference:", compare(yt, y0, rtol=1e-4, atol=1e-6))
    for b, l in ((4, 8192), (1, 65536)):
        x, dt, A, B, C = (cp.asarray(v) for v in _inputs(b, l, 64, 64, 1, 128))
        xh, Bh, Ch = x.astype(cp.float16), B.astype(cp.float16), C.astype(cp.float16)
        for _ in range(3):
            gpu.ssd(xh, dt, A, Bh, Ch, chunk_size=256, check_finite=False)
        per = {}
        for _ in range(10):
            gpu._PROFILE = []
            gpu.ssd(xh, dt, A, Bh, Ch, chunk_size=256, check_finite=False)
            cp.cuda.Device().synchronize()
            for name, e0, e1 in gpu._PROFILE:
                per.setdefault(name, []).append(cp.cuda.get_elapsed_time(e0, e1))
        gpu._PROFILE = None
        total = sum(statistics.median(v) for v in per.values())
        print(f"b{b} l{l}: " + ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in per.items())
              + f"; kernels {total:.3f} ms (mamba_chunk_scan_combined {MAMBA_MS[l]} ms)")


def debug_intermediates(b=1, l=200, h=2, p=16, g=1, n=32, Q=64, seed=4):
    """On the GPU machine: each kernel's buffer against NumPy, to tell which kernel is wrong (errors printed)."""
    import cupy as cp

    import refimpl.ssd as ref
    from refimpl.ssd import gpu

    x, dt, A, B, C = _inputs(b, l, h, p, g, n, seed=seed)
    x16, B16, C16 = (v.astype(np.float16).astype(np.float64) for v in (x, B, C))
    gpu._DEBUG = {}
    y = gpu.ssd(x.astype(np.float16), dt, A, B.astype(np.float16), C.astype(np.float16), chunk_size=Q)
    d = {k: v.get() for k, v in gpu._DEBUG.items()}
    gpu._DEBUG = None
    rel = lambda a, e: float(np.linalg.norm(a - e) / max(np.linalg.norm(e), 1e-30))  # noqa: E731
    nc = d["CB"].shape[1]
    dtp = np.zeros((b, h, nc * Q))
    dtp[:, :, :l] = np.moveaxis(dt, 1, 2)
    a = (dtp * A[None, :, None]).reshape(b, h, nc, Q)
    print("dtq", rel(d["dtq"], dtp), "acum", rel(d["acum"], np.cumsum(a, -1).reshape(b, h, -1)))
    Bp = np.zeros((b, nc * Q, g, n)); Bp[:, :l] = B16
    Cp = np.zeros((b, nc * Q, g, n)); Cp[:, :l] = C16
    Bc, Cc = Bp.reshape(b, nc, Q, g, n), Cp.reshape(b, nc, Q, g, n)
    CB = np.einsum("bctgn,bcsgn->bcgts", Cc, Bc)
    mask = np.tril(np.ones((Q, Q), bool))
    print("CB (s <= t)", rel(d["CB"][..., mask], CB[..., mask]))
    seg = ref.segsum(a)                                    # (b, h, c, Q, Q)
    wend = np.exp(seg[..., -1, :]) * dtp.reshape(b, h, nc, Q)
    print("wend", rel(d["wend"], wend.reshape(b, h, -1)))
    xp = np.zeros((b, nc * Q, h, p)); xp[:, :l] = x16
    xc = xp.reshape(b, nc, Q, h, p)
    Bh = Bc[:, :, :, np.arange(h) // (h // g)]
    S = np.einsum("bcshn,bhcs,bcshp->bchpn", Bh, wend, xc)
    print("chunk states", rel(d["own_states"][..., :p, :n], S))
    Hs, ent = np.zeros((b, h, p, n)), np.zeros_like(S)
    for c in range(nc):
        ent[:, c] = Hs
        Hs = np.exp(a[:, :, c].sum(-1))[..., None, None] * Hs + S[:, c]
    print("entering states", rel(d["entering"][..., :p, :n], ent))
    y0 = ref.ssd(x16, dt, A, B16, C16, chunk_size=Q)
    print("y", rel(y.get().astype(np.float64), y0))
