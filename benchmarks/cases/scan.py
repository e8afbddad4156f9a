"""Chapter 4 benchmarks: linear_scan (memory-bound, against copy, torch.cumsum and CUB) and selective_scan.

linear_scan counts 12 bytes per float32 element (read a and b, write h). The peers compute a plain cumulative
sum (read 4 B, write 4 B per element): an easier problem, timed in the same run. On the CPU the peer is
scipy.signal.lfilter computing h_t = a·h_{t-1} + b_t with a CONSTANT a (lfilter's model is time-invariant);
refimpl's twin reads a full array a_t all the same.

selective_scan on the GPU is set against two floors measured in the same run: bytes / copy bandwidth (the
runner's ceiling) and "exp-floor(gpu)", a kernel doing only the b·d·L·N exponentials (MUFU ex2) the scan
needs, so ``x peer`` = floor time / our time.
"""

from __future__ import annotations

import numpy as np

from benchmarks.core import Case

GOAL_LIN = ("gpu linear_scan f32, 2^28 in one sequence and 4096 x 65536: >= 85% of copy bandwidth (12 B/element), "
            "faster than torch.cumsum and cupy.cumsum (CUB), bitwise deterministic (PERFORMANCE.md)")
GOAL_SEL = "gpu selective_scan f32 b2 d4096 L4096 N16 variable B/C: within 1.5x of max(bytes/copy, exps/SFU)"


def _lin_inputs(S, L, xp=np, dtype=np.float32, seed=0):
    if xp is np:
        rng = np.random.default_rng(seed)
        return (rng.uniform(0.9, 1.0, (S, L)).astype(dtype), rng.standard_normal((S, L)).astype(dtype))
    xp.random.seed(seed)
    return xp.random.uniform(0.9, 1.0, (S, L), dtype=dtype), xp.random.standard_normal((S, L), dtype=dtype)


_TRIAD = r"""
extern "C" __global__ void triad(const float4* __restrict__ a, const float4* __restrict__ b,
                                 float4* __restrict__ h, long long n4)
{
    // h = a + b, one 16-byte vector of each per thread: the traffic of linear_scan (12 B/element) with no scan
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n4) {
        const float4 x = a[i], y = b[i];
        h[i] = make_float4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
    }
}
"""


