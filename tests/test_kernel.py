"""Chapter 3: the Vandermonde kernel and FFT convolution, in the reference and its cpu/gpu twins."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
from twins import twins

import refimpl.discretize as disc
import refimpl.kernel as ref
from refimpl.testing import assert_close, compare, to_numpy


def s4d_params(rng, H, N, dt_range=(1e-3, 1e-1), shared=False):
    """Random S4D-style parameters: Re Λ in [-1, -0.05], Im Λ up to 4π, complex B and C, log-uniform dt.

    B is scaled by 1/Δ (B̄ ≈ Δ·B) so that K is O(1): the table's atol floor (1e-6) is then far below the
    rtol term, and a twin's error cannot hide under it.
    """
    shape = (N,) if shared else (H, N)
    Lam = -rng.uniform(0.05, 1.0, shape) + 1j * rng.uniform(0, 4 * np.pi, shape)
    B = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    C = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / np.sqrt(N)
    dt = np.exp(rng.uniform(np.log(dt_range[0]), np.log(dt_range[1]), H))
    B = B / (np.median(dt) if shared else dt[:, None])
    return Lam, B, C, dt


def real_system(Ad, Bd, C, rng):
    """The real 2N-dimensional system of N conjugate pairs, in a random real basis (a dense Ad).

    Mode a + ib contributes the 2x2 rotation-scaling block [[a, -b], [b, a]]; a random similarity T
    makes Ad dense, so that C·Ad^l·Bd is computed by matrix powers with no diagonal structure to lean on.
    With x = Re z, y = Im z, 2·Re(c·z) = 2(c_r x − c_i y) reads the block state with weights (2c_r, −2c_i).
    """
    N = Ad.size
    A = np.zeros((2 * N, 2 * N))
    b = np.zeros(2 * N)
    c = np.zeros(2 * N)
    for n in range(N):
        a, w = Ad[n].real, Ad[n].imag
        A[2 * n:2 * n + 2, 2 * n:2 * n + 2] = [[a, -w], [w, a]]
        b[2 * n:2 * n + 2] = Bd[n].real, Bd[n].imag
        c[2 * n:2 * n + 2] = 2 * C[n].real, -2 * C[n].imag
    T = rng.standard_normal((2 * N, 2 * N)) + 2 * N * np.eye(2 * N)
    Ti = np.linalg.inv(T)
    return T @ A @ Ti, T @ b, c @ Ti


# ------------------------------------------------------------------------------------ reference: three faces agree

@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_vandermonde_equals_explicit_powers(rng, discretization):
    """K by the Vandermonde product == C·Ā^l·B̄ by dense matrix powers of the equivalent real system."""
    H, N, L = 3, 5, 300
    Lam, B, C, dt = s4d_params(rng, H, N)
    K = ref.vandermonde_kernel(Lam, B, C, dt, L, discretization=discretization)
    rule = disc.zoh_diag if discretization == "zoh" else disc.bilinear_diag
    Ad, Bd = rule(Lam, B, dt)
    for h in range(H):
        A2, b2, c2 = real_system(Ad[h], Bd[h], C[h], rng)
        assert_close(K[h], ref.power_kernel(A2, b2, c2, L), op="vandermonde_kernel", dtype="float64")


def test_vandermonde_equals_impulse_response(rng):
    """K == the impulse response of the recurrence, computed by SciPy's dlsim (independent of refimpl)."""
    H, N, L = 2, 4, 200
    Lam, B, C, dt = s4d_params(rng, H, N)
    K = ref.vandermonde_kernel(Lam, B, C, dt, L)
    Ad, Bd = disc.zoh_diag(Lam, B, dt)
    impulse = np.zeros(L)
    impulse[0] = 1.0
    for h in range(H):
        A2, b2, c2 = real_system(Ad[h], Bd[h], C[h], rng)
        # dlsim's y_k = C x_k + D u_k with x_{k+1} = A x_k + B u_k; ours reads x after the update, so
        # (C, D) = (c·A, c·b): y_0 = c·b, y_k = c·A^k·b.
        _, y, _ = scipy.signal.dlsim((A2, b2[:, None], (c2 @ A2)[None, :], np.array([[c2 @ b2]]), 1), impulse)
        assert_close(K[h], y[:, 0], op="vandermonde_kernel", dtype="float64")
        y_rec = ref.diag_recurrence(Lam[h:h + 1], B[h:h + 1], C[h:h + 1], dt[h:h + 1], impulse[None, :])
        assert_close(K[h], y_rec[0], op="vandermonde_kernel", dtype="float64")


