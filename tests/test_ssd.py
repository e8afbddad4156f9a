"""Chapter 5: state space duality. Every claim of the chapter is a test here.

The four forms of ``refimpl.ssd`` agree in float64; the matrix is semiseparable; the equivalences with
linear attention, RetNet and Mamba-1's selective scan hold; the twins are within the tolerance table.
"""

from __future__ import annotations

import numpy as np
import pytest

import refimpl.ssd as ssd_ref
from refimpl.testing import assert_close
from twins import twins


def make_inputs(rng, b=2, l=37, h=4, p=3, g=2, n=5, *, dtype=np.float64, extras=True, decay=(0.5, 2.0)):
    """Random SSD inputs; dt is pre-softplus (dt_softplus=True with a bias) when ``extras``."""
    x = rng.standard_normal((b, l, h, p))
    dt = rng.standard_normal((b, l, h)) - 1.0
    A = -rng.uniform(*decay, size=h)
    B = rng.standard_normal((b, l, g, n))
    C = rng.standard_normal((b, l, g, n))
    args = [v.astype(dtype) for v in (x, dt, A, B, C)]
    kw = {}
    if extras:
        kw = dict(D=rng.standard_normal((h, p)).astype(dtype), z=rng.standard_normal((b, l, h, p)).astype(dtype),
                  dt_bias=rng.standard_normal(h).astype(dtype), dt_softplus=True,
                  initial_states=rng.standard_normal((b, h, p, n)).astype(dtype))
    else:
        args[1] = np.log1p(np.exp(args[1]))  # a positive step without softplus
    return args, kw


# ---------------------------------------------------------------------------------------------------------
# the four forms


@pytest.mark.parametrize("chunk_size", [1, 5, 8, 37, 64])
def test_four_forms_agree_float64(rng, chunk_size):
    """Recurrent, quadratic, chunked and ssd agree to 1e-10, chunk sizes dividing l = 40 or not (5, 8 do)."""
    args, kw = make_inputs(rng, l=40)
    y0, H0 = ssd_ref.ssd_recurrent(*args, **kw, return_final_states=True)
    for fn in (ssd_ref.ssd_quadratic, ssd_ref.ssd_chunked, ssd_ref.ssd):
        extra = {} if fn is ssd_ref.ssd_quadratic else {"chunk_size": chunk_size}
        y, H = fn(*args, **kw, **extra, return_final_states=True)
        assert y.dtype == np.float64 and y.shape == args[0].shape
        assert_close(y, y0, op="ssd", dtype="float64")
        assert_close(H, H0, op="ssd", dtype="float64", name="final states")


def test_forms_without_options_and_D_per_head(rng):
    args, _ = make_inputs(rng, l=19, extras=False)
    D = rng.standard_normal(4)
    y0 = ssd_ref.ssd_recurrent(*args, D=D)
    assert_close(ssd_ref.ssd_chunked(*args, D=D, chunk_size=6), y0, op="ssd", dtype="float64")
    assert_close(ssd_ref.ssd_quadratic(*args, D=D), y0, op="ssd", dtype="float64")
    # D·x alone, against the broadcast written out
    y_noD = ssd_ref.ssd_recurrent(*args)
    assert_close(y0 - y_noD, D[None, None, :, None] * args[0], op="ssd", dtype="float64")


def brute_force_matrix(dt, A, B, C, group):
    """M[b, h, t, s] = exp(Σ_{k=s+1..t} dt_k A_h)·(C_t·B_s)·dt_s by loops: a ground truth independent of refimpl."""
    b, l, h = dt.shape
    M = np.zeros((b, h, l, l))
    for bi in range(b):
        for hi in range(h):
            gi = group[hi]
            for t in range(l):
                for s in range(t + 1):
                    seg = sum(dt[bi, k, hi] * A[hi] for k in range(s + 1, t + 1))
                    M[bi, hi, t, s] = np.exp(seg) * (C[bi, t, gi] @ B[bi, s, gi]) * dt[bi, s, hi]
    return M


