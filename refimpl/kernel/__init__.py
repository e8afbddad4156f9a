"""Chapter 3: the convolution face of a linear time-invariant SSM, y = K * u with K_l = C·Ā^l·B̄.

Glossary
    h / H   channels (S4's H independent single-input single-output SSMs, one per feature)
    n / N   modes per channel (the diagonal of Λ; S4D's N/2 when each mode stands for a conjugate pair)
    l / L   time (kernel tap / sequence length)
    Lambda  (H, N) or (N,)   continuous diagonal state matrix Λ (S4D's A)
    B, C    (H, N) or (N,)   input and output vectors (S4D's B and C)
    dt      (H,) or scalar   the step Δ (S4D's log_dt, exponentiated)
    Ad, Bd  the discrete pair (Ā, B̄) from ``refimpl.discretize``
    K       (H, L)           the SSM convolution kernel K_l = C·Ā^l·B̄ (S4's K̄)
    u, y    (..., H, L)      input and output sequences;  D (H,) the skip connection

Unrolling x_k = Ā x_{k-1} + B̄ u_k, y_k = C x_k + D u_k from x_{-1} = 0 gives
y_k = Σ_{j≤k} C Ā^{k-j} B̄ u_j + D u_k, a causal convolution with K_l = C Ā^l B̄. When Ā is diagonal the
kernel is a Vandermonde matrix-vector product, K_l = Σ_n (C_n B̄_n) Ā_n^l; S4D stores one mode per conjugate
pair and takes 2·Re of the sum (``conj_pairs=True``).

Every function here computes in float64 / complex128 whatever it is given, and returns that.
``refimpl.kernel.cpu`` (Numba) and ``refimpl.kernel.gpu`` (CuPy) are the fast twins of
``vandermonde_kernel`` and ``causal_conv``.
"""

from __future__ import annotations

import numpy as np

from .. import discretize
from .._checks import as_array, check_rank, positive_int, result_dtype

__all__ = ["vandermonde_kernel", "power_kernel", "causal_conv", "direct_conv", "diag_recurrence",
           "lambda_powers", "tanh_rnn", "s4d_lin", "s4d_inv", "s4d_real"]

#: complex entries of the (h, n, l) block the reference holds at once (about 32 MiB)
_BLOCK = 1 << 21


# ------------------------------------------------------------------------------------------ shape logic

def kernel_shape(Lambda_shape, B_shape, C_shape, dt_shape):
    """(batch, N) of ``vandermonde_kernel``'s arguments: batch is (H,) or () when nothing carries H.

    Lambda, B, C are (H, N) or (N,) (shared by every channel), dt is (H,) or a scalar. Raises
    ``ValueError`` naming the argument whose shape does not fit.
    """
    shapes = {"Lambda": tuple(Lambda_shape), "B": tuple(B_shape), "C": tuple(C_shape)}
    for name, s in shapes.items():
        check_rank(name, s, ndim=(1, 2))
    check_rank("dt", dt_shape, ndim=(0, 1))
    N = shapes["Lambda"][-1]
    for name in ("B", "C"):
        if shapes[name][-1] != N:
            raise ValueError(f"{name}: expected shape (H, {N}) or ({N},) to match Lambda's N = {N}, "
                             f"got {shapes[name]}")
    H = None
    for name, s in list(shapes.items()) + [("dt", tuple(dt_shape))]:
        h = s[0] if (len(s) == 2 or name == "dt") and len(s) >= 1 else None
        if h is None or h == 1:
            continue
        if H is not None and h != H:
            want = f"({H}, {N}) or ({N},)" if name != "dt" else f"({H},) or a scalar"
            raise ValueError(f"{name}: expected shape {want} to match H = {H}, got {s}")
        H = h
    if H is None:
        has_h = any(len(s) == 2 for s in shapes.values()) or len(tuple(dt_shape)) == 1
        return ((1,) if has_h else ()), N
    return (H,), N


def _discretizer(discretization):
    rules = {"zoh": discretize.zoh_diag, "bilinear": discretize.bilinear_diag}
    if discretization not in rules:
        raise ValueError(f"discretization: expected 'zoh' or 'bilinear', got {discretization!r}")
    return rules[discretization]