def test_convolve_to_train_step_to_infer(rng):
    """Same weights, two execution plans: FFT convolution == direct sum == stepping the recurrence."""
    H, N, L = 3, 6, 257
    Lam, B, C, dt = s4d_params(rng, H, N)
    D = rng.standard_normal(H)
    u = rng.standard_normal((2, H, L))
    K = ref.vandermonde_kernel(Lam, B, C, dt, L)
    y_fft = ref.causal_conv(u, K, D)
    assert_close(y_fft, ref.direct_conv(u, K, D), op="causal_conv", dtype="float64")
    assert_close(y_fft, ref.diag_recurrence(Lam, B, C, dt, u, D=D), op="causal_conv", dtype="float64")
    for b in range(2):  # independent truth: NumPy's direct convolution, truncated to the causal part
        for h in range(H):
            y_np = np.convolve(u[b, h], K[h])[:L] + D[h] * u[b, h]
            assert_close(y_fft[b, h], y_np, op="causal_conv", dtype="float64")


def test_fft_without_padding_wraps_around(rng):
    """The 2L padding is needed: an FFT of length L computes a circular convolution that differs."""
    L = 64
    K = rng.standard_normal((1, L))
    u = rng.standard_normal((1, L))
    circular = np.fft.irfft(np.fft.rfft(u) * np.fft.rfft(K), L)
    c = compare(circular, ref.direct_conv(u, K), rtol=1e-3, atol=0)
    assert not c.passed and c.rel_l2 > 0.1
    assert_close(ref.causal_conv(u, K), ref.direct_conv(u, K), op="causal_conv", dtype="float64")


def test_conj_pairs_semantics(rng):
    """conj_pairs=True on N modes == conj_pairs=False on the 2N modes (Λ, Λ*) == 2x conj_pairs=False on N."""
    H, N, L = 2, 5, 100
    Lam, B, C, dt = s4d_params(rng, H, N)
    K = ref.vandermonde_kernel(Lam, B, C, dt, L, conj_pairs=True)
    both = [np.concatenate([a, a.conj()], axis=-1) for a in (Lam, B, C)]
    K2 = ref.vandermonde_kernel(*both, dt, L, conj_pairs=False)
    assert_close(K, K2, op="vandermonde_kernel", dtype="float64")
    assert_close(K, 2 * ref.vandermonde_kernel(Lam, B, C, dt, L, conj_pairs=False),
                 op="vandermonde_kernel", dtype="float64")
    # the full 2N sum is real by itself: the imaginary parts of a pair cancel
    W, logz = ref.modes(*both, dt, conj_pairs=False)
    full = np.einsum("hn,hnl->hl", W, np.exp(logz[..., None] * np.arange(L)))
    assert np.abs(full.imag).max() < 1e-12 * np.abs(full).max()


def test_real_modes_with_conj_pairs_false(rng):
    """S4D-Real: real Λ, B, C with conj_pairs=False is the kernel of the real diagonal system exactly."""
    N, L, dt = 6, 80, 0.05
    Lam = ref.s4d_real(N)
    B, C = rng.standard_normal(N), rng.standard_normal(N)
    K = ref.vandermonde_kernel(Lam, B, C, dt, L, conj_pairs=False)
    Ad, Bd = disc.zoh(np.diag(Lam), B[:, None], dt)
    assert K.shape == (L,)
    assert_close(K, ref.power_kernel(Ad, Bd[:, 0], C, L), op="vandermonde_kernel", dtype="float64")


def test_shared_modes_and_scalar_dt(rng):
    """(N,) modes shared by every channel broadcast against dt (H,); all-shared with scalar dt gives (L,)."""
    H, N, L = 4, 3, 50
    Lam, B, C, dt = s4d_params(rng, H, N, shared=True)
    K = ref.vandermonde_kernel(Lam, B, C, dt, L)
    assert K.shape == (H, L)
    for h in range(H):
        Kh = ref.vandermonde_kernel(Lam, B, C, dt[h], L)
        assert Kh.shape == (L,)
        assert_close(K[h], Kh, op="vandermonde_kernel", dtype="float64")


