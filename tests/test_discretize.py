"""Chapter 1: ZOH and bilinear discretization, in the reference and its cpu/gpu twins."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.signal
from twins import twins

import refimpl.discretize as ref
from refimpl.testing import assert_close, tolerance


def stable_dense(rng, batch, N, complex_=False):
    """Random A with eigenvalues in the left half-plane (shifted Gaussian), as a trained SSM has."""
    A = rng.standard_normal(batch + (N, N)) / np.sqrt(N)
    if complex_:
        A = A + 1j * rng.standard_normal(batch + (N, N)) / np.sqrt(N)
    return A - 1.5 * np.eye(N)


def s4d_modes(rng, shape):
    """S4D-style modes: negative real parts in [-1, -0.01], imaginary parts up to 10 pi."""
    return -rng.uniform(0.01, 1.0, shape) + 1j * rng.uniform(0, 10 * np.pi, shape)


# ---------------------------------------------------------------------------------------- reference vs SciPy

@pytest.mark.parametrize("rule", ["zoh", "bilinear"])
def test_dense_rules_match_scipy_cont2discrete(rule, rng):
    N, M, dt = 6, 2, 0.37
    A = stable_dense(rng, (), N)
    B = rng.standard_normal((N, M))
    Ad, Bd = getattr(ref, rule)(A, B, dt)
    sAd, sBd, *_ = scipy.signal.cont2discrete((A, B, np.eye(N), np.zeros((N, M))), dt, method=rule)
    assert_close(Ad, sAd, op=rule, dtype="float64")
    assert_close(Bd, sBd, op=rule, dtype="float64")


def test_zoh_is_exact_for_piecewise_constant_input(rng):
    """The claim that defines ZOH: stepping (Ad, Bd) equals integrating the ODE with u held over each step."""
    N, dt, steps = 4, 0.3, 7
    A = stable_dense(rng, (), N)
    B = rng.standard_normal((N, 1))
    u = rng.standard_normal(steps)
    Ad, Bd = ref.zoh(A, B, dt)
    x = np.zeros(N)
    for k in range(steps):
        x = Ad @ x + Bd[:, 0] * u[k]
    # independent truth: an adaptive ODE solver over each step with the input held constant
    from scipy.integrate import solve_ivp

    y = np.zeros(N)
    for k in range(steps):
        sol = solve_ivp(lambda t, s: A @ s + B[:, 0] * u[k], (0, dt), y, rtol=1e-12, atol=1e-14)
        y = sol.y[:, -1]
    assert_close(x, y, op="zoh", dtype="float64", rtol=1e-9)


def test_zoh_singular_A(rng):
    """A may be singular: with A = 0, Ad = I and Bd = dt*B exactly; with a nilpotent A, Bd = (dt I + dt^2/2 A) B."""
    B = rng.standard_normal((3, 2))
    Ad, Bd = ref.zoh(np.zeros((3, 3)), B, 0.5)
    np.testing.assert_array_equal(Ad, np.eye(3))
    assert_close(Bd, 0.5 * B, op="zoh", dtype="float64")
    Nil = np.array([[0.0, 1.0], [0.0, 0.0]])
    Bn = rng.standard_normal((2, 1))
    dt = 0.7
    Ad, Bd = ref.zoh(Nil, Bn, dt)
    assert_close(Ad, np.eye(2) + dt * Nil, op="zoh", dtype="float64")
    assert_close(Bd, (dt * np.eye(2) + dt**2 / 2 * Nil) @ Bn, op="zoh", dtype="float64")


def test_zoh_complex_batched_per_system_dt(rng):
    A = stable_dense(rng, (3, 2), 4, complex_=True)
    B = rng.standard_normal((3, 2, 4, 2)) + 1j * rng.standard_normal((3, 2, 4, 2))
    dt = rng.uniform(0.01, 1.0, (3, 2))
    Ad, Bd = ref.zoh(A, B, dt)
    assert Ad.dtype == np.complex128 and Ad.shape == (3, 2, 4, 4) and Bd.shape == (3, 2, 4, 2)
    for i in np.ndindex(3, 2):
        E = scipy.linalg.expm(dt[i] * A[i])
        assert_close(Ad[i], E, op="zoh", dtype="float64")
        # Bd = A^{-1}(e^{dt A} - I) B where A is invertible (it is here): an independent formula
        assert_close(Bd[i], np.linalg.solve(A[i], (E - np.eye(4)) @ B[i]), op="zoh", dtype="float64")


def test_zoh_diag_equals_dense_zoh_of_diagonal(rng):
    Lam = s4d_modes(rng, (3, 5))
    B = rng.standard_normal((3, 5)) + 1j * rng.standard_normal((3, 5))
    dt = rng.uniform(1e-3, 1.0, 3)
    Ad, Bd = ref.zoh_diag(Lam, B, dt)
    for h in range(3):
        dAd, dBd = ref.zoh(np.diag(Lam[h]), np.diag(B[h]), dt[h])  # B as a diagonal: N independent inputs
        assert_close(Ad[h], np.diag(dAd), op="zoh_diag", dtype="float64")
        assert_close(Bd[h], np.diag(dBd), op="zoh_diag", dtype="float64")


def test_bilinear_diag_equals_dense_bilinear(rng):
    Lam = s4d_modes(rng, (4,))
    B = rng.standard_normal(4)
    Ad, Bd = ref.bilinear_diag(Lam, B, 0.1)
    dAd, dBd = ref.bilinear(np.diag(Lam), B[:, None], 0.1)
    assert_close(Ad, np.diag(dAd), op="bilinear", dtype="float64")
    assert_close(Bd, dBd[:, 0], op="bilinear", dtype="float64")


def test_zoh_diag_tiny_steps_keep_every_digit():
    """expm1 keeps full relative accuracy as dt*Lambda -> 0, where (exp(z) - 1)/z loses all of it."""
    Lam = np.array([-0.5 + 3.0j, -1.0 + 0j, 2.0j, -1e-3 + 0j])
    B = np.ones(4)
    for dt in (1e-4, 1e-8, 1e-12, 1e-16):
        _, Bd = ref.zoh_diag(Lam, B, dt)
        z = dt * Lam
        # Taylor series of dt*(e^z - 1)/z, exact to double precision for |z| <= 1e-3
        series = dt * (1 + z / 2 + z**2 / 6 + z**3 / 24 + z**4 / 120)
        assert_close(Bd, series, op="zoh_diag", dtype="float64", rtol=1e-14)
    _, Bd = ref.zoh_diag(np.zeros(3), np.arange(1.0, 4.0), 0.25)  # Lambda = 0: the limit dt*B
    np.testing.assert_array_equal(Bd, 0.25 * np.arange(1.0, 4.0))


def test_naive_phi1_fails_in_float32_and_expm1_does_not():
    """The chapter's figure, as a test: (exp(z) - 1)/z in float32 is wrong by O(1) at z = 1e-8."""
    z = np.float32(1e-8)
    naive = (np.exp(z) - np.float32(1)) / z
    assert abs(naive - 1) > 0.5
    assert abs(np.expm1(z) / z - 1) < 1e-6