def _lin_case(impl, S, L, peer=None, note=""):
    n = S * L

    def setup():
        if impl in ("numpy", "cpu", "scipy.lfilter"):
            a, b = _lin_inputs(S, L, dtype=np.float64 if impl == "numpy" else np.float32)
            if impl == "numpy":
                import refimpl.scan as m

                return lambda: m.linear_scan(a, b, check_finite=False)
            if impl == "cpu":
                import refimpl.scan.cpu as m

                m.linear_scan(a[:1, :100], b[:1, :100])  # compile
                return lambda: m.linear_scan(a, b, check_finite=False)
            import scipy.signal

            a0 = float(a[0, 0])
            return lambda: scipy.signal.lfilter([1.0], [1.0, -a0], b, axis=-1)
        import cupy as cp

        a, b = _lin_inputs(S, L, xp=cp)
        if impl == "gpu":
            import refimpl.scan.gpu as m

            return lambda: m.linear_scan(a, b, check_finite=False)
        if impl == "cupy.cumsum(gpu)":
            out = cp.empty_like(b)
            return lambda: cp.cumsum(b, axis=-1, out=out)
        if impl == "triad(gpu)":
            fn, h = cp.RawKernel(_TRIAD, "triad"), cp.empty_like(b)
            n4 = n // 4  # L is a multiple of 4 in every case here
            return lambda: fn(((n4 + 255) // 256,), (256,), (a, b, h, np.int64(n4)))
        import torch

        tb = torch.as_tensor(b, device="cuda")
        out = torch.empty_like(tb)
        return lambda: torch.cumsum(tb, dim=-1, out=out)

    per = 8 if impl in ("cupy.cumsum(gpu)", "torch.cumsum(gpu)") else 12
    if impl == "numpy":
        per = 24
    return Case(op="linear_scan", impl=impl, dtype="float64" if impl == "numpy" else "float32",
                shape={"S": S, "L": L}, setup=setup, bytes=n * per, flops=3 * n, bound="memory", peer=peer,
                goal=GOAL_LIN if impl == "gpu" else ("cpu: at least as fast as scipy.signal.lfilter; >= 20x the "
                                                      "NumPy reference" if impl == "cpu" else ""),
                note=note, repeats=10 if impl in ("numpy", "scipy.lfilter") else 20)


# ---------------------------------------------------------------------------------------------------------

def _sel_inputs(b, d, L, N, xp=np, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    args = dict(u=rng.standard_normal((b, d, L)), delta=rng.uniform(-4, -1, (b, d, L)),
                A=-np.exp(rng.uniform(np.log(0.5), np.log(16), (d, N))), B=rng.standard_normal((b, N, L)),
                C=rng.standard_normal((b, N, L)))
    kw = dict(D=rng.standard_normal(d), z=rng.standard_normal((b, d, L)), delta_bias=rng.uniform(-1, 1, d),
              delta_softplus=True)
    conv = (lambda x: xp.asarray(x.astype(dtype))) if dtype is not None else (lambda x: x)
    return ({k: conv(v) for k, v in args.items()},
            {k: (conv(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()})


def _mamba_selective_scan_ref():
    """mamba_ssm.ops.selective_scan_interface.selective_scan_ref (real A, variable B/C (b, N, L)), transcribed
    from state-spaces/mamba (Apache-2.0), since mamba_ssm does not install without CUDA."""
    import torch
    import torch.nn.functional as F

    def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
        dtype_in = u.dtype
        u = u.float()
        delta = delta.float()
        if delta_bias is not None:
            delta = delta + delta_bias[..., None].float()
        if delta_softplus:
            delta = F.softplus(delta)
        batch, dim, dstate = u.shape[0], A.shape[0], A.shape[1]
        B = B.float()
        C = C.float()
        x = A.new_zeros((batch, dim, dstate))
        ys = []
        deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
        deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
        for i in range(u.shape[2]):
            x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
            y = torch.einsum("bdn,bn->bd", x, C[:, :, i])
            ys.append(y)
        y = torch.stack(ys, dim=2)
        out = y if D is None else y + u * D[:, None]
        if z is not None:
            out = out * F.silu(z)
        return out.to(dtype=dtype_in)

    return selective_scan_ref


_EX2 = r"""
extern "C" __global__ void ex2_floor(float* out, long long per_thread)
{
    // 8 independent chains x <- 2^(-x): pure MUFU.EX2 throughput (the FNEG folds into the operand)
    float x[8];
    for (int i = 0; i < 8; ++i) x[i] = 0.001f * (threadIdx.x + i);
    for (long long k = 0; k < per_thread; k += 8)
        for (int i = 0; i < 8; ++i) asm volatile("ex2.approx.ftz.f32 %0, %1;" : "=f"(x[i]) : "f"(-x[i]));
    float s = 0.f;
    for (int i = 0; i < 8; ++i) s += x[i];
    if (s == 12345.f) out[0] = s;  // keeps the chains alive
}
"""


#: selective_scan, quad kernel, tried and dropped (2026-11-22, H100, b2 d4096 L4096 N16; kernel alone = 20
#: calls back to back, ms; the default 0.279-0.282 in the same runs, floor 0.181-0.185 = bytes / copy). The
#: streaming part is slow through its access pattern, not its bytes: each copy reads 64 B of a row (4 lanes
#: x 16 B) of 24k rows walked at once. With the scan removed (DIAG_NO_SCAN, wrong results) an L2 prefetch
#: hint on the u/delta/z cp.async (.L2::256B / 128B) takes that part from 0.268 to 0.203 / 0.210; with the
#: scan in, 0.277-0.282 whatever the hint (64 / 128 / 256 B): the scan (issue slots, MUFU, B/C shared reads,
#: 2 warps per scheduler) needs about as long as the streaming did. Also no faster: copies of
#: 2 / 4 blocks issued together (longer runs of a row; 0.287 / 0.293, with the hint 0.291 / 0.295), plain
#: instead of evict-first stores of out (0.281), QPF 6 / 10 with the hint (0.276 / 0.287), dt and dt*u to the
#: channel's other lanes by 32 shuffles instead of 2 STS.128 + __syncwarp + 8 LDS.128 per 16 steps (0.288;
#: 0.289 / 0.303 with the 128 / 256 B hint). Host time of one call (b2b excluded): 23-25 us, of which 11 in
#: _SelectivePlan.launch (10 pointers, launch_words' two ctypes arrays, cuLaunchKernel), 3 in the ready
#: checks, 2 the plan key, 2.4 cp.empty.
#: Second round (2026-11-22, H100, 3 processes; single / back to back, ms; floor 0.182-0.183): the kernel with
#: less integer work (pointers advanced per block, fixed B/C tile copies for 256 threads, 32-bit steps, dt/du
#: stores conflict-free) and QPFB 128, QPF 6: 0.287-0.288 / 0.270 against 0.306-0.335 / 0.278-0.280 for the
#: kernel and host path before, same run (1.58x the floor single; benchmarks.run in two later processes of the
#: same machine: 0.306, 0.313). Host time of a call 17-20 us (30-38 before, same run; 37-40 against 70 on a
#: slower host): the launch's ctypes block built once per plan (_gpu.packed_launcher; 4.4 us of it is
#: cuLaunchKernel itself; through ctypes instead of CuPy's launchKernel no cheaper), the plan's settings
#: compared rather than hashed into the key, CuPy's own contiguity flag. Kernel alone: QPFB 0 / 256 0.275 /
#: 0.273; QPF 8 0.271; see the comment of selective_quad for the diagnostics and what was slower. The
#: committed run (final code, a fresh process): 0.284 ms single (1.56x), 0.269 back to back (1.47x); right after
#: the whole GPU test suite in the same machine session 0.293 / 0.271.
#: Third round (2026-11-22, H100, device time as time_gpu gives it now / 20 back to back, ms; the committed
#: kernel 0.273-0.277 / 0.268-0.273 in each of the same 3 processes; floor 0.179 = bytes / copy, exp 0.133):
#: nothing beat it, the kernel stayed as it was. Each restructuring moved ptxas's schedule and lost:
#: block j + 1's dt, dt*u read into registers at the end of block j, the element-wise terms formed at its
#: top: 0.300 (stored at the end instead: 0.285; QPF 8 0.300); 8 lanes x 2 states x 2 channels (QL 8, QC 2:
#: 20% fewer B/C + dt/du shared-memory bytes, but 28 shuffles, 64 selects per 16 steps instead of 12, 32):
#: 0.302, with the dt registers 0.366; block j - 1's reduce-scatter and outputs in block j's basic block:
#: 0.281-0.282 (QPF 4 0.280, QPF 8 0.287); element-wise terms at the top, stored at the end 0.286 (+ that 0.318);
#: silu's reciprocal by Newton on the FMA pipe (one MUFU less per step): 0.286; B/C tiles handed over by
#: mbarriers (cp.async.mbarrier.arrive, no __syncthreads): 0.280-0.282, with QPF 4 0.272 / 0.266 b2b (one
#: run, 1% under the committed kernel's 0.275-0.276: a lead, not a result). DIAG_NO_DT hoists the
#: exponentials out of the loop (dt constant), so its 0.238 measured the MUFU work, not the dt reads. ncu
#: stalls per issued instruction (block j - 1 reduce variant, 0.282 ms): short scoreboard 0.74, wait 0.47,
#: not selected 0.39, MIO throttle 0.29, dispatch 0.15, barrier 0.12, math pipe throttle 0.06; 2 warps per
#: scheduler, no eligible warp 45% of cycles. benchmarks.run on the committed kernel: 0.278 ms (1.55x).
#: Fourth round (2026-11-22, H100, time_gpu device ms / 20 back to back; floor 0.179): a warp-specialised
#: kernel (selective_qws, now the default for blocks of 64 channels: QUAD_CONFIG QWS 1, QWSS 2). 8 scan warps
#: (lanes and states as the quad kernel) + 4 producer warps (cp.async ring of u, delta, z, softplus, silu,
#: D*u, the B/C tiles, the outputs); mbarriers per group of 16 channels (dt, dt*u in, y back), none
#: block-wide. All variants bitwise equal to the committed kernel. First version (producer lanes on 2 x 32 B
#: of one row per copy, 2-way conflicted stage stores, D*u and silu(z) through the stage): 0.311-0.319 against
#: 0.273; producer lanes on 64 B row pieces, conflict-free: 0.284-0.286 against 0.276 (the producers' softplus
#: and silu on the FMA pipe, one MUFU per element instead of four: 0.294-0.296, slower); the producers writing
#: out (y back through the stage, D*u and silu(z) kept in registers): 3 stages 0.270-0.273 / 0.265-0.268,
#: 2 stages 0.261 / 0.255 (1.456x, one run), against 0.273-0.277 / 0.273 for the committed kernel in the same
#: process; 2 channels per scan thread (4 scan warps, B/C read once for both) 0.287 (2 stages 0.273).
#: Adopted after a fifth device call (same session): 95 scan GPU tests passed (the 64-channel tests with QWS 0
#: and 1); in one process, 3 rounds each, the committed quad kernel 0.276-0.277 / 0.273-0.274 against QWS
#: 0.262-0.264 / 0.258-0.259 (1.46-1.47x); the benchmark run, a fresh process: 0.263 (1.47x; one call from an
#: idle device, host included, 0.296).
def _sel_case(impl, b, d, L, N, peer=None, note=""):
    n = b * d * L
    nbytes = n * 4 * 4 + 2 * b * N * L * 4 + d * (N + 2) * 4  # u, delta, z in, out; B, C; A, D, bias

    def setup():
        if impl == "exp-floor(gpu)":
            import cupy as cp

            fn = cp.RawKernel(_EX2, "ex2_floor")
            sms = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["multiProcessorCount"]
            blocks, threads = sms * 8, 256
            per = -(-(n * N) // (blocks * threads * 8)) * 8
            out = cp.zeros(1, dtype=cp.float32)
            return lambda: fn((blocks,), (threads,), (out, np.int64(per)))
        if impl == "gpu":
            import cupy as cp

            import refimpl.scan.gpu as m

            args, kw = _sel_inputs(b, d, L, N, xp=cp)
            return lambda: m.selective_scan(**args, **kw, check_finite=False)
        if impl == "numpy":
            import refimpl.scan as m

            args, kw = _sel_inputs(b, d, L, N, dtype=None)
            return lambda: m.selective_scan(**args, **kw, check_finite=False)
        if impl == "cpu":
            import refimpl.scan.cpu as m

            args, kw = _sel_inputs(b, d, L, N)
            m.selective_scan(**{k: (v[..., :8] if v.ndim == 3 else v) for k, v in args.items()},
                             **{k: (v[..., :8] if isinstance(v, np.ndarray) and v.ndim == 3 else v)
                                for k, v in kw.items()})  # compile
            return lambda: m.selective_scan(**args, **kw, check_finite=False)
        import torch  # mamba_ssm's selective_scan_ref on PyTorch CPU

        ref = _mamba_selective_scan_ref()
        args, kw = _sel_inputs(b, d, L, N)
        targs = {k: torch.as_tensor(v) for k, v in args.items()}
        tkw = {k: (torch.as_tensor(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
        return lambda: ref(**targs, **tkw)

    return Case(op="selective_scan", impl=impl, dtype="float64" if impl == "numpy" else "float32",
                shape={"b": b, "d": d, "L": L, "N": N}, setup=setup, bytes=nbytes, flops=n * N * 6,
                bound="memory", peer=peer,
                goal={"gpu": GOAL_SEL, "cpu": "cpu: >= 10x mamba_ssm's selective_scan_ref on PyTorch CPU; >= 20x "
                      "the NumPy reference"}.get(impl, ""), note=note, repeats=5 if impl != "gpu" else 20)


def cases(quick):
    out = []
    if quick:
        gpu_shapes, cpu_long, cpu_batch = [(1, 1 << 20), (16, 1 << 16)], (1, 1 << 16), (8, 1 << 12)
        sel_gpu, sel_cpu = (2, 256, 512, 16), (1, 32, 256, 16)
    else:
        gpu_shapes, cpu_long, cpu_batch = [(1, 1 << 28), (4096, 1 << 16)], (1, 1 << 20), (64, 1 << 16)
        sel_gpu, sel_cpu = (2, 4096, 4096, 16), (1, 128, 1024, 16)
    for S, L in gpu_shapes:
        out += [_lin_case("gpu", S, L, peer="torch.cumsum(gpu)"), _lin_case("torch.cumsum(gpu)", S, L),
                _lin_case("cupy.cumsum(gpu)", S, L),
                _lin_case("triad(gpu)", S, L, note="h = a + b: the same 12 B/element streamed with no scan")]
    out += [_lin_case("numpy", *cpu_long, note="float64 reference: the sequential loop"),
            _lin_case("cpu", *cpu_long, peer="scipy.lfilter"),
            _lin_case("scipy.lfilter", *cpu_long, note="constant a (lfilter's model)"),
            _lin_case("cpu", *cpu_batch, peer="scipy.lfilter"),
            _lin_case("scipy.lfilter", *cpu_batch, note="constant a (lfilter's model)")]
    out += [_sel_case("gpu", *sel_gpu, peer="exp-floor(gpu)",
                      note="D, z, delta_bias, softplus; peer = the exponentials alone"),
            _sel_case("exp-floor(gpu)", *sel_gpu, note="b*d*L*N ex2.approx, no memory traffic"),
            _sel_case("numpy", *sel_cpu), _sel_case("cpu", *sel_cpu, peer="mamba_ref(torch-cpu)"),
            _sel_case("mamba_ref(torch-cpu)", *sel_cpu, note="selective_scan_ref transcribed, PyTorch CPU")]
    return out


def summary(path):
    """Print the chapter's figures from a results JSON: GB/s, % of copy, ratios to the peers and floors."""
    import json

    data = json.loads(open(path).read())
    res = [r for r in data["results"] if r["op"] in ("linear_scan", "selective_scan") and r["ms"]]
    copy = data["ceilings"].get("gpu", {}).get("copy_bytes_per_s")
    key = lambda r: json.dumps(r["shape"], sort_keys=True)  # noqa: E731
    by = {(r["op"], key(r), r["impl"]): r for r in res}
    for r in res:
        extra = ""
        if r["op"] == "linear_scan" and r["impl"] == "gpu":
            gbs = r["bytes"] / r["ms"] / 1e6
            t = by.get(("linear_scan", key(r), "torch.cumsum(gpu)"))
            c = by.get(("linear_scan", key(r), "cupy.cumsum(gpu)"))
            tr = by.get(("linear_scan", key(r), "triad(gpu)"))
            extra = (f"{gbs:.0f} GB/s = {100 * gbs * 1e9 / copy:.1f}% of copy; torch.cumsum {t['ms']:.3f} ms "
                     f"({t['ms'] / r['ms']:.2f}x), cupy.cumsum {c['ms']:.3f} ms ({c['ms'] / r['ms']:.2f}x)"
                     if t and c else f"{gbs:.0f} GB/s")
            if tr:
                extra += f"; triad {tr['ms']:.3f} ms ({100 * tr['bytes'] / tr['ms'] * 1e3 / copy:.1f}% of copy)"
        if r["op"] == "selective_scan" and r["impl"] == "gpu":
            f = by.get(("selective_scan", key(r), "exp-floor(gpu)"))
            floor = max(r["ceiling_ms"] or 0, f["ms"] if f else 0)
            extra = (f"bytes floor {r['ceiling_ms']:.3f} ms, exp floor {f['ms'] if f else float('nan'):.3f} ms: "
                     f"{r['ms'] / floor:.2f}x the floor")
        if r["impl"] == "cpu":
            p = by.get((r["op"], key(r), r["peer"])) if r["peer"] else None
            n = by.get((r["op"], key(r), "numpy"))
            extra = (f"vs {r['peer']}: {p['ms'] / r['ms']:.2f}x " if p else "") + \
                    (f"vs numpy: {n['ms'] / r['ms']:.1f}x" if n else "")
        print(f"{r['op']:<15}{r['impl']:<22}{json.dumps(r['shape']):<44}{r['ms']:>10.3f} ms  {extra}")


#: linear_scan configurations variants() times (see LINEAR_CONFIG in refimpl/scan/gpu.py) as (THREADS, J, MINB).
#: Measured on an H100 with the 8-byte-word look-back (before tiles awaited both levels at once, which took
#: (128, 8, 6) from 73 to 79 at 1 x 2^28), % of copy at 1 x 2^28 / 4096 x 65536 (a + b -> h, CuPy's
#: element-wise kernel with the same 12 B/element, ran at 84.3 % in the same run): (128, 8, 6) 73.2 / 86.7;
#: (128, 16, 3) 72.5 / 87.3; (512, 4, 3) 69.4 / 85.1; (256, 6, 4) 69.7 / 83.0; (256, 4, 6) 70.4 / 81.6;
#: (256, 8, 3) 69.2 / 81.3. Run to run the same kernel ranges over 70-79 / 81-92.5 (three processes on one
#: machine, each timing every variant: the 4096 x 65536 figure moves for all variants together, so it is
#: the process, probably where its buffers land, not the kernel); once, right after the whole GPU test
#: suite, 50 / 87. Sleeping between look-back polls (BACKOFF) made no measurable difference.
#: Earlier, with a 16-byte flag-and-fence look-back:
#: (256, 8, 3) 76.4 / 83.3 and 74.1 / 84.4 (two runs); without any look-back 81.0 / 73.6; (256, 4, 6)
#: 74.1 / 79.6; (128, 8, 6) 71.7 / 85.9; (512, 4, 2) 68.7 / 78.5. A persistent variant (2 blocks per SM taking
#: tiles from a counter, a ring of 3 tiles of 4096 in flight) ran at 17.8 / 14.5: a tile's aggregate is
#: published only when its block reaches it, behind the look-back of the tile before, so every round of
#: tiles waits for the slowest block of the round before. A warp-specialized variant (128 compute threads plus
#: one look-back warp that polls the predecessors from the block's start, overlapping the tile's own copy;
#: the tile aggregate published after a barrier of the compute warps alone) ran at 60.0 / 79.5 with (128, 8,
#: 6), 52-56 / 66-76 with 4-5 blocks per SM: polling from the start finds the predecessors unpublished and
#: sleeps, where polling after the tile's own copy finds them ready (and 160 threads spill at 6 blocks).
#: Session of 2026-11-22 (H100; single call / 10 calls back to back, % of copy at 1 x 2^28). The host path
#: first: the call spent about 0.1 ms in Python before its launch (np.prod, broadcast copies of contiguous
#: arrays, a fill kernel for a missing h0, CuPy's argument conversion), which a single call's timing counts
#: while the GPU idles; with the plan cached, arrays passed through and cuLaunchKernel, 25-40 us (host time
#: on that machine varies run to run by up to 3x). Then, the look-back's words loaded as the block starts
#: (EARLY): 78.2 -> 79.9 single (both before the host work). DIAG_NO_WAIT (wrong results, timing only):
#: never waiting on level 1 94.1-94.7 / 96.4-96.9, on level 2 90.1-90.6 / 92.3-92.5, on the state 83.3-83.9
#: / 85.5-85.7, on nothing (the default) 83.8 / 85.4-85.7: the wait for earlier tiles is the cost. Windows of
#: 32 tiles: 83.2-85.3 / 86.3-87.1 against 84.0-84.4 / 86.0-86.2 for 128 (64: 82.2-85.3); 64 threads, 12
#: blocks per SM: 66.7. A bulk L2 prefetch of the tile 400 / 800 / 1600 tiles ahead (so that DRAM reads go on
#: while blocks wait, without holding shared memory): 83.8-84.9 / 87.5-88.2 at 400 but 4096 x 65536 fell
#: from 98.7 to 81.7, and 800 or more fell to 60-62 on both shapes: dropped. Then, with windows of 32 and
#: EARLY, two rounds in one process, 1 x 2^28 single / back to back (4096 x 65536 back to back): (128, 8, 6)
#: 80.9-85.4 / 86.8-86.9 (101.7-102.2); (128, 16, 3) 85.9-86.5 / 88.1-88.6 (102.5-102.6), kept: tiles of
#: 8192, half as many to wait on; (256, 8, 3) 82.7-83.3 / 84.8-85.0; (256, 4, 3) 67.0-67.5 / 69.2-69.3;
#: (64, 16, 6) 70.5-71.2 / 72.1-72.9; windows of 16 83.9-84.1 / 86.0.
#: Later that day, the 12-byte ceiling (triad: h = a + b, no scan): one 16-byte vector of a and b per thread
#: 99.7-103 % of copy at both shapes; with streaming loads/stores 98.5-99.8; two vectors per thread 97.3-99.0;
#: grid-stride x4 with 8 / 16 blocks per SM 92.6-94.9; CuPy's a + b 83.5-84.1. torch.cumsum at 1 x 2^28:
#: 1.030-1.031 ms against 1.065-1.084 for the triad, so no kernel that moves a, b and h (12 B/element) can
#: be faster there; at 4096 x 65536 torch.cumsum takes 1.31-1.33 ms. The launch through a parameter block
#: built once (_gpu.packed_launcher; pointers first in the kernel's arguments): host time per call 31-45 us
#: (the machine's host speed varies more than that). Final code: 1 x 2^28 at 86 % single, 1.240 ms (88.2 %)
#: back to back; 4096 x 65536 96 %; right after the whole GPU test suite in one machine session, 81 / 99.
LINEAR_VARIANTS = [dict(THREADS=128, J=16, MINB=3), dict(THREADS=128, J=8, MINB=6),
                   dict(THREADS=128, J=16, MINB=3, WINDOW=128), dict(THREADS=128, J=16, MINB=3, EARLY=0),
                   dict(THREADS=128, J=16, MINB=3, BACKOFF=0), dict(THREADS=256, J=8, MINB=3),
                   dict(THREADS=512, J=4, MINB=3)]


def variants(selective=True, configs=None):
    """Time the kernels' variants at the benchmark shapes, each checked against the first variant's output and
    for bitwise repeatability; leave the fastest correct one configured in refimpl.scan.gpu and return it."""
    import cupy as cp

    import refimpl.scan.gpu as gpu
    from benchmarks.core import time_gpu

    src = cp.random.standard_normal(1 << 28, dtype=cp.float32)
    dst = cp.empty_like(src)
    copy = time_gpu(lambda: dst.__setitem__(Ellipsis, src))
    add = time_gpu(lambda: cp.add(src, src[::-1], out=dst))  # 12 B/element, like the scan
    del src, dst
    bw = 8 * (1 << 28) / copy / 1e6
    print(f"copy 2^28 f32: {copy:.3f} ms, {bw:.0f} GB/s; a + b -> h (12 B/elem): {add:.3f} ms = "
          f"{100 * 12 * (1 << 28) / add / 1e6 / bw:.1f}% of copy")
    base = {}
    configs = LINEAR_VARIANTS if configs is None else configs
    default = dict(gpu.LINEAR_CONFIG)
    total = [0.0] * len(configs)
    for S, L in ((1, 1 << 28), (4096, 1 << 16)):
        a, b = _lin_inputs(S, L, xp=cp)
        try:
            import torch

            tb = torch.as_tensor(b, device="cuda")
            out = torch.empty_like(tb)
            print(f"torch.cumsum S{S} L{L}: {time_gpu(lambda: torch.cumsum(tb, dim=-1, out=out)):.3f} ms")
            del tb, out
        except ImportError:
            pass
        want, scale = None, None
        for i, cfg in enumerate(configs):
            gpu.LINEAR_CONFIG.clear()
            gpu.LINEAR_CONFIG.update({**default, **base, **cfg})
            try:
                h = gpu.linear_scan(a, b, check_finite=False)
                if want is None:
                    want, scale = h, float(cp.linalg.norm(h))
                err = float(cp.linalg.norm(h - want)) / scale
                same = bool(cp.array_equal(gpu.linear_scan(a, b, check_finite=False), h))
                del h
                ms = time_gpu(lambda: gpu.linear_scan(a, b, check_finite=False))
            except Exception as exc:  # a variant that cannot launch here
                print(f"linear_scan {cfg}: {type(exc).__name__}: {exc}")
                total[i] = float("inf")
                continue
            ok = err < 1e-5 and same
            total[i] += ms if ok else float("inf")
            print(f"linear_scan S{S} L{L} {cfg}: {ms:.3f} ms = {100 * 12 * S * L / ms / 1e6 / bw:.1f}% of copy, "
                  f"rel err vs first {err:.1e}, repeatable {same}", flush=True)
        del a, b, want
    best = configs[min(range(len(configs)), key=lambda i: total[i])] if min(total) < float("inf") else {}
    gpu.LINEAR_CONFIG.clear()
    gpu.LINEAR_CONFIG.update({**default, **base, **best})
    print("chosen linear_scan config:", gpu.LINEAR_CONFIG)
    if not selective:
        return best
    args, kw = _sel_inputs(2, 4096, 4096, 16, xp=cp)
    gpu.SELECTIVE_KERNEL = "auto"
    want = gpu.selective_scan(**args, **kw, check_finite=False)
    scale = float(cp.linalg.norm(want))
    timings = {}
    for kernel, ch in (("quad", 64), ("quad", 32), ("states", 16), ("states", 8), ("warp", 32)):
        gpu.SELECTIVE_KERNEL = kernel
        if kernel == "quad":
            gpu.QUAD_MAX_CHANNELS = ch
        else:
            gpu.STATES_MAX_CHANNELS = ch
        y = gpu.selective_scan(**args, **kw, check_finite=False)
        err = float(cp.linalg.norm(y - want)) / scale
        same = bool(cp.array_equal(gpu.selective_scan(**args, **kw, check_finite=False), y))
        ms = time_gpu(lambda: gpu.selective_scan(**args, **kw, check_finite=False))
        print(f"selective_scan {kernel} max channels {ch}: {ms:.3f} ms, rel err vs default {err:.1e}, "
              f"repeatable {same}")
        if err < 1e-5 and same:
            timings[(kernel, ch)] = ms
    kernel, ch = min(timings, key=timings.get) if timings else ("auto", 64)
    gpu.SELECTIVE_KERNEL = "auto" if kernel == "quad" else kernel
    if kernel == "quad" or kernel == "auto":
        gpu.QUAD_MAX_CHANNELS = ch
    else:
        gpu.STATES_MAX_CHANNELS = ch
    print("chosen selective_scan:", kernel, ch)
    return best, (kernel, ch)