def test_bilinear_zero_mode():
    """Bilinear at Λ = −2/Δ gives Ā = 0: the mode contributes at l = 0 only (Ā^0 = 1, no 0·log 0 NaN)."""
    dt = 0.5
    K = ref.vandermonde_kernel(np.array([-2 / dt]), np.array([1.0]), np.array([1.0]), dt, 5,
                               discretization="bilinear", conj_pairs=False)
    np.testing.assert_allclose(K, [dt / 2, 0, 0, 0, 0], atol=1e-15)


def test_s4d_initializations():
    """The S4D paper's formulas, and S4D-LegS from chapter 2 when it is there."""
    np.testing.assert_allclose(ref.s4d_lin(8), -0.5 + 1j * np.pi * np.arange(4))
    inv = ref.s4d_inv(8)
    np.testing.assert_allclose(inv.imag, 8 / np.pi * (8 / (2 * np.arange(4) + 1) - 1))
    np.testing.assert_allclose(ref.s4d_real(3), [-1.0, -2.0, -3.0])
    hippo = pytest.importorskip("refimpl.hippo")
    legs = hippo.legs_s4d(16)
    assert legs.shape == (8,) and np.all(legs.real < 0)


def test_slow_modes_carry_mass_longer():
    """The chapter's kernel figure: at Δ = 1e-3, S4D-LegS, -Lin and -Inv (Re Λ = −1/2 for every mode) keep a
    few per cent of their kernel's energy beyond l = 2000; S4D-Real (Re Λ = −1..−N) keeps under 0.1 %."""
    N, L, dt = 64, 4096, 1e-3
    tail = {}
    inits = [("lin", ref.s4d_lin(N), True), ("inv", ref.s4d_inv(N), True), ("real", ref.s4d_real(N), False)]
    try:
        from refimpl.hippo import legs_s4d
    except ImportError:  # chapter 2 absent: the other three still make the claim
        legs_s4d = None
    if legs_s4d is not None:
        inits.append(("legs", legs_s4d(N), True))
    for name, lam, pairs in inits:
        K = ref.vandermonde_kernel(lam, np.ones(lam.size), np.ones(lam.size), dt, L, conj_pairs=pairs)
        tail[name] = np.sum(K[2000:] ** 2) / np.sum(K ** 2)
    assert tail["lin"] > 0.05 and tail["inv"] > 0.02 and tail["real"] < 1e-3, tail
    assert legs_s4d is None or tail["legs"] > 0.02, tail


# ------------------------------------------------------------------------------------ powers and float32 rounding

def test_exp_powers_beat_repeated_multiplication_in_float32():
    """At L = 65536 in complex64, exp(l·dtΛ) has the relative error l·|dtΛ|·eps of one rounded product (small
    for slow modes); z·z·…·z and z**l pay about l·eps whatever the mode (Ā ≈ 1 is rounded once, then powered)."""
    dtLam = np.array([-1e-4 + 2e-3j, -1e-4 + 5e-3j]).astype(np.complex64).astype(np.complex128)
    L = 65536
    exact = ref.lambda_powers(dtLam, L)
    err = {m: (np.abs(ref.lambda_powers(dtLam, L, method=m, dtype=np.complex64) - exact) / np.abs(exact)).max()
           for m in ("exp", "multiply", "power")}
    assert err["exp"] < 5e-5, err
    assert min(err["multiply"], err["power"]) > max(1e-3, 20 * err["exp"]), err


def test_tanh_rnn_cannot_be_unrolled(rng):
    """Linearized at 0, the tanh RNN has a kernel K_l = W^l·U; it predicts the RNN for tiny inputs only."""
    d, m, L = 4, 1, 60
    W = rng.standard_normal((d, d)) * 0.9 / np.sqrt(d)
    U = rng.standard_normal((d, m))
    x = rng.standard_normal((L, m))
    K = np.stack([np.linalg.matrix_power(W, l) @ U[:, 0] for l in range(L)], axis=1)  # (d, L)
    for scale, close in ((1e-5, True), (1.0, False)):
        h = ref.tanh_rnn(W, U, scale * x)
        lin = ref.causal_conv(np.broadcast_to(scale * x[:, 0], (d, L)), K).T
        c = compare(h, lin, rtol=1e-3, atol=0)
        assert c.passed == close, c