def test_mamba_euler_B_gap_is_half_dt_A():
    """Mamba's rule (ZOH for A, Euler dt*B for B) differs from ZOH's B by a factor phi1(dt*A) = 1 + dt*A/2 + ..."""
    Lam = np.array([-0.1, -1.0, -3.0])
    for dt in (1e-3, 1e-2):
        _, Bd = ref.zoh_diag(Lam, np.ones(3), dt)
        rel_gap = np.abs(dt - Bd) / np.abs(Bd)
        assert_close(rel_gap, np.abs(dt * Lam) / 2, op="zoh_diag", dtype="float64", rtol=5 * np.abs(dt * Lam).max())


# ------------------------------------------------------------------------------------- the three implementations

@pytest.mark.parametrize("impl", twins("discretize"))
@pytest.mark.parametrize("dtype", ["complex64", "complex128", "float32"])
def test_zoh_diag_twins(impl, dtype, rng):
    if impl.name == "gpu" and dtype == "complex128":
        pytest.skip("the GPU twin computes in complex64 / float32 only (contract)")
    H, N = 37, 19  # not powers of two
    Lam = s4d_modes(rng, (H, N))
    B = rng.standard_normal((H, N)) + 1j * rng.standard_normal((H, N))
    if dtype == "float32":
        Lam, B = Lam.real, B.real
    dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), H)).astype(np.float32)
    Lam, B = Lam.astype(dtype), B.astype(dtype)  # the expected values start from the same rounded inputs
    expect_Ad, expect_Bd = ref.zoh_diag(Lam, B, dt)
    Ad, Bd = impl.zoh_diag(Lam, B, dt)
    Ad, Bd = impl.to_host(Ad), impl.to_host(Bd)
    want = np.dtype(dtype) if impl.name != "reference" else expect_Ad.dtype
    assert Bd.dtype == want and Bd.shape == (H, N)
    cmp_dtype = "float64" if impl.name == "reference" else dtype
    assert_close(Ad, expect_Ad, op="zoh_diag", dtype=cmp_dtype, name="Ad")
    assert_close(Bd, expect_Bd, op="zoh_diag", dtype=cmp_dtype, name="Bd")


