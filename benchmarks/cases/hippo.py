"""legs_online: the HiPPO-LegS recurrence over many signals (chapter 2).

GPU: ``hippo.gpu.legs_online`` (O(N) update, state in registers) against the naive dense O(N²) update as
S4's reference ``HiPPOScale`` runs it (one ``c @ Ā_kᵀ + f_k B̄_k`` per step in PyTorch, matrices precomputed),
4096 signals × L 4096 × N 64, float32. The op is bound by writing the output (4.3 GB), so the ceiling is the
copy bandwidth for bytes = f read once + c written once.

CPU: ``hippo.cpu.legs_online`` (Numba, O(N)) against the NumPy reference (dense, computing in float64 on the
same float32 input; labelled float32 so that the runner pairs it with the twin) and the Numba dense
O(N²) update (``hippo.cpu.legs_online_dense``) at 256 signals × L 4096 × N 64: the full 4096 signals would need
an 8.6 GB float64 output and minutes per call for the reference, so the CPU peers run at 1/16 of the GPU
shape; ``cpu`` alone also runs the full shape where memory allows (not in --quick).
"""

from __future__ import annotations

import numpy as np

from benchmarks.core import Case

GOAL_GPU = "memory-bound on the output: aim for >= 60% of copy bandwidth; far ahead of the dense per-step peer"
GOAL_CPU = "PERFORMANCE.md: every cpu twin >= 20x faster than the NumPy reference on its benchmark shape"


def _bytes(nsig, L, N, itemsize):
    return float(nsig * L * itemsize + nsig * L * N * itemsize)


def _flops(nsig, L, N):
    return float(nsig * L * N * 14)  # ~14 flops per state per step in the O(N) update (counted in the .cu)


def _gpu_case(nsig, L, N, dtype):
    def setup():
        import cupy as cp

        from refimpl.hippo import gpu

        f = cp.random.standard_normal((nsig, L), dtype=cp.float64).astype(dtype)
        return lambda: gpu.legs_online(f, N, check_finite=False)

    return Case("legs_online", "gpu", np.dtype(dtype).name, {"signals": nsig, "L": L, "N": N}, setup,
                bytes=_bytes(nsig, L, N, np.dtype(dtype).itemsize), flops=_flops(nsig, L, N),
                peer="torch.dense(gpu)" if dtype == np.float32 else None, goal=GOAL_GPU, repeats=10)


def _torch_dense_case(nsig, L, N):
    def setup():
        import torch

        from refimpl.hippo.cpu import dense_matrices

        Ad, Bd = dense_matrices(N, L, 0.5, np.float32)
        AdT = torch.as_tensor(Ad).cuda().transpose(1, 2).contiguous()
        Bd = torch.as_tensor(Bd).cuda()
        f = torch.randn(nsig, L, device="cuda")
        out = torch.empty(nsig, L, N, device="cuda")

        def run():  # S4's HiPPOScale.forward: c = F.linear(c, A_stacked[t]) + B_stacked[t] * f
            c = torch.zeros(nsig, N, device="cuda")
            for k in range(L):
                c = torch.addmm(f[:, k, None] * Bd[k], c, AdT[k])
                out[:, k] = c
            return out

        return run

    return Case("legs_online", "torch.dense(gpu)", "float32", {"signals": nsig, "L": L, "N": N}, setup,
                bytes=_bytes(nsig, L, N, 4), flops=float(nsig * L * 2 * N * N), repeats=3,
                note="dense O(N^2) update per step, one addmm + copy per step (S4's HiPPOScale)")


def _cpu_cases(nsig, L, N, with_peers):
    def numpy_setup():
        from refimpl import hippo

        f = np.random.default_rng(0).standard_normal((nsig, L)).astype(np.float32)
        return lambda: hippo.legs_online(f, N, check_finite=False)

    def cpu_setup():
        from refimpl.hippo import cpu

        f = np.random.default_rng(0).standard_normal((nsig, L)).astype(np.float32)
        cpu.legs_online(f[:1, :8], N)  # compile outside the timing
        return lambda: cpu.legs_online(f, N, check_finite=False)

    def dense_setup():
        from refimpl.hippo import cpu

        f = np.random.default_rng(0).standard_normal((nsig, L)).astype(np.float32)
        mats = cpu.dense_matrices(N, L, 0.5, np.float32)
        cpu.legs_online_dense(f[:1, :8], N)
        return lambda: cpu.legs_online_dense(f, N, check_finite=False, matrices=mats)

    shape = {"signals": nsig, "L": L, "N": N}
    cases = [Case("legs_online", "cpu", "float32", shape, cpu_setup, bytes=_bytes(nsig, L, N, 4),
                  flops=_flops(nsig, L, N), peer="numpy" if with_peers else None, goal=GOAL_CPU,
                  repeats=5)]
    if with_peers:
        cases += [
            Case("legs_online", "numpy", "float32", shape, numpy_setup, bytes=_bytes(nsig, L, N, 8),
                 flops=float(nsig * L * 2 * N * N), repeats=3,
                 note="reference on float32 input (computes and returns float64): dense O(N^2) update, "
                      "Python loop over L, batched matmul per step"),
            Case("legs_online", "cpu.dense", "float32", shape, dense_setup, bytes=_bytes(nsig, L, N, 4),
                 flops=float(nsig * L * 2 * N * N), repeats=3, note="Numba, dense O(N^2) update per step"),
        ]
    return cases


def cases(quick: bool):
    nsig, L, N = (256, 1024, 64) if quick else (4096, 4096, 64)
    out = [_gpu_case(nsig, L, N, np.float32), _torch_dense_case(nsig, L, N), _gpu_case(nsig, L, N, np.float64)]
    out += _cpu_cases(nsig // 16, L, N, with_peers=True)
    if not quick:
        out += _cpu_cases(nsig, L, N, with_peers=False)
    return out