def _kernel_inputs(Lambda, B, C, dt, L, discretization, conj_pairs, check_finite):
    """Validated inputs in their own dtypes, broadcast to (H, N) (H = 1 when batch is ()); shared by twins."""
    rule = _discretizer(discretization)
    if not isinstance(conj_pairs, (bool, np.bool_)):
        raise TypeError(f"conj_pairs: expected a bool, got {type(conj_pairs).__name__}")
    L = positive_int("L", L)
    Lambda = as_array("Lambda", Lambda, check_finite=check_finite)
    B = as_array("B", B, check_finite=check_finite)
    C = as_array("C", C, check_finite=check_finite)
    dt = as_array("dt", dt, complex_ok=False, check_finite=check_finite)
    batch, N = kernel_shape(Lambda.shape, B.shape, C.shape, dt.shape)
    H = batch[0] if batch else 1
    full = (H, N)
    return (np.broadcast_to(Lambda, full), np.broadcast_to(B, full), np.broadcast_to(C, full),
            np.broadcast_to(dt.reshape(-1) if dt.ndim else dt, (H,)), L, batch, rule)


def modes(Lambda, B, C, dt, *, discretization="zoh", conj_pairs=True, check_finite=True):
    """The (H, N) weights and step exponents of the Vandermonde product, in complex128.

    Returns (W, logz) with W = c·C·B̄ and logz = log Ā (principal branch), so that
    K[h, l] = Re Σ_n W[h, n]·exp(l·logz[h, n]). A mode with Ā = 0 (bilinear at Λ = −2/Δ) gets
    logz = −1e300: exp(0·logz) = 1 and exp(l·logz) = 0 for l ≥ 1, as Ā^l should be.
    """
    Lambda, B, C, dt, _, _, rule = _kernel_inputs(Lambda, B, C, dt, 1, discretization, conj_pairs,
                                                  check_finite)
    Ad, Bd = rule(Lambda.astype(np.result_type(Lambda, np.float64)), B, dt)
    Ad = Ad.astype(np.complex128)
    zero = Ad == 0
    logz = np.log(np.where(zero, 1.0, Ad))
    logz[zero] = -1e300
    W = (2.0 if conj_pairs else 1.0) * C.astype(np.complex128) * Bd
    return W, logz


# ------------------------------------------------------------------------------------------ the kernel

