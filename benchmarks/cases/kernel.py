"""Chapter 3 benchmarks: the Vandermonde kernel (arithmetic-bound) and FFT causal convolution.

vandermonde_kernel, H 1024, N 64, L 16384 on the GPU. The arithmetic floor is one complex multiply-add per
(h, n, l): 4 FP32 FMAs, 4·H·N·L = 2^32 FMAs in all. The row ``fp32-floor(gpu)`` times exactly that many
FMAs at the device's FP32 issue rate, measured in the same run by a probe kernel (8 independent FMA chains
per thread, a full grid): its ms *is* the floor, and its "x peer" column is gpu / floor. ``gpu`` is the
whole call with ``check_finite=False``; ``gpu:checked`` the default call (the kernel flags NaN/inf and the
call waits to read the flag); ``gpu:kernel-only`` the launch alone; ``gpu:runR`` other taps per thread. The runner's own
"ceil ms" column for the compute-bound rows divides 8·H·N·L flops by the fp16 tensor-core matmul rate,
which this FP32 product cannot use; read the floor row instead. The peer ``cupy-materialize(gpu)`` is the
textbook expression: build the (H, N, L) Vandermonde matrix exp(l·dtΛ) and contract it with C·B̄.
"""

from __future__ import annotations

import numpy as np

from benchmarks.core import Case

GOAL_VK = ("gpu vandermonde_kernel complex64 H1024 N64 L16384: >= 10x a CuPy expression that materializes "
           "(H, N, L); within 2x of its arithmetic floor (PERFORMANCE.md)")
GOAL_CPU = "cpu: >= 20x the NumPy reference (PERFORMANCE.md)"


def _modes(H, N, xp=np, seed=0):
    rng = np.random.default_rng(seed)
    lam = (-rng.uniform(0.05, 1, (H, N)) + 1j * rng.uniform(0, 4 * np.pi, (H, N))).astype(np.complex64)
    B = (rng.standard_normal((H, N)) + 1j * rng.standard_normal((H, N))).astype(np.complex64)
    C = ((rng.standard_normal((H, N)) + 1j * rng.standard_normal((H, N))) / np.sqrt(N)).astype(np.complex64)
    dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), H)).astype(np.float32)
    return tuple(xp.asarray(a) for a in (lam, B, C, dt))


def _fma_floor(n_fma):
    """A callable that issues n_fma FP32 FMAs (rounded to the probe's granularity) on a full grid."""
    import cupy as cp

    from refimpl.kernel import gpu

    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    blocks, threads = props["multiProcessorCount"] * 8, 256
    iters = max(1, round(n_fma / (64 * blocks * threads)))
    out = cp.empty(blocks * threads, dtype=cp.float32)
    fn = gpu._function("fma_probe")
    return lambda: fn((blocks,), (threads,), (out, np.int32(iters), np.float32(0.999), np.float32(1e-3)))


def _vk_case(impl, H, N, L, note=""):
    flops = 8 * H * N * L  # one complex multiply-add (4 FMA = 8 flops) per (h, n, l)

    def setup():
        if impl == "numpy":
            import refimpl.kernel as m

            lam, B, C, dt = _modes(H, N)
            return lambda: m.vandermonde_kernel(lam, B, C, dt, L, check_finite=False)
        if impl == "cpu":
            import refimpl.kernel.cpu as m

            lam, B, C, dt = _modes(H, N)
            m.vandermonde_kernel(lam[:1], B[:1], C[:1], dt[:1], 8)  # compile
            return lambda: m.vandermonde_kernel(lam, B, C, dt, L, check_finite=False)
        import cupy as cp

        if impl == "fp32-floor(gpu)":
            return _fma_floor(4 * H * N * L)
        lam, B, C, dt = _modes(H, N, xp=cp)
        if impl.startswith("gpu"):
            import refimpl.kernel.gpu as m

            run = int(impl.split("run")[1]) if "run" in impl else None
            checked = impl == "gpu:checked"
            m.vandermonde_kernel_run(lam, B, C, dt, L, run=run)  # compile
            if impl == "gpu:kernel-only":  # the launch alone, inputs already laid out
                return m.prepare(lam, B, C, dt, L, check_finite=False)[0]
            return lambda: m.vandermonde_kernel_run(lam, B, C, dt, L, run=run, check_finite=checked)
        # peer: materialize the (H, N, L) Vandermonde matrix (8 GiB in complex64) and contract it
        import refimpl.discretize.gpu as d

        l = cp.arange(L, dtype=cp.float32)

        def expr():
            _, Bd = d.zoh_diag(lam, B, dt, check_finite=False)
            V = cp.exp((dt[:, None] * lam)[:, :, None] * l)
            return 2 * cp.einsum("hn,hnl->hl", C * Bd, V).real

        return expr

    peer = {"gpu": "cupy-materialize(gpu)", "cpu": "numpy", "fp32-floor(gpu)": "gpu"}.get(impl)
    if impl.startswith("gpu:"):
        peer = "gpu"
    return Case(op="vandermonde_kernel", impl=impl, dtype="complex64", shape={"H": H, "N": N, "L": L}, setup=setup,
                bytes=H * L * 4 + H * N * 24, flops=flops, bound="compute", peer=peer,
                goal=GOAL_VK if impl == "gpu" else (GOAL_CPU if impl == "cpu" else ""), note=note, repeats=10)


