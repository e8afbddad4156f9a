"""Chapter 1 benchmarks: zoh_diag (memory-bound) and batched dense zoh."""

from __future__ import annotations

import numpy as np

from benchmarks.core import Case

GOAL_DIAG = "gpu zoh_diag complex64, 2^26 modes: >= 80% of copy bandwidth (PERFORMANCE.md)"


def _diag_inputs(H, N, xp=np, dtype=np.complex64, seed=0):
    rng = np.random.default_rng(seed)
    lam = (-rng.uniform(0.01, 1, (H, N)) + 1j * rng.uniform(0, 30, (H, N))).astype(dtype)
    b = (rng.standard_normal((H, N)) + 1j * rng.standard_normal((H, N))).astype(dtype)
    dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), H)).astype(np.float32)
    return xp.asarray(lam), xp.asarray(b), xp.asarray(dt)


def _diag_case(impl, H, N, note=""):
    n = H * N
    nbytes = n * 32 + H * 4  # read Lambda, B (8 B each), write Ad, Bd (8 B each), dt once per channel

    def setup():
        if impl == "numpy":
            import refimpl.discretize as m

            lam, b, dt = _diag_inputs(H, N, dtype=np.complex128)
            return lambda: m.zoh_diag(lam, b, dt, check_finite=False)
        if impl == "cpu":
            import refimpl.discretize.cpu as m

            lam, b, dt = _diag_inputs(H, N)
            m.zoh_diag(lam, b, dt)  # compile
            return lambda: m.zoh_diag(lam, b, dt, check_finite=False)
        import cupy as cp

        lam, b, dt = _diag_inputs(H, N, xp=cp)
        if impl == "gpu":
            import refimpl.discretize.gpu as m

            return lambda: m.zoh_diag(lam, b, dt, check_finite=False)
        # peer: the same formula as CuPy elementwise expressions (several passes over memory)
        def expr():
            z = dt[:, None] * lam
            return cp.exp(z), cp.where(z == 0, 1, cp.expm1(z) / z) * dt[:, None] * b

        return expr

    return Case(op="zoh_diag", impl=impl, dtype="complex128" if impl == "numpy" else "complex64",
                shape={"H": H, "N": N}, setup=setup, bytes=nbytes, flops=0, bound="memory",
                peer="cupy-expr(gpu)" if impl == "gpu" else ("numpy" if impl == "cpu" else None),
                goal=GOAL_DIAG if impl == "gpu" else "cpu: >= 20x the NumPy reference", note=note)


def _dense_case(impl, batch, N, M):
    n = N + M

    def inputs(xp):
        rng = np.random.default_rng(1)
        A = (rng.standard_normal((batch, N, N)) / np.sqrt(N) - 1.5 * np.eye(N)).astype(np.float32)
        B = rng.standard_normal((batch, N, M)).astype(np.float32)
        dt = rng.uniform(0.01, 1.0, batch).astype(np.float32)
        return xp.asarray(A), xp.asarray(B), xp.asarray(dt)

    def setup():
        if impl == "numpy":
            import refimpl.discretize as m

            A, B, dt = inputs(np)
            return lambda: m.zoh(A, B, dt, check_finite=False)
        if impl == "cpu":
            import refimpl.discretize.cpu as m

            A, B, dt = inputs(np)
            m.zoh(A[:2], B[:2], dt[:2])
            return lambda: m.zoh(A, B, dt, check_finite=False)
        if impl == "gpu":
            import cupy as cp

            import refimpl.discretize.gpu as m

            A, B, dt = inputs(cp)
            return lambda: m.zoh(A, B, dt, check_finite=False)
        import torch  # peer: torch.linalg.matrix_exp on the augmented matrix, on the GPU

        A, B, dt = (torch.as_tensor(a, device="cuda") for a in inputs(np))
        X = torch.zeros((batch, n, n), device="cuda")

        def peer():
            X[:, :N, :N] = A * dt[:, None, None]
            X[:, :N, N:] = B * dt[:, None, None]
            return torch.linalg.matrix_exp(X)

        return peer

    # arithmetic: about 6 n x n matmuls (Pade) + ~s squarings + a solve: ~ (8 + s) * 2 n^3 per system
    return Case(op="zoh", impl=impl, dtype="float64" if impl == "numpy" else "float32",
                shape={"batch": batch, "N": N, "M": M}, setup=setup, bytes=batch * (2 * N * N + 2 * N * M + 1) * 4,
                flops=batch * 10 * 2 * n**3, bound="memory",
                peer={"gpu": "torch.matrix_exp(gpu)", "cpu": "numpy"}.get(impl), goal="cpu: >= 20x the NumPy reference")


def cases(quick):
    big = (1 << 10, 1 << 6) if quick else (1 << 20, 1 << 6)  # 2^26 modes on the GPU
    cpu = (1 << 10, 1 << 6) if quick else (1 << 16, 1 << 6)  # 2^22 modes on the host
    out = [_diag_case("numpy", *cpu, note="2^22 modes on the host"), _diag_case("cpu", *cpu, note="2^22 modes"),
           _diag_case("gpu", *big), _diag_case("cupy-expr(gpu)", *big)]
    nb = 256 if quick else 65536
    out += [_dense_case("numpy", min(nb, 4096), 16, 1), _dense_case("cpu", min(nb, 4096), 16, 1),
            _dense_case("gpu", nb, 16, 1), _dense_case("torch.matrix_exp(gpu)", nb, 16, 1)]
    return out