def test_semiseparable_matrix(rng):
    """y = M·x with M = L ∘ (C·Bᵀ)·diag(Δ), lower triangular, off-diagonal blocks of rank <= N."""
    b, l, h, p, g, n = 1, 24, 2, 3, 1, 3
    (x, dt, A, B, C), _ = make_inputs(rng, b=b, l=l, h=h, p=p, g=g, n=n, extras=False)
    M = ssd_ref.ssd_matrix(dt, A, B, C)
    assert_close(M, brute_force_matrix(dt, A, B, C, [0] * h), op="ssd", dtype="float64")
    assert np.all(np.triu(M[0, 0], 1) == 0)
    assert_close(np.einsum("bhts,bshp->bthp", M, x), ssd_ref.ssd_recurrent(x, dt, A, B, C), op="ssd",
                 dtype="float64")
    for k in (4, 12, 20):  # the block M[k:, :k] below the diagonal
        sv = np.linalg.svd(M[0, 0, k:, :k], compute_uv=False)
        assert np.sum(sv > 1e-12 * sv[0]) <= n
    # and it is not trivially low-rank: with N = 3 the rank reaches 3
    sv = np.linalg.svd(M[0, 0, 12:, :12], compute_uv=False)
    assert np.sum(sv > 1e-12 * sv[0]) == n


def test_segsum_is_stable_where_the_difference_is_not():
    """Σ_{k=s+1..t} a_k from the segment itself keeps float32 accuracy; cs_t − cs_s does not."""
    rng = np.random.default_rng(5)
    a64 = -rng.uniform(0.5, 1.5, size=4096)
    exact = ssd_ref.segsum(a64)[-1, -9:]                       # short segments far from the start
    stable = ssd_ref.segsum(a64.astype(np.float32))[-1, -9:]
    cs = np.cumsum(a64.astype(np.float32))
    diff = cs[-1] - cs[-9:]
    err_stable = np.max(np.abs(stable - exact) / np.maximum(np.abs(exact), 1e-30)) if exact.any() else 0
    rel = lambda v: np.max(np.abs(np.exp(v) - np.exp(exact)) / np.exp(exact))  # noqa: E731
    assert rel(stable) < 1e-5
    assert rel(diff) > 100 * max(rel(stable), 1e-7)
    assert err_stable < 1e-5
    assert np.all(np.isneginf(ssd_ref.segsum(a64[:5])[np.triu_indices(5, 1)]))


@pytest.mark.parametrize("impl", twins("ssd", names=("reference", "cpu")))
def test_strong_decay_stays_finite_and_right(rng, impl):
    """dt·A near -30 per step over 4096 steps: the running cumulative sum reaches -1e5, exp of differences
    would overflow; the forms stay finite and equal the recurrence (which only multiplies numbers <= 1)."""
    b, l, h, p, g, n = 1, 4096, 2, 2, 1, 4
    (x, dt, A, B, C), _ = make_inputs(rng, b=b, l=l, h=h, p=p, g=g, n=n, extras=False, decay=(20, 40))
    dt = np.ones_like(dt)
    y0, H0 = ssd_ref.ssd_recurrent(x, dt, A, B, C, return_final_states=True)
    assert np.cumsum(dt[0, :, 0] * A[0])[-1] < -8e4
    with np.errstate(over="raise", invalid="raise"):  # underflow to 0 is right
        y, H = impl.ssd(x, dt, A, B, C, chunk_size=256, return_final_states=True)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(H))
    assert_close(y, y0, op="ssd", dtype="float64")
    assert_close(H, H0, op="ssd", dtype="float64", name="final states")


# ---------------------------------------------------------------------------------------------------------
# states: carry and split