# ------------------------------------------------------------------------------------ twins

def _cast(arrays, real):
    cplx = np.complex64 if real == np.float32 else np.complex128
    return [a.astype(cplx if np.iscomplexobj(a) else real) for a in arrays]


def poison_pool():
    """Fill freshly freed device memory with NaN so that an output the kernel forgets to write shows up."""
    import cupy as cp

    junk = cp.full(1 << 24, cp.nan, dtype=cp.float32)
    del junk


@pytest.mark.parametrize("impl", twins("kernel", ("cpu", "gpu")))
@pytest.mark.parametrize("H,N,L", [(1, 1, 1), (3, 5, 7), (2, 63, 1000), (4, 130, 4099), (2, 64, 16384)])
def test_vandermonde_twins(impl, rng, H, N, L):
    """float32 twins within the table's tolerance for any L (1, not a multiple of 4 or of a tile) and any N."""
    if impl.name == "gpu":
        poison_pool()
    Lam, B, C, dt = _cast(s4d_params(rng, H, N), np.float32)
    K = impl.to_host(impl.vandermonde_kernel(Lam, B, C, dt, L))
    assert K.dtype == np.float32 and K.shape == (H, L)
    assert_close(K, ref.vandermonde_kernel(Lam, B, C, dt, L), op="vandermonde_kernel", dtype="float32")