@pytest.mark.parametrize("impl", twins("discretize"))
def test_zoh_diag_twins_tiny_steps(impl):
    """Down to |dt*Lambda| = 1e-8 (the issue's bar): the twins' expm1 forms hold every float32 digit."""
    mags = np.logspace(-8, 0, 33)
    angles = np.linspace(0, np.pi, 7)
    Lam = (-(mags[:, None]) * np.exp(1j * angles[None, :])).reshape(-1) * 1.0  # all directions, |Lambda| small
    B = np.ones_like(Lam)
    dt = np.float32(1.0)
    Lam, B = Lam.astype(np.complex64), B.astype(np.complex64)
    eLam, eB = ref.zoh_diag(Lam, B, 1.0)
    Ad, Bd = impl.zoh_diag(Lam, B, dt)
    Bd = impl.to_host(Bd)
    # elementwise relative error, the strict form: every mode, not only on average
    rel = np.abs(Bd - eB) / np.abs(eB)
    assert rel.max() < (1e-13 if impl.name == "reference" else 5e-7), rel.max()


@pytest.mark.parametrize("impl", twins("discretize"))
@pytest.mark.parametrize("dtype", ["float32", "float64", "complex64"])
def test_zoh_twins(impl, dtype, rng):
    if impl.name == "gpu" and dtype == "float64":
        pytest.skip("the GPU twin computes in float32 / complex64 only (contract)")
    batch, N, M = (5, 3), 6, 2
    A = stable_dense(rng, batch, N, complex_="complex" in dtype)
    B = rng.standard_normal(batch + (N, M))
    dt = rng.uniform(0.01, 2.0, batch).astype(np.float32)
    A, B = A.astype(dtype), B.astype(dtype)
    eAd, eBd = ref.zoh(A, B, dt)
    Ad, Bd = impl.zoh(A, B, dt)
    Ad, Bd = impl.to_host(Ad), impl.to_host(Bd)
    assert Ad.shape == batch + (N, N) and Bd.shape == batch + (N, M)
    if impl.name != "reference":
        assert Ad.dtype == np.dtype(dtype)
    cmp_dtype = "float64" if impl.name == "reference" else dtype
    assert_close(Ad, eAd, op="zoh", dtype=cmp_dtype, name="Ad")
    assert_close(Bd, eBd, op="zoh", dtype=cmp_dtype, name="Bd")


@pytest.mark.parametrize("impl", twins("discretize"))
def test_zoh_twins_large_norm_and_singular(impl, rng):
    """Scaling and squaring: ||dt*A|| up to ~50 (many squarings), and a singular A."""
    A = stable_dense(rng, (4,), 5) * 10
    A[0] = 0.0  # singular: Bd must be dt*B exactly in the limit
    B = rng.standard_normal((4, 5, 1))
    dt = np.array([0.3, 1.0, 2.0, 5.0], np.float32)
    A, B = A.astype(np.float32), B.astype(np.float32)
    eAd, eBd = ref.zoh(A, B, dt)
    Ad, Bd = impl.zoh(A, B, dt)
    assert_close(impl.to_host(Ad), eAd, op="zoh", dtype="float32", name="Ad")
    assert_close(impl.to_host(Bd), eBd, op="zoh", dtype="float32", name="Bd")