def test_initial_states_equal_splitting_the_sequence(rng):
    args, kw = make_inputs(rng, l=45)
    x, dt, A, B, C = args
    y, H = ssd_ref.ssd(*args, **kw, chunk_size=8, return_final_states=True)
    k = 17
    first = lambda v: v[:, :k]  # noqa: E731
    last = lambda v: v[:, k:]  # noqa: E731
    kw1 = dict(kw, z=first(kw["z"]))
    y1, H1 = ssd_ref.ssd(first(x), first(dt), A, first(B), first(C), **kw1, chunk_size=8, return_final_states=True)
    kw2 = dict(kw, z=last(kw["z"]), initial_states=H1)
    y2, H2 = ssd_ref.ssd(last(x), last(dt), A, last(B), last(C), **kw2, chunk_size=8, return_final_states=True)
    assert_close(np.concatenate([y1, y2], axis=1), y, op="ssd", dtype="float64")
    assert_close(H2, H, op="ssd", dtype="float64", name="final states")


@pytest.mark.parametrize("impl", twins("ssd", names=("reference", "cpu")))
def test_stepping_one_token_at_a_time_equals_chunked(rng, impl):
    """Decoding: l = 1 calls with the carried state reproduce the chunked pass over the whole sequence."""
    args, kw = make_inputs(rng, b=1, l=21, h=2, p=3, g=1, n=4)
    x, dt, A, B, C = args
    y, H = ssd_ref.ssd_chunked(*args, **kw, chunk_size=8, return_final_states=True)
    state = kw["initial_states"]
    ys = []
    for t in range(x.shape[1]):
        one = lambda v: v[:, t:t + 1]  # noqa: E731
        kwt = dict(kw, z=one(kw["z"]), initial_states=state)
        yt, state = impl.ssd(one(x), one(dt), A, one(B), one(C), **kwt, return_final_states=True)
        ys.append(yt)
    assert_close(np.concatenate(ys, axis=1), y, op="ssd", dtype="float64")
    assert_close(state, H, op="ssd", dtype="float64", name="final states")


# ---------------------------------------------------------------------------------------------------------
# equivalences


def test_linear_attention_is_ssd_with_A_zero(rng):
    """A = 0, dt = 1: causal linear attention with queries C, keys B, values x (Katharopoulos et al.)."""
    b, l, h, p, n = 2, 30, 3, 4, 5
    q = rng.standard_normal((b, l, h, n))
    k = rng.standard_normal((b, l, h, n))
    v = rng.standard_normal((b, l, h, p))
    scores = np.einsum("bthn,bshn->bhts", q, k) * np.tril(np.ones((l, l)))
    expected = np.einsum("bhts,bshp->bthp", scores, v)
    y = ssd_ref.ssd(v, np.ones((b, l, h)), np.zeros(h), k, q, chunk_size=7)  # g = h: one group per head
    assert_close(y, expected, op="ssd", dtype="float64")


def test_constant_decay_is_retnet(rng):
    """dt = 1, A = log γ: RetNet's retention (QKᵀ ∘ Γ)V with Γ[t, s] = γ^(t−s) (Sun et al.)."""
    b, l, h, p, n = 1, 33, 2, 4, 6
    gamma = np.array([0.9, 0.5])
    q = rng.standard_normal((b, l, 1, n))
    k = rng.standard_normal((b, l, 1, n))
    v = rng.standard_normal((b, l, h, p))
    t = np.arange(l)
    Gam = np.where(t[:, None] >= t[None, :], gamma[:, None, None] ** np.abs(t[:, None] - t[None, :]), 0.0)
    expected = np.einsum("bts,hts,bshp->bthp", np.einsum("btn,bsn->bts", q[:, :, 0], k[:, :, 0]), Gam, v)
    y = ssd_ref.ssd(v, np.ones((b, l, h)), np.log(gamma), k, q, chunk_size=8)
    assert_close(y, expected, op="ssd", dtype="float64")


