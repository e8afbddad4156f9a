"""Chapter 2: HiPPO-LegS. Every claim of notebooks/02_hippo.ipynb is a test here."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.special

import refimpl.hippo as hippo
from refimpl.testing import assert_close
from twins import twins


def exact_coefficients(fn, N, t, q=256):
    """c_n(t) = (1/t) ∫₀ᵗ f(x) √(2n+1) P_n(2x/t − 1) dx by Gauss–Legendre quadrature (NumPy's P_n)."""
    z, w = np.polynomial.legendre.leggauss(q)
    G = np.sqrt(2 * np.arange(N) + 1) * np.polynomial.legendre.legvander(z, N - 1)
    return 0.5 * (w * fn((z + 1) * t / 2)) @ G


def smooth_signal(rng, J=4, omega_max=30.0):
    """A random band-limited signal f and its derivative f′ (sums of J sinusoids)."""
    a, om, ph = rng.standard_normal(J), rng.uniform(0, omega_max, J), rng.uniform(0, 2 * np.pi, J)
    f = lambda x: (a * np.sin(np.multiply.outer(x, om) + ph)).sum(-1)  # noqa: E731
    df = lambda x: (a * om * np.cos(np.multiply.outer(x, om) + ph)).sum(-1)  # noqa: E731
    return f, df


# ---------------------------------------------------------------------------------------------------------
# the matrices


@pytest.mark.parametrize("N", [1, 2, 7, 64])
def test_legs_entries(N):
    A, B = hippo.legs(N)
    assert A.shape == (N, N) and B.shape == (N,) and A.dtype == B.dtype == np.float64
    for n in range(N):
        assert B[n] == np.sqrt(2 * n + 1)
        for k in range(N):
            want = -np.sqrt(2 * n + 1) * np.sqrt(2 * k + 1) if n > k else (-(n + 1.0) if n == k else 0.0)
            assert A[n, k] == pytest.approx(want, rel=1e-15)
    assert not np.signbit(A[np.triu_indices(N, 1)]).any()  # +0.0 above the diagonal


def test_legs_ode_from_projection():
    """The derivation: the exact coefficients of the history obey dc/dt = (A c + B f(t))/t."""
    f = lambda x: np.sin(3 * x) + x**2 - 0.5 * np.cos(11 * x)  # noqa: E731
    N, t, h = 12, 1.7, 1e-3
    A, B = hippo.legs(N)
    c = lambda s: exact_coefficients(f, N, s)  # noqa: E731
    dcdt = (c(t - 2 * h) - 8 * c(t - h) + 8 * c(t + h) - c(t + 2 * h)) / (12 * h)  # fourth order
    rhs = (A @ c(t) + B * f(t)) / t
    np.testing.assert_allclose(dcdt, rhs, rtol=0, atol=1e-9 * np.abs(rhs).max())


@pytest.mark.parametrize("N", [1, 2, 7, 64])
def test_nplr(N):
    A, _ = hippo.legs(N)
    Lambda, P, B, V = hippo.legs_nplr(N)
    for x, shape in ((Lambda, (N,)), (P, (N,)), (B, (N,)), (V, (N, N))):
        assert x.shape == shape and x.dtype == np.complex128
    np.testing.assert_allclose(V @ V.conj().T, np.eye(N), atol=1e-13)  # unitary
    np.testing.assert_allclose(Lambda.real, -0.5, atol=1e-13)  # real parts −½
    recon = V @ (np.diag(Lambda) - np.outer(P, P.conj())) @ V.conj().T
    assert np.abs(recon - A).max() <= 1e-9 * max(1.0, np.abs(A).max())
    assert np.abs(recon.imag).max() <= 1e-9
    np.testing.assert_allclose(V @ P, np.sqrt(np.arange(N) + 0.5), atol=1e-12)  # P = √(n+½) in the eigenbasis
    np.testing.assert_allclose(V @ B, hippo.legs(N)[1], atol=1e-11)


@pytest.mark.parametrize("N", [1, 2, 7, 64])
def test_s4d_is_normal_part(N):
    """S4D-LegS: the eigenvalues of A + P Pᵀ (computed here by a general eigensolver), one per conjugate pair."""
    A, _ = hippo.legs(N)
    p = np.sqrt(np.arange(N) + 0.5)
    ev = np.linalg.eigvals(A + np.outer(p, p))
    want = np.sort_complex(ev[ev.imag > 1e-9])
    want = want[np.argsort(want.imag)]
    lam = hippo.legs_s4d(N)
    assert lam.shape == (N // 2,) and lam.dtype == np.complex128
    assert np.all(np.diff(lam.imag) > 0) and np.all(lam.imag > 0)
    np.testing.assert_allclose(lam, want, rtol=1e-10, atol=1e-10)


def test_eigvec_cond_closed_form():
    """κ(V) from the closed forms matches eig where eig is accurate, passes 1e20 by N = 32, grows ~ 4^N."""
    for N in range(2, 10):
        A, _ = hippo.legs(N)
        _, V = np.linalg.eig(A)
        assert hippo.legs_eigvec_cond(N) == pytest.approx(np.linalg.cond(V / np.linalg.norm(V, axis=0)), rel=1e-6)
    conds = [hippo.legs_eigvec_cond(N) for N in range(2, 65)]
    assert np.all(np.diff(np.log(conds)) > 0)
    assert hippo.legs_eigvec_cond(32) > 1e20 and hippo.legs_eigvec_cond(64) > 1e40
    # what floating point eig reports instead is capped near 1/eps
    _, V = np.linalg.eig(hippo.legs(64)[0])
    assert np.linalg.cond(V / np.linalg.norm(V, axis=0)) < 1e-20 * hippo.legs_eigvec_cond(64)


# ---------------------------------------------------------------------------------------------------------
# the O(N) structure


def test_matvec_and_solve_are_O_N_dense(rng):
    N = 37
    A, B = hippo.legs(N)
    c = rng.standard_normal((3, N))
    assert_close(hippo.legs_matvec(c), c @ A.T, op="legs_matvec", dtype="float64")
    for h in (0.0, 0.5 / 3, 1.0, 7.25):
        r = rng.standard_normal((3, N))
        want = np.linalg.solve(np.eye(N) - h * A, r.T).T
        assert_close(hippo.legs_solve(r, h), want, op="legs_solve", dtype="float64")
    for alpha in (0.0, 0.5, 1.0):
        for k in (1, 2, 17, 1000):
            fk = rng.standard_normal(3)
            M = np.eye(N) - alpha / k * A
            dense = np.linalg.solve(M, ((np.eye(N) + (1 - alpha) / k * A) @ c.T + np.outer(B, fk) / k)).T
            assert_close(hippo.legs_step(c, fk, k, alpha), dense, op="legs_step", dtype="float64")


@pytest.mark.parametrize("method", ["bilinear", "backward", "euler"])
def test_online_O_N_recurrence_equals_dense(rng, method):
    f = rng.standard_normal((2, 60))
    c = np.zeros((2, 20))
    ref = hippo.legs_online(f, 20, method=method)
    for k in range(1, 61):
        c = hippo.legs_step(c, f[:, k - 1], k, hippo.METHODS[method])
        assert_close(c, ref[:, k - 1], op="legs_online", dtype="float64")


# ---------------------------------------------------------------------------------------------------------
# the three implementations of legs_online agree


CASES = [((50,), 1), ((3, 200), 5), ((2, 3, 300), 64), ((4, 128), 100), ((2, 64), 300)]


@pytest.mark.parametrize("impl", twins("hippo"))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("method", ["bilinear", "backward", "euler"])
def test_online_twins_agree(impl, dtype, method, rng):
    if method == "euler" and dtype == "float32":
        pytest.skip("forward Euler overflows float32 (tested in test_euler_float32_refused)")
    for shape, N in CASES:
        if impl.name == "reference" and N > 5:
            continue  # the reference against itself: the small cases check its dtype and shape
        f = rng.standard_normal(shape).astype(dtype)  # the reference runs on the same (rounded) samples
        expected = hippo.legs_online(f, N, method=method)
        arg = f
        if impl.name == "gpu":
            import cupy as cp

            arg = cp.asarray(f)  # on the device first, so that the output is the only allocation left
            _poison_pool(expected.size, np.dtype(dtype).itemsize)
        got = impl.legs_online(arg, N, method=method)
        want_dtype = np.float64 if impl.name == "reference" else np.dtype(dtype)
        got = impl.to_host(got)
        assert got.shape == shape + (N,) and got.dtype == want_dtype
        assert_close(got, expected, op="legs_online", dtype=dtype if impl.name != "reference" else "float64")


@pytest.mark.parametrize("impl", twins("hippo", names=("cpu", "gpu")))
def test_euler_float32_refused(impl):
    with pytest.raises(ValueError, match="method"):
        impl.legs_online(np.ones((2, 10), np.float32), 16, method="euler")


def test_cpu_dense_peer_agrees(rng):
    from refimpl.hippo import cpu

    f = rng.standard_normal((3, 150))
    assert_close(cpu.legs_online_dense(f, 24), hippo.legs_online(f, 24), op="legs_online", dtype="float64")


def _poison_pool(n, itemsize):
    """Fill a block of the CuPy memory pool with NaN and free it, so an uninitialized output would show."""
    import cupy as cp

    dt = cp.float32 if itemsize == 4 else cp.float64
    x = cp.full(n, cp.nan, dtype=dt)
    del x


@pytest.mark.gpu
def test_gpu_64bit_offsets_kernel_matches(monkeypatch, rng):
    from refimpl.hippo import gpu

    monkeypatch.setattr(gpu, "_FORCE_WIDE", True)
    f = rng.standard_normal((5, 333))
    assert_close(gpu.legs_online(f.astype(np.float32), 64).get(), hippo.legs_online(f, 64),
                 op="legs_online", dtype="float32")


@pytest.mark.gpu
@pytest.mark.parametrize("q", [2, 4, 8, 16])
def test_gpu_layouts(monkeypatch, rng, q):
    """Every split of the state over lanes (Q states per lane, G lanes per signal) computes the same thing."""
    from refimpl.hippo import gpu

    monkeypatch.setattr(gpu, "_Q", q)
    for shape, N in [((3, 70), 3), ((5, 41), 17), ((2, 2, 100), 64), ((3, 50), 130)]:
        f = rng.standard_normal(shape)
        for dtype in ("float32", "float64"):
            assert_close(gpu.legs_online(f.astype(dtype), N).get(), hippo.legs_online(f.astype(dtype), N),
                         op="legs_online", dtype=dtype)


@pytest.mark.gpu
def test_gpu_past_2_31_elements(rng):
    """An output of 2^31 float32 elements (8.6 GB): the last signals are right (64-bit offsets)."""
    import cupy as cp

    from refimpl.hippo import gpu

    nsig, L, N = 1 << 15, 1 << 10, 64
    free = cp.cuda.runtime.memGetInfo()[0]
    if free < nsig * L * N * 4 * 1.2:
        pytest.skip("needs ~10 GB of free device memory")
    f = cp.asarray(rng.standard_normal((nsig, L)).astype(np.float32))
    out = gpu.legs_online(f, N)
    tail = out[-2:].get()
    del out
    assert_close(tail, hippo.legs_online(f[-2:].get(), N), op="legs_online", dtype="float32")


# ---------------------------------------------------------------------------------------------------------
# what the state means: reconstruction, its error, scale invariance


def test_reconstruct_matches_scipy_legendre(rng):
    c = rng.standard_normal((2, 3, 9))
    t = np.array([[1.0], [2.5]])  # broadcasts with c's batch (2, 3)
    x = rng.uniform(0, 1, (7,))
    got = hippo.legs_reconstruct(c, x, t)
    n = np.arange(9)
    z = 2 * x[None, None, :] / t[..., None] - 1  # (2, 1, 7)
    G = np.sqrt(2 * n + 1) * scipy.special.eval_legendre(n, z[..., None])
    assert got.shape == (2, 3, 7)
    assert_close(got, np.einsum("...mn,...n->...m", G, c), op="legs_reconstruct", dtype="float64")


def test_reconstruct_is_the_projection():
    """A polynomial of degree < N is reproduced exactly from its exact coefficients (on any [0, t])."""
    poly = np.polynomial.Polynomial([0.3, -1.0, 2.0, 0.5, -0.25])
    for t in (0.1, 1.0, 40.0):
        c = exact_coefficients(lambda x: poly(x / t), 8, t)
        x = np.linspace(0, t, 50)
        assert_close(hippo.legs_reconstruct(c, x, t), poly(x / t), op="legs_reconstruct", dtype="float64")


def test_online_error_bound(rng):
    """‖c_k − c(t_k)‖₂ ≤ 8 (‖f‖∞ + t_k ‖f′‖∞) / k (the chapter's first-order bound in log time; the constant
    measured on such signals is below 3.6), and the reconstruction error is at most the truncation error
    plus that (Parseval)."""
    N, T = 64, 1.0
    for _ in range(3):
        f, df = smooth_signal(rng)
        xs = np.linspace(0, T, 20001)
        fmax, dmax = np.abs(f(xs)).max(), np.abs(df(xs)).max()
        L = 1024
        tk = np.arange(1, L + 1) * T / L
        c = hippo.legs_online(f(tk), N)
        for k in (1, 4, 16, 64, 256, 1024):
            cstar = exact_coefficients(f, N, tk[k - 1])
            err = np.linalg.norm(c[k - 1] - cstar)
            assert err <= 8 * (fmax + tk[k - 1] * dmax) / k
            # reconstruction error in L2(μ_t) by quadrature: ≤ truncation error + coefficient error
            z, w = np.polynomial.legendre.leggauss(256)
            x = (z + 1) * tk[k - 1] / 2
            rms = lambda g: np.sqrt(0.5 * np.sum(w * g**2))  # noqa: E731
            trunc = rms(f(x) - hippo.legs_reconstruct(cstar, x, tk[k - 1]))
            recon = rms(f(x) - hippo.legs_reconstruct(c[k - 1], x, tk[k - 1]))
            assert recon <= trunc + err + 1e-12
            assert abs(rms(hippo.legs_reconstruct(c[k - 1] - cstar, x, tk[k - 1])) - err) <= 1e-9 * (1 + err)


def test_online_is_first_order():
    """Halving the step halves the error at a fixed time (first order in Δ)."""
    f = lambda x: np.sin(4 * x) + 0.3 * x  # noqa: E731
    N, T = 32, 2.0
    errs = []
    for L in (256, 512, 1024):
        c = hippo.legs_online(f(np.arange(1, L + 1) * T / L), N)
        errs.append(np.linalg.norm(c[-1] - exact_coefficients(f, N, T)))
    for a, b in zip(errs, errs[1:]):
        assert 1.6 < a / b < 2.5


def test_scale_invariance(rng):
    """LegS: dilating time by s maps the state trajectory onto itself. (1) the exact coefficients of f on
    [0, t] and of f(·/s) on [0, s·t] are equal; (2) legs_online of f sampled at rate 1/Δ, and of f(·/s)
    sampled at the same rate (s times more samples), agree at matching times to the discretization error;
    (3) a time-invariant system (dc/dt = A c + B f, bilinear with the same Δ) does not."""
    from refimpl.discretize import bilinear

    f, _ = smooth_signal(rng, omega_max=10.0)
    s, N, T, L = 3, 32, 2.0, 400
    g = lambda x: f(x / s)  # noqa: E731
    for t in (0.3, 1.0, 2.0):
        np.testing.assert_allclose(exact_coefficients(g, N, s * t), exact_coefficients(f, N, t), atol=1e-12)
    dx = T / L
    cf = hippo.legs_online(f(np.arange(1, L + 1) * dx), N)
    cg = hippo.legs_online(g(np.arange(1, s * L + 1) * dx), N)
    A, B = hippo.legs(N)
    Ad, Bd = bilinear(A, B[:, None], dx)
    def lti(u):
        c, out = np.zeros(N), []
        for uk in u:
            c = Ad @ c + Bd[:, 0] * uk
            out.append(c)
        return np.array(out)
    lf, lg = lti(f(np.arange(1, L + 1) * dx)), lti(g(np.arange(1, s * L + 1) * dx))
    for k in (L // 2, L):  # LegS: within the O(1/k) discretization error (measured 1-3% here); LTI: O(1)
        assert np.linalg.norm(cg[s * k - 1] - cf[k - 1]) <= 0.06 * np.linalg.norm(cf[k - 1])
        assert np.linalg.norm(lg[s * k - 1] - lf[k - 1]) >= 0.4 * np.linalg.norm(lf[k - 1])
    # (1') in the recurrence the step Δ cancels: the same samples give the same state, bit for bit
    samples = f(np.arange(1, L + 1) * dx)
    assert np.array_equal(hippo.legs_online(samples, N), cf)


# ---------------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("fn", [hippo.legs, hippo.legs_nplr, hippo.legs_s4d, hippo.legs_eigvec_cond])
def test_bad_N_matrices(fn):
    with pytest.raises(ValueError, match="N"):
        fn(0)
    with pytest.raises(TypeError, match="N"):
        fn(2.5)


@pytest.mark.parametrize("impl", twins("hippo"))
def test_online_bad_input(impl):
    f = np.ones((2, 5))
    before = f.copy()
    with pytest.raises(ValueError, match="N"):
        impl.legs_online(f, 0)
    with pytest.raises(TypeError, match="N"):
        impl.legs_online(f, 3.0)
    with pytest.raises(ValueError, match="f"):
        impl.legs_online(np.float64(1.0), 4)  # rank 0
    bad = f.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="f"):
        impl.legs_online(bad, 4)
    with pytest.raises(ValueError, match="method"):
        impl.legs_online(f, 4, method="zoh")
    with pytest.raises(TypeError, match="f"):
        impl.legs_online(f + 1j, 4)
    np.testing.assert_array_equal(f, before)


@pytest.mark.gpu
def test_gpu_refuses_large_N():
    from refimpl.hippo import gpu

    with pytest.raises(ValueError, match="N"):
        gpu.legs_online(np.ones((1, 4)), gpu.N_MAX + 1)


def test_reconstruct_bad_input():
    c = np.ones((3, 4))
    with pytest.raises(ValueError, match="x"):
        hippo.legs_reconstruct(c, np.array([0.0, 1.5]), 1.0)
    with pytest.raises(ValueError, match="t"):
        hippo.legs_reconstruct(c, np.array([0.0]), 0.0)
    with pytest.raises(ValueError, match="c"):
        hippo.legs_reconstruct(np.float64(1.0), np.array([0.5]), 1.0)
    with pytest.raises(ValueError, match="c"):
        hippo.legs_reconstruct(np.full((3, 4), np.nan), np.array([0.5]), 1.0)
    with pytest.raises(ValueError, match="broadcast"):
        hippo.legs_reconstruct(c, np.array([0.5]), np.ones(2))


@pytest.mark.parametrize("impl", twins("hippo"))
def test_online_empty(impl):
    for shape in [(0,), (3, 0), (0, 5)]:
        got = impl.to_host(impl.legs_online(np.zeros(shape), 4))
        assert got.shape == shape + (4,)