@pytest.mark.parametrize("impl", twins("discretize"))
def test_zoh_diag_broadcasting(impl, rng):
    """Lambda shared across channels (N,), B per channel (H, N), dt per channel (H,)."""
    Lam = s4d_modes(rng, (8,))
    B = rng.standard_normal((3, 8)) + 0j
    dt = np.array([0.1, 0.01, 0.5], np.float32)
    Lam, B = Lam.astype(np.complex64), B.astype(np.complex64)
    eAd, eBd = ref.zoh_diag(Lam, B, dt)
    Ad, Bd = impl.zoh_diag(Lam, B, dt)
    assert impl.to_host(Ad).shape == (3, 8)
    assert_close(impl.to_host(Bd), eBd, op="zoh_diag", dtype="complex64")
    assert_close(impl.to_host(Ad), eAd, op="zoh_diag", dtype="complex64")


# ------------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("impl", twins("discretize"))
def test_bad_input_names_the_argument(impl):
    f32 = np.float32
    with pytest.raises(ValueError, match=r"A: expected shape \(\.\.\., N, N\)"):
        impl.zoh(np.ones((3, 4), f32), np.ones((3, 1), f32), 0.1)
    with pytest.raises(ValueError, match=r"B: expected shape \(\.\.\., 3, M\).*got \(4, 1\)"):
        impl.zoh(np.ones((3, 3), f32), np.ones((4, 1), f32), 0.1)
    with pytest.raises(ValueError, match=r"dt: expected a scalar or the batch shape \(2,\)"):
        impl.zoh(np.ones((2, 3, 3), f32), np.ones((2, 3, 1), f32), np.ones(3))
    with pytest.raises(ValueError, match="A: contains NaN"):
        impl.zoh(np.array([[np.nan]], f32), np.ones((1, 1), f32), 0.1)
    with pytest.raises(ValueError, match=r"dt: expected a scalar or the batch shape \(3,\)"):
        impl.zoh_diag(np.ones((3, 4), f32), np.ones((3, 4), f32), np.ones(4))
    with pytest.raises(ValueError, match="Lambda: contains NaN"):
        impl.zoh_diag(np.array([np.nan, 1], f32), np.ones(2, f32), 1.0)
    with pytest.raises(ValueError, match="dt: contains NaN"):
        impl.zoh_diag(np.ones(2, f32), np.ones(2, f32), np.inf)
    with pytest.raises(ValueError, match="shapes do not broadcast: Lambda"):
        impl.zoh_diag(np.ones((2, 3), f32), np.ones((2, 4), f32), 1.0)
    with pytest.raises(TypeError, match="dt: expected a real array"):
        impl.zoh_diag(np.ones(2, f32), np.ones(2, f32), 1j)


def test_inputs_untouched(rng):
    A = stable_dense(rng, (2,), 3)
    B = rng.standard_normal((2, 3, 1))
    A0, B0 = A.copy(), B.copy()
    ref.zoh(A, B, np.array([0.1, 0.2]))
    np.testing.assert_array_equal(A, A0)
    np.testing.assert_array_equal(B, B0)


def test_tolerance_rows_exist_for_every_op():
    for op in ("zoh", "zoh_diag", "bilinear", "bilinear_diag"):
        for dt in ("float64", "float32", "complex64"):
            rtol, atol = tolerance(op, dt)
            assert 0 < rtol < 1e-3 and 0 < atol


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_zoh_diag_past_2_31_elements():
    """More than 2^31 modes (float32, ~35 GB on the device): the 64-bit index path, checked by sampling."""
    import cupy as cp

    import refimpl.discretize.gpu as gpu

    N = 64
    H = (2**31 + 2**22) // N
    n = H * N
    assert n > 2**31
    rs = cp.random.RandomState(7)
    lam = -rs.uniform(0.01, 1.0, (H, N), dtype=cp.float32)
    b = rs.standard_normal((H, N), dtype=cp.float32)
    dt = rs.uniform(1e-3, 1e-1, H, dtype=cp.float32)
    ad, bd = gpu.zoh_diag(lam, b, dt, check_finite=False)
    del b
    idx = np.concatenate([np.arange(64), np.random.default_rng(1).integers(0, n, 4096), np.arange(n - 64, n),
                          np.arange(2**31 - 64, 2**31 + 64)])
    rows, cols = idx // N, idx % N
    l_s, d_s = cp.asnumpy(lam[rows, cols]), cp.asnumpy(dt[rows])
    e_ad, _ = ref.zoh_diag(l_s[:, None], np.ones((idx.size, 1)), d_s)
    assert_close(cp.asnumpy(ad[rows, cols]), e_ad[:, 0], op="zoh_diag", dtype="float32")
    assert bool(cp.isfinite(bd[-1]).all())