def test_mamba1_selective_scan_with_scalar_A_per_head_is_ssd(rng):
    """Mamba-1's selective scan with channel d = (head i, column j), A[d, :] = A_i and Δ[d] = Δ_i is SSD."""
    scan = pytest.importorskip("refimpl.scan")
    args, kw = make_inputs(rng, b=2, l=26, h=4, p=3, g=2, n=5)
    x, dt, A, B, C = args
    b, l, h, p = x.shape
    n = B.shape[-1]
    y, H = ssd_ref.ssd(*args, **kw, chunk_size=8, return_final_states=True)
    chan = lambda v: v.reshape(b, l, h * p).transpose(0, 2, 1)  # (b, l, h, p) -> (b, dim, l)  # noqa: E731
    out, last = scan.selective_scan(
        chan(x), chan(np.repeat(dt[..., None], p, axis=-1)), np.repeat(A, p)[:, None] * np.ones((1, n)),
        B.transpose(0, 2, 3, 1), C.transpose(0, 2, 3, 1), D=kw["D"].reshape(-1), z=chan(kw["z"]),
        delta_bias=np.repeat(kw["dt_bias"], p), delta_softplus=True, return_last_state=True)
    # selective_scan has no initial state: compare from a zero state
    y0, H0 = ssd_ref.ssd(*args, **dict(kw, initial_states=None), chunk_size=8, return_final_states=True)
    assert_close(out, chan(y0), op="ssd", dtype="float64")
    assert_close(last, H0.reshape(b, h * p, n), op="ssd", dtype="float64", name="last state")
    assert not np.allclose(y, y0)  # the initial state mattered above, so the comparison is not vacuous


# ---------------------------------------------------------------------------------------------------------
# twins


@pytest.mark.parametrize("impl", twins("ssd"))
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_twins_match_the_reference(rng, impl, dtype, monkeypatch):
    """float32 (reference, cpu, gpu) and float16 (gpu) against the float64 reference on the same inputs.

    The GPU twin rounds its matrix operands to fp16 whatever x's dtype, so it is held to the float16 row.
    Its buffers are poisoned with NaN first, so an element never written shows up.
    """
    if dtype == "float16" and impl.name != "gpu":
        pytest.skip("float16 inputs are a GPU-twin feature")
    if impl.name == "gpu":
        import cupy as cp

        gpu = impl.module
        monkeypatch.setattr(gpu, "_empty", lambda shape, dt: cp.full(shape, cp.nan, dtype=dt))
    for shape, chunk in (((2, 77, 4, 8, 2, 16), 64), ((1, 300, 2, 5, 1, 24), 100), ((2, 520, 8, 64, 1, 128), 256)):
        b, l, h, p, g, n = shape
        args, kw = make_inputs(rng, b=b, l=l, h=h, p=p, g=g, n=n, dtype=np.dtype(dtype))
        kw["initial_states"] = kw["initial_states"].astype(np.float32)
        args[3] = args[3] / np.sqrt(n)  # keep C·B of order one, as trained models do
        y, H = impl.ssd(*args, **kw, chunk_size=chunk, return_final_states=True)
        up = [a.astype(np.float64) for a in args]
        upk = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
        y0, H0 = ssd_ref.ssd(*up, **upk, chunk_size=chunk, return_final_states=True)
        y, H = impl.to_host(y), impl.to_host(H)
        assert y.dtype == (np.float64 if impl.name == "reference" else np.dtype(dtype))
        tol = "float16" if impl.name == "gpu" else dtype
        assert_close(y, y0, op="ssd", dtype=tol)
        assert_close(H, H0, op="ssd", dtype=tol, name="final states")


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_past_2_to_the_31_elements():
    """x of more than 2^31 elements (b1, l 526k, h64, p64): the whole pass equals two halves with the carried
    state, each half small enough for 32-bit offsets; a 32-bit offset would wrap in the whole pass."""
    import cupy as cp

    from refimpl.ssd import gpu

    b, h, p, g, n = 1, 64, 64, 1, 128
    l = 2**31 // (h * p) + 2000
    rs = cp.random.RandomState(7)
    x = rs.standard_normal((b, l, h, p), dtype=cp.float32).astype(cp.float16)
    dt = rs.standard_normal((b, l, h), dtype=cp.float32) - 1.0
    A = -cp.linspace(0.5, 2.0, h, dtype=cp.float32)
    B = (rs.standard_normal((b, l, g, n), dtype=cp.float32) / np.sqrt(n)).astype(cp.float16)
    C = rs.standard_normal((b, l, g, n), dtype=cp.float32).astype(cp.float16)
    y, H = gpu.ssd(x, dt, A, B, C, dt_softplus=True, return_final_states=True, check_finite=False)
    k = l - 3000
    y1, H1 = gpu.ssd(x[:, :k], dt[:, :k], A, B[:, :k], C[:, :k], dt_softplus=True, return_final_states=True,
                     check_finite=False)
    tail = y[:, -1000:].astype(cp.float32)
    y2, H2 = gpu.ssd(x[:, k:], dt[:, k:], A, B[:, k:], C[:, k:], dt_softplus=True, initial_states=H1,
                     return_final_states=True, check_finite=False)
    assert bool(cp.isfinite(tail).all())
    assert_close(tail, y2[:, -1000:].astype(cp.float32), op="ssd", dtype="float16")
    assert_close(H, H2, op="ssd", dtype="float16", name="final states")