@pytest.mark.parametrize("impl", twins("kernel", ("cpu", "gpu")))
def test_vandermonde_twins_long(impl, rng):
    """L = 65536: the twins restart every run from an accurate power, so the error does not grow with l
    (one float32 chain of 65536 multiplies, measured: 3e-4 to 1e-3, fails this)."""
    H, N, L = 4, 16, 65536  # slow channels: the last quarter keeps most of the kernel's size
    Lam, B, C, dt = _cast(s4d_params(rng, H, N, dt_range=(1e-5, 1e-4)), np.float32)
    K = impl.to_host(impl.vandermonde_kernel(Lam, B, C, dt, L))
    Kr = ref.vandermonde_kernel(Lam, B, C, dt, L)
    assert_close(K, Kr, op="vandermonde_kernel", dtype="float32")
    # the last quarter alone, relative to its own size: no phase drift at large l
    assert_close(K[:, -L // 4:], Kr[:, -L // 4:], op="vandermonde_kernel", dtype="float32")


@pytest.mark.parametrize("impl", twins("kernel", ("cpu", "gpu")))
@pytest.mark.parametrize("variant", ["shared", "real", "bilinear", "no_pairs"])
def test_vandermonde_twins_variants(impl, rng, variant):
    """Shared (N,) modes with a scalar dt, real S4D modes, the bilinear rule, conj_pairs=False."""
    H, N, L = 3, 6, 333
    Lam, B, C, dt = s4d_params(rng, H, N, shared=variant == "shared")
    kw = {}
    if variant == "shared":
        dt = np.float32(0.01)
    if variant == "real":
        Lam, C, kw = ref.s4d_real(N), rng.standard_normal((H, N)), {"conj_pairs": False}
        B = rng.standard_normal(N) / np.median(dt)
    if variant == "bilinear":
        kw = {"discretization": "bilinear"}
    if variant == "no_pairs":
        kw = {"conj_pairs": False}
    Lam, B, C, dt = _cast([Lam, B, C, np.asarray(dt)], np.float32)
    K = impl.to_host(impl.vandermonde_kernel(Lam, B, C, dt, L, **kw))
    assert_close(K, ref.vandermonde_kernel(Lam, B, C, dt, L, **kw), op="vandermonde_kernel", dtype="float32")


def test_vandermonde_cpu_float64(rng):
    """The cpu twin in float64 agrees with the reference to the float64 row of the table."""
    import refimpl.kernel.cpu as cpu

    Lam, B, C, dt = s4d_params(rng, 3, 7)
    L = 5000
    assert_close(cpu.vandermonde_kernel(Lam, B, C, dt, L), ref.vandermonde_kernel(Lam, B, C, dt, L),
                 op="vandermonde_kernel", dtype="float64")


@pytest.mark.gpu
@pytest.mark.parametrize("run", [16, 32, 64])
def test_vandermonde_gpu_runs(rng, run):
    """Every compiled run length (taps per thread) of the GPU kernel, on a tile-straddling length."""
    import refimpl.kernel.gpu as gpu

    poison_pool()
    Lam, B, C, dt = _cast(s4d_params(rng, 3, 71), np.float32)  # N > 64: two chunks of modes in shared memory
    L = 3 * 128 * run + 5
    K = to_numpy(gpu.vandermonde_kernel_run(Lam, B, C, dt, L, run=run))
    assert_close(K, ref.vandermonde_kernel(Lam, B, C, dt, L), op="vandermonde_kernel", dtype="float32")


@pytest.mark.parametrize("impl", twins("kernel", ("cpu", "gpu")))
@pytest.mark.parametrize("shape,D", [((3, 1), True), ((2, 3, 100), True), ((4, 1023), False), ((2, 16384), True)])
def test_causal_conv_twins(impl, rng, shape, D):
    """float32 FFT convolution within tolerance of the float64 reference, with and without D."""
    if impl.name == "gpu":
        poison_pool()
    H, L = shape[-2:]
    u = rng.standard_normal(shape).astype(np.float32)
    K = (rng.standard_normal((H, L)) * np.exp(-np.arange(L) / 50)).astype(np.float32)
    Dv = rng.standard_normal(H).astype(np.float32) if D else None
    y = impl.to_host(impl.causal_conv(u, K, Dv))
    assert y.dtype == np.float32 and y.shape == shape
    assert_close(y, ref.causal_conv(u, K, Dv), op="causal_conv", dtype="float32")


# ------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("impl", twins("kernel"))
def test_vandermonde_bad_input(impl, rng):
    Lam, B, C, dt = _cast(s4d_params(rng, 3, 4), np.float32)
    kept = [a.copy() for a in (Lam, B, C, dt)]
    f = impl.vandermonde_kernel
    with pytest.raises(ValueError, match="Lambda"):
        f(Lam[None], B, C, dt, 8)
    with pytest.raises(ValueError, match="B"):
        f(Lam, B[:, :3], C, dt, 8)
    with pytest.raises(ValueError, match="C"):
        f(Lam, B, C[:2], dt, 8)
    with pytest.raises(ValueError, match="dt"):
        f(Lam, B, C, dt[:2], 8)
    with pytest.raises(ValueError, match="L"):
        f(Lam, B, C, dt, 0)
    with pytest.raises(ValueError, match="discretization"):
        f(Lam, B, C, dt, 8, discretization="euler")
    bad = B.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="B"):
        f(Lam, bad, C, dt, 8)
    for a, b in zip((Lam, B, C, dt), kept):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("impl", twins("kernel"))
def test_causal_conv_bad_input(impl, rng):
    u = rng.standard_normal((2, 3, 10)).astype(np.float32)
    K = rng.standard_normal((3, 10)).astype(np.float32)
    with pytest.raises(ValueError, match="u"):
        impl.causal_conv(u[..., :9], K)
    with pytest.raises(ValueError, match="K"):
        impl.causal_conv(u, K[0])
    with pytest.raises(ValueError, match="D"):
        impl.causal_conv(u, K, np.ones(4, np.float32))
    bad = u.copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="u"):
        impl.causal_conv(bad, K)


def test_power_kernel_bad_input(rng):
    with pytest.raises(ValueError, match="Ad"):
        ref.power_kernel(np.ones((3, 2)), np.ones(2), np.ones(2), 4)
    with pytest.raises(ValueError, match="Bd"):
        ref.power_kernel(np.eye(3), np.ones(2), np.ones(3), 4)
    with pytest.raises(ValueError, match="L"):
        ref.power_kernel(np.eye(3), np.ones(3), np.ones(3), 0)