def _conv_case(impl, batch, H, L, note=""):
    def setup():
        rng = np.random.default_rng(1)
        u = rng.standard_normal((batch, H, L), dtype=np.float32)
        K = (rng.standard_normal((H, L)) * np.exp(-np.arange(L) / 100)).astype(np.float32)
        D = rng.standard_normal(H).astype(np.float32)
        if impl == "numpy":
            import refimpl.kernel as m

            return lambda: m.causal_conv(u, K, D, check_finite=False)
        if impl == "cpu":
            import refimpl.kernel.cpu as m

            return lambda: m.causal_conv(u, K, D, check_finite=False)
        if impl == "gpu":
            import cupy as cp

            import refimpl.kernel.gpu as m

            ud, Kd, Dd = cp.asarray(u), cp.asarray(K), cp.asarray(D)
            return lambda: m.causal_conv(ud, Kd, Dd, check_finite=False)
        import torch  # peer: the same 2L-padded FFT convolution in PyTorch

        ut, Kt, Dt = (torch.as_tensor(a, device="cuda") for a in (u, K, D))

        def peer():
            n = 2 * L
            y = torch.fft.irfft(torch.fft.rfft(ut, n) * torch.fft.rfft(Kt, n), n)[..., :L]
            return y + Dt[:, None] * ut

        return peer

    return Case(op="causal_conv", impl=impl, dtype="float32",
                shape={"B": batch, "H": H, "L": L}, setup=setup, bytes=(2 * batch * H * L + H * L) * 4,
                flops=0, bound="memory", peer={"gpu": "torch.fft(gpu)", "cpu": "numpy"}.get(impl),
                goal="" if impl != "cpu" else GOAL_CPU, note=note)


def cases(quick):
    H, N, L = (64, 64, 4096) if quick else (1024, 64, 16384)
    Hc = 16 if quick else 64  # the host rows: 64 channels (the reference needs ~8 s for them)
    out = [_vk_case("numpy", Hc, N, L, note=f"H {Hc}; complex64 inputs, computed in complex128"), _vk_case("cpu", Hc, N, L, note=f"H {Hc}")]
    out += [_vk_case(i, H, N, L) for i in ("gpu", "gpu:kernel-only", "gpu:run16", "gpu:run32", "gpu:run64",
                                           "gpu:checked",
                                           "fp32-floor(gpu)", "cupy-materialize(gpu)")]
    b, Hh = (1, 64) if quick else (4, 1024)
    out += [_conv_case("numpy", 1, 64, L, note="1 x 64 channels; float32 inputs, computed in float64"),
            _conv_case("cpu", 1, 64, L, note="1 x 64 channels"),
            _conv_case("gpu", b, Hh, L), _conv_case("torch.fft(gpu)", b, Hh, L)]
    return out


def accuracy_report(H=4, N=64, lengths=(16384, 65536)):
    """Relative L2 error of each float32 twin (and GPU variant) against the float64 reference, by L."""
    import refimpl.kernel as ref
    import refimpl.kernel.cpu as cpu
    from refimpl.testing import compare

    impls = [("cpu", lambda *a: cpu.vandermonde_kernel(*a))]
    try:
        import refimpl.kernel.gpu as gpu

        for run in (16, 32, 64):
            impls.append((f"gpu run{run}", lambda *a, r=run: gpu.vandermonde_kernel_run(*a, run=r)))
    except ImportError as exc:
        print(f"(no GPU rows: {str(exc).split(';')[0]})")
    for L in lengths:
        args = _modes(H, N, seed=L) + (L,)
        K = ref.vandermonde_kernel(*args)
        tail = slice(3 * L // 4, L)
        for name, fn in impls:
            Kt = fn(*args)
            c, ct = compare(Kt, K, rtol=1, atol=0), compare(Kt[:, tail], K[:, tail], rtol=1, atol=0)
            print(f"vandermonde_kernel {name:<12} H{H} N{N} L{L:<6} rel L2 {c.rel_l2:.2e}  "
                  f"last quarter {ct.rel_l2:.2e}  max abs {c.max_abs:.2e}")


if __name__ == "__main__":
    accuracy_report()