def vandermonde_kernel(Lambda, B, C, dt, L, *, discretization="zoh", conj_pairs=True, check_finite=True):
    """K[h, l] = c·Re Σ_n C[h,n]·B̄[h,n]·Ā[h,n]^l for l = 0..L−1, with c = 2 if ``conj_pairs`` else 1.

    Lambda, B, C (H, N) complex or real, or (N,) shared by every channel; dt (H,) or a scalar. (Ā, B̄) come
    from ``refimpl.discretize.zoh_diag`` (or ``bilinear_diag``). Returns K (H, L) float64 — (L,) when no
    argument carries the channel axis. Ā^l is computed as exp(l·log Ā) block by block: never one (H, N, L)
    array, and no error that grows with l beyond l·|log Ā|·eps.
    """
    Lambda, B, C, dt, L, batch, _ = _kernel_inputs(Lambda, B, C, dt, L, discretization, conj_pairs,
                                                   check_finite)
    W, logz = modes(Lambda, B, C, dt, discretization=discretization, conj_pairs=conj_pairs,
                    check_finite=False)
    H, N = W.shape
    K = np.empty((H, L))
    lc = max(1, min(L, _BLOCK // max(N, 1)))
    hc = max(1, _BLOCK // (N * lc))
    for l0 in range(0, L, lc):
        l = np.arange(l0, min(L, l0 + lc))
        for h0 in range(0, H, hc):
            V = np.exp(logz[h0:h0 + hc, :, None] * l)  # the Vandermonde block Ā_n^l, (hc, N, lc)
            K[h0:h0 + hc, l0:l0 + lc] = np.einsum("hn,hnl->hl", W[h0:h0 + hc], V).real
    return K.reshape(batch + (L,))


def power_kernel(Ad, Bd, C, L, *, check_finite=True):
    """K[l] = C·Ad^l·Bd for l = 0..L−1: the kernel of a dense single-input single-output system.

    Ad (..., N, N), Bd (..., N), C (..., N) (no conjugation of C). Returns K (..., L), float64 when all
    inputs are real, else complex128. Computed by L matrix-vector products — the definition, O(L·N²).
    """
    L = positive_int("L", L)
    Ad = as_array("Ad", Ad, min_ndim=2, check_finite=check_finite)
    Bd = as_array("Bd", Bd, min_ndim=1, check_finite=check_finite)
    C = as_array("C", C, min_ndim=1, check_finite=check_finite)
    N = Ad.shape[-1]
    if Ad.shape[-2] != N:
        raise ValueError(f"Ad: expected shape (..., N, N) (square), got {Ad.shape}")
    for name, a in (("Bd", Bd), ("C", C)):
        if a.shape[-1] != N:
            raise ValueError(f"{name}: expected shape (..., {N}) to match Ad's N = {N}, got {a.shape}")
    try:
        batch = np.broadcast_shapes(Ad.shape[:-2], Bd.shape[:-1], C.shape[:-1])
    except ValueError:
        raise ValueError(f"shapes do not broadcast: Ad {Ad.shape}, Bd {Bd.shape}, C {C.shape}") from None
    dtype = result_dtype(Ad, Bd, C)
    Ad = Ad.astype(dtype)
    x = np.broadcast_to(Bd, batch + (N,)).astype(dtype)
    C = C.astype(dtype)
    K = np.empty(batch + (L,), dtype=dtype)
    for l in range(L):
        K[..., l] = np.einsum("...n,...n->...", C, x)
        x = np.einsum("...ij,...j->...i", Ad, x)
    return K


# ------------------------------------------------------------------------------------------ convolution

def conv_shape(u_shape, K_shape, D_shape=None):
    """Check u (..., H, L), K (H, L), D (H,) or scalar; returns (H, L) or a ``ValueError`` naming the culprit."""
    check_rank("K", K_shape, ndim=2)
    check_rank("u", u_shape, min_ndim=2)
    H, L = K_shape
    if tuple(u_shape[-2:]) != (H, L):
        raise ValueError(f"u: expected shape (..., {H}, {L}) to match K (H, L) = {tuple(K_shape)}, "
                         f"got {tuple(u_shape)}")
    if D_shape is not None and tuple(D_shape) not in ((), (H,), (1,)):
        raise ValueError(f"D: expected shape ({H},) or a scalar, got {tuple(D_shape)}")
    return H, L


def _conv_inputs(u, K, D, check_finite):
    u = as_array("u", u, min_ndim=2, check_finite=check_finite)
    K = as_array("K", K, ndim=2, check_finite=check_finite)
    D = None if D is None else as_array("D", D, check_finite=check_finite)
    conv_shape(u.shape, K.shape, None if D is None else D.shape)
    return u, K, D


def _skip(D):
    """D as an array that multiplies u (..., H, L) channel by channel."""
    return D.reshape(-1, 1) if D.ndim else D


def causal_conv(u, K, D=None, *, check_finite=True):
    """y[..., h, t] = Σ_{s≤t} K[h, t−s]·u[..., h, s] + D[h]·u[..., h, t], by FFT with 2L zero padding.

    u (..., H, L), K (H, L), D (H,) or a scalar or None. Padding both to length 2L makes the FFT's circular
    convolution equal the linear one on the first L outputs (no wrap-around: the longest product term
    reaches index 2L − 2). Cost O(L log L) per channel. Returns float64 (complex128 if u or K is complex).
    """
    u, K, D = _conv_inputs(u, K, D, check_finite)
    L = K.shape[-1]
    n = 2 * L
    if np.iscomplexobj(u) or np.iscomplexobj(K):
        y = np.fft.ifft(np.fft.fft(u, n) * np.fft.fft(K, n), n)[..., :L]
    else:
        y = np.fft.irfft(np.fft.rfft(u.astype(np.float64), n) * np.fft.rfft(K.astype(np.float64), n), n)[..., :L]
    if D is not None:
        y = y + _skip(D) * u
    return y


def direct_conv(u, K, D=None, *, check_finite=True):
    """The same y as ``causal_conv`` by the direct sum, O(L²) per channel: the definition, for checking."""
    u, K, D = _conv_inputs(u, K, D, check_finite)
    L = K.shape[-1]
    dtype = result_dtype(u, K)
    y = np.zeros(u.shape, dtype=dtype)
    for s in range(L):  # input sample s reaches outputs t = s..L-1 through taps K[:, 0..L-1-s]
        y[..., s:] += K[:, : L - s] * u[..., s:s + 1]
    if D is not None:
        y = y + _skip(D) * u
    return y


def diag_recurrence(Lambda, B, C, dt, u, *, D=None, discretization="zoh", conj_pairs=True, check_finite=True):
    """Step the diagonal SSM: x_k = Ā x_{k−1} + B̄ u_k, y_k = c·Re(C·x_k) + D u_k, from x_{−1} = 0.

    The recurrent face of ``vandermonde_kernel`` + ``causal_conv`` (same parameters, same y): O(L·N)
    per channel, one step at a time, as at inference. u (..., H, L); returns y (..., H, L) float64.
    """
    u = as_array("u", u, min_ndim=1, check_finite=check_finite)
    W, logz = modes(Lambda, B, C, dt, discretization=discretization, conj_pairs=conj_pairs,
                    check_finite=check_finite)
    H, N = W.shape
    if u.ndim < 2 or u.shape[-2] != H:
        raise ValueError(f"u: expected shape (..., {H}, L) to match the {H} channels, got {u.shape}")
    if D is not None:
        D = as_array("D", D, check_finite=check_finite)
        conv_shape(u.shape, u.shape[-2:], D.shape)
    Ad = np.exp(logz)
    x = np.zeros(u.shape[:-1] + (N,), dtype=np.complex128)  # (..., H, N); C·B̄ is folded into W
    y = np.empty(u.shape)
    for k in range(u.shape[-1]):
        x = Ad * x + u[..., k, None]
        y[..., k] = np.einsum("...hn,hn->...h", x, W).real
    if D is not None:
        y = y + _skip(D) * u
    return y


# ------------------------------------------------------------------------------------------ the chapter's tools

def lambda_powers(dtLambda, L, *, method="exp", dtype=np.complex128):
    """Ā^l = exp(dtΛ)^l for l = 0..L−1 computed three ways in ``dtype``, to measure their rounding errors.

    ``method``: "exp" evaluates exp(l·dtΛ) per l (one rounding of dtΛ, then l·|dtΛ|·eps); "multiply"
    runs the recurrence z_{l+1} = z_l·Ā (Ā rounded once, then one rounding per step); "power" is NumPy's
    ``Ā**l`` in ``dtype``. dtLambda is (N,) (or a scalar); returns (N, L).
    """
    if method not in ("exp", "multiply", "power"):
        raise ValueError(f"method: expected 'exp', 'multiply' or 'power', got {method!r}")
    L = positive_int("L", L)
    dtype = np.dtype(dtype)
    z = np.atleast_1d(as_array("dtLambda", dtLambda, ndim=(0, 1))).astype(dtype)
    if method == "exp":
        return np.exp(np.arange(L, dtype=z.real.dtype)[None, :] * z[:, None])
    Ad = np.exp(z)
    if method == "power":
        return Ad[:, None] ** np.arange(L, dtype=z.real.dtype)[None, :]
    out = np.empty((z.size, L), dtype=dtype)
    out[:, 0] = 1
    for l in range(1, L):
        out[:, l] = out[:, l - 1] * Ad
    return out


def tanh_rnn(W, U, x, h0=None):
    """The nonlinear RNN h_t = tanh(W h_{t−1} + U x_t), h_{−1} = h0 (default 0): no kernel unrolls it.

    W (d, d), U (d, m), x (L, m); returns h (L, d). tanh sits between every two applications of W, so
    h_t is not Σ_s K_{t−s} x_s for any fixed K: a gradient from h_t to x_s crosses t − s Jacobians
    diag(1 − h²)·W, where the convolution's crosses one tap K_{t−s}.
    """
    W = as_array("W", W, ndim=2)
    U = as_array("U", U, ndim=2)
    x = as_array("x", x, ndim=2)
    d, m = U.shape
    if W.shape != (d, d):
        raise ValueError(f"W: expected shape ({d}, {d}) to match U (d, m) = {U.shape}, got {W.shape}")
    if x.shape[1] != m:
        raise ValueError(f"x: expected shape (L, {m}) to match U (d, m) = {U.shape}, got {x.shape}")
    h = np.zeros(d) if h0 is None else as_array("h0", h0, ndim=1).astype(np.float64)
    out = np.empty((x.shape[0], d))
    for t in range(x.shape[0]):
        h = np.tanh(W @ h + U @ x[t])
        out[t] = h
    return out


def s4d_lin(N):
    """S4D-Lin (Gu et al. 2022, S4D): Λ_n = −1/2 + iπn, n = 0..N/2−1, one mode per conjugate pair."""
    N = positive_int("N", N, minimum=2)
    return -0.5 + 1j * np.pi * np.arange(N // 2)


def s4d_inv(N):
    """S4D-Inv: Λ_n = −1/2 + i·(N/π)·(N/(2n+1) − 1), n = 0..N/2−1: frequencies that cluster near 0 like LegS."""
    N = positive_int("N", N, minimum=2)
    n = np.arange(N // 2)
    return -0.5 + 1j * (N / np.pi) * (N / (2 * n + 1) - 1)


def s4d_real(N):
    """S4D-Real: Λ_n = −(n + 1), n = 0..N−1, real modes (use ``conj_pairs=False``): no oscillation at all."""
    N = positive_int("N", N)
    return -(np.arange(N) + 1.0)