# ---------------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("impl", twins("ssd"))
def test_bad_input(rng, impl):
    args, kw = make_inputs(rng, b=1, l=8, h=4, p=2, g=2, n=3, dtype=np.float32)
    x, dt, A, B, C = args
    snapshot = [a.copy() for a in args]
    with pytest.raises(ValueError, match="C"):
        impl.ssd(x, dt, A, B, C[..., :2])                       # B and C state sizes differ
    with pytest.raises(ValueError, match="groups"):
        impl.ssd(x, dt, A, np.concatenate([B, B[:, :, :1]], 2), np.concatenate([C, C[:, :, :1]], 2))  # g = 3
    with pytest.raises(ValueError, match="chunk_size"):
        impl.ssd(x, dt, A, B, C, chunk_size=0)
    with pytest.raises(ValueError, match="dt"):
        impl.ssd(x, dt[:, :5], A, B, C)
    with pytest.raises(ValueError, match="initial_states"):
        impl.ssd(x, dt, A, B, C, initial_states=np.zeros((1, 4, 2, 4), np.float32))
    with pytest.raises(ValueError, match="D"):
        impl.ssd(x, dt, A, B, C, D=np.zeros(3, np.float32))
    bad = x.copy()
    bad[0, 3, 1, 0] = np.nan
    with pytest.raises(ValueError, match="x"):
        impl.ssd(bad, dt, A, B, C)
    for a, s in zip(args, snapshot):
        np.testing.assert_array_equal(a, s)


@pytest.mark.parametrize("fn", [ssd_ref.ssd_recurrent, ssd_ref.ssd_quadratic, ssd_ref.ssd_chunked])
def test_bad_input_every_form(rng, fn):
    (x, dt, A, B, C), _ = make_inputs(rng, b=1, l=6, h=3, p=2, g=3, n=3)
    with pytest.raises(ValueError, match="C"):
        fn(x, dt, A, B, C[..., :2])
    with pytest.raises(ValueError, match="groups"):
        fn(x, dt, A, B[:, :, :2], C[:, :, :2])
    with pytest.raises(ValueError, match="z"):
        fn(x, dt, A, B, C, z=x[:, :3])
    if fn is ssd_ref.ssd_chunked:
        with pytest.raises(ValueError, match="chunk_size"):
            fn(x, dt, A, B, C, chunk_size=-1)
