"""Chapter 2: HiPPO-LegS, the linear ODE whose state is the Legendre expansion of a signal's whole history.

Glossary
    N       state size: the number of Legendre coefficients kept (HiPPO's N)
    L       number of samples of the signal;  k = 1..L  the step (time t_k = k·Δ)
    b, ...  batch of independent signals
    f       (..., L) the signal's samples, f[..., k-1] = f(t_k)
    c       (..., L, N) the state after each sample: c[..., k-1, n] ≈ c_n(t_k) (HiPPO's c(t), S4's x(t))
    A, B    (N, N), (N,) the LegS matrices, in the sign convention dc/dt = (A c + B f)/t (A is stable)
    Lambda, P, V   the normal-plus-low-rank form A = V (diag(Λ) − P Pᴴ) Vᴴ (S4's Λ, P, V)

LegS (Gu et al. 2020) measures the history with the uniform measure μ_t = 𝟙[0,t]/t and projects f onto the
scaled, orthonormal Legendre polynomials g_n(x, t) = √(2n+1)·P_n(2x/t − 1). The coefficients
c_n(t) = ∫₀ᵗ f(x) g_n(x, t) dx/t obey the time-varying linear ODE

    dc/dt = (A c + B f(t)) / t,   A[n,k] = −√(2n+1)√(2k+1) (n > k),  −(n+1) (n = k),  0 (n < k),
                                  B[n]   =  √(2n+1).

``legs_online`` discretizes it with the generalized bilinear transform (GBT) used by the HiPPO paper and the
reference code of S4 (``HiPPOScale``): at step k the coefficient 1/t is frozen at 1/t_k = 1/(kΔ), the input is
held at f_k = f(t_k), and A c is taken at the weighted mean (1−α)·c_{k−1} + α·c_k:

    (I − α A/k) c_k = (I + (1−α) A/k) c_{k−1} + B f_k / k,    c_0 = 0,   k = 1..L.

α = ½ is the bilinear rule (the default, ``method="bilinear"``), α = 0 forward Euler, α = 1 backward Euler.
Δ cancels (Δ/t_k = 1/k), so the recurrence does not depend on the time step at all: that is LegS's scale
invariance, exact in the discrete recurrence. A is lower triangular with rank-one strictly-lower part
−tril(B Bᵀ, −1), so A·c and the solve with (I − hA) each take O(N) operations (``legs_matvec``,
``legs_solve``); the reference ``legs_online`` uses the dense O(N²) update on purpose, so that the O(N) twins
are checked against a different algorithm.

Every function here computes in float64 / complex128 and returns that. ``refimpl.hippo.cpu`` (Numba) and
``refimpl.hippo.gpu`` (CuPy) are the fast twins of ``legs_online``.
"""

from __future__ import annotations

import numbers

import numpy as np
import scipy.linalg

from .._checks import as_array, check_rank, positive_int

__all__ = ["legs", "legs_nplr", "legs_s4d", "legs_online", "legs_reconstruct",
           "legs_matvec", "legs_solve", "legs_step", "legs_eigvec_cond", "METHODS"]

#: the GBT weight α of each discretization ``legs_online`` offers
METHODS = {"euler": 0.0, "bilinear": 0.5, "backward": 1.0}


def legs(N):
    """The LegS pair (A, B): A (N, N), B (N,), float64, for dc/dt = (A c + B f)/t.

    A[n,k] = −√(2n+1)·√(2k+1) below the diagonal, −(n+1) on it, 0 above; B[n] = √(2n+1).
    """
    N = positive_int("N", N)
    B = np.sqrt(2.0 * np.arange(N) + 1.0)
    A = -np.tril(np.outer(B, B), -1) - np.diag(np.arange(1.0, N + 1.0)) + 0.0  # + 0.0: no -0.0 above
    return A, B


def legs_nplr(N):
    """Normal plus low rank: A = V (diag(Λ) − P Pᴴ) Vᴴ, with V unitary; all complex128.

    Returns (Lambda (N,), P (N,), B (N,), V (N, N)); P and B are expressed in the eigenbasis (Vᴴ·√(n+½),
    Vᴴ·√(2n+1)). With p[n] = √(n+½), A + p pᵀ = −½ I + S where S is skew-symmetric, so the normal part has
    eigenvalues −½ + iω. S = i·H with H = −iS Hermitian, so ``eigh(H)`` gives a unitary V and real ω in a
    backward-stable way (no ``eig`` of a non-normal matrix). Modes are sorted by ω, ascending.
    """
    A, B = legs(N)
    p = np.sqrt(np.arange(N) + 0.5)
    S = A + np.outer(p, p) + 0.5 * np.eye(N)  # skew-symmetric, exactly (−½ on the diagonal cancels)
    S = 0.5 * (S - S.T)
    omega, V = np.linalg.eigh(-1j * S)
    Lambda = -0.5 + 1j * omega
    Vh = V.conj().T
    return Lambda, Vh @ p.astype(np.complex128), Vh @ B.astype(np.complex128), V


def legs_s4d(N):
    """S4D-LegS: Lambda (N//2,) complex128, the eigenvalues −½ + iω of LegS's normal part with ω > 0.

    The normal part's eigenvalues come in conjugate pairs (it is real); S4D keeps one of each pair and
    doubles the real part of the output. For odd N the unpaired eigenvalue −½ (ω = 0) is dropped.
    Sorted by ω, ascending.
    """
    N = positive_int("N", N)
    Lambda = legs_nplr(N)[0]
    return Lambda[N - N // 2:].copy()  # eigh sorts ω ascending; the upper half has ω > 0


def legs_eigvec_cond(N):
    """κ₂(V) of A's eigenvector matrix (unit columns), from closed forms, accurate far beyond 1/eps.

    ``np.linalg.eig`` cannot measure this: its computed V has κ capped near 1/eps. A = D Ã D⁻¹ with
    D = diag(√(2n+1)) and Ã[n,k] = −(2k+1) (n > k), −(n+1) (n = k) rational, lower triangular with eigenvalues
    −(m+1). The right eigenvector of −(m+1) is zero above m, 1 at m, and below m satisfies
    (n−m)·v_n = −S_n, S_n = Σ_{m≤j<n} (2j+1) v_j, so S_{n+1} = −S_n (n+m+1)/(n−m). The left one (row of V⁻¹) is
    zero below m, 1 at m, and above it (m−k)·w_k = (2k+1) T_{k+1}, T_k = Σ_{k≤j≤m} w_j. Both are formed entry by
    entry in float64 (relative error ~N·eps each; entries grow like 4^N but stay far from overflow for N ≤ 200),
    and κ₂ = ‖V‖₂·‖V⁻¹‖₂ is well conditioned in them.
    """
    N = positive_int("N", N)
    if N > 200:
        raise ValueError(f"N: expected N <= 200 (the eigenvector entries overflow float64 beyond), got {N}")
    Vt = np.zeros((N, N))
    Wt = np.zeros((N, N))
    for m in range(N):
        Vt[m, m] = 1.0
        S = 2.0 * m + 1.0
        for n in range(m + 1, N):
            Vt[n, m] = -S / (n - m)
            S *= -(n + m + 1.0) / (n - m)
        Wt[m, m] = 1.0
        T = 1.0
        for k in range(m - 1, -1, -1):
            Wt[m, k] = (2.0 * k + 1.0) * T / (m - k)
            T *= (m + k + 1.0) / (m - k)
    d = np.sqrt(2.0 * np.arange(N) + 1.0)
    V = d[:, None] * Vt  # A = D Ã D⁻¹: eigenvectors D ṽ, left eigenvectors w̃ D⁻¹
    W = Wt / d[None, :]
    scale = np.linalg.norm(V, axis=0)
    V, W = V / scale, W * scale[:, None]
    return float(np.linalg.norm(V, 2) * np.linalg.norm(W, 2))


def legs_matvec(c):
    """A·c in O(N) for a batch c (..., N): (A c)_n = −(n+1) c_n − b_n σ_n with σ_n = Σ_{j<n} b_j c_j, b = B.

    A = −diag(n+1) − tril(b bᵀ, −1): the strictly lower part has rank one, so A·c needs one exclusive prefix
    sum of b·c instead of N² products.
    """
    c = np.asarray(c, dtype=np.float64)
    N = c.shape[-1]
    b = np.sqrt(2.0 * np.arange(N) + 1.0)
    bc = b * c
    sigma = np.cumsum(bc, axis=-1) - bc  # exclusive prefix sum
    return -np.arange(1.0, N + 1.0) * c - b * sigma


def legs_solve(r, h):
    """y = (I − h A)⁻¹ r in O(N) for a batch r (..., N) and a step weight h ≥ 0, by forward substitution.

    Row n of (I − hA) y = r reads d_n y_n + h b_n s_n = r_n with d_n = 1 + h(n+1) and s_n = Σ_{j<n} b_j y_j,
    so y_n = (r_n − h b_n s_n)/d_n and s_{n+1} = s_n + b_n y_n: one pass, O(N). (d_n ≥ 1: nothing to pivot.)
    """
    r = np.asarray(r, dtype=np.float64)
    y = np.empty_like(r)
    s = np.zeros(r.shape[:-1])
    for n in range(r.shape[-1]):
        b = np.sqrt(2.0 * n + 1.0)
        y[..., n] = (r[..., n] - h * b * s) / (1.0 + h * (n + 1.0))
        s = s + b * y[..., n]
    return y


def legs_step(c, f_k, k, alpha=0.5):
    """One GBT step in O(N): c_k = (I − αA/k)⁻¹ [c_{k−1} + (1−α)/k·A c_{k−1} + B f_k/k].

    c (..., N) the state before the step, f_k (...,) the new sample, k ≥ 1 the step number.
    """
    c = np.asarray(c, dtype=np.float64)
    b = np.sqrt(2.0 * np.arange(c.shape[-1]) + 1.0)
    r = c + (1.0 - alpha) / k * legs_matvec(c) + b * (np.asarray(f_k, dtype=np.float64)[..., None] / k)
    return legs_solve(r, alpha / k)


def online_shape(f_shape, N):
    """The output shape (..., L, N) of ``legs_online``, or a ``ValueError`` naming the culprit."""
    check_rank("f", f_shape, min_ndim=1)
    return tuple(f_shape) + (N,)


def _method_alpha(method):
    if method not in METHODS:
        raise ValueError(f"method: expected one of {sorted(METHODS)}, got {method!r}")
    return METHODS[method]


def _online_inputs(f, N, method, check_finite):
    """Validated (f, N, α) shared by the reference and the twins; f keeps its dtype."""
    N = positive_int("N", N)
    alpha = _method_alpha(method)
    f = as_array("f", f, min_ndim=1, complex_ok=False, check_finite=check_finite)
    online_shape(f.shape, N)
    return f, N, alpha


def check_twin_method(alpha, dtype, N):
    """The twins refuse forward Euler in float32: its transient growth overflows (see ``legs_online``)."""
    if alpha == 0.0 and np.dtype(dtype) == np.float32 and N > 1:
        raise ValueError("method: 'euler' grows transiently by many orders of magnitude (~1e20 at N = 32, ~1e45 at "
                         "N = 64) and overflows float32; use float64 input or method='bilinear'")


def legs_online(f, N, *, method="bilinear", check_finite=True):
    """LegS coefficients of the history of f after every sample: c (..., L, N) float64.

    f (..., L) real samples f(t_k), t_k = k·Δ, k = 1..L, of a signal on [0, t] (Δ = t/L; the result does not
    depend on Δ). c[..., k−1, :] approximates the coefficients of f on [0, t_k] in the basis
    √(2n+1)·P_n(2x/t_k − 1), via the GBT recurrence (see the module docstring), with α = ½ (``"bilinear"``,
    default), 0 (``"euler"``) or 1 (``"backward"``):

        c_k = Ā_k c_{k−1} + B̄_k f_k,   Ā_k = (I − αA/k)⁻¹(I + (1−α)A/k),   B̄_k = (I − αA/k)⁻¹ B/k.

    Forward Euler is unstable for the first steps (|1 − (n+1)/k| > 1 while k < (n+1)/2): the state grows by many
    orders of magnitude (about 1e20 at N = 32, 1e45 at N = 64) before it decays; the twins refuse it in float32.

    This reference uses the dense matrices on purpose (a dense product and a dense triangular solve, O(N²) per
    signal per step): the twins use the O(N) structure, and the tests check one against the other.
    """
    f, N, alpha = _online_inputs(f, N, method, check_finite)
    f = f.astype(np.float64)
    A, B = legs(N)
    eye = np.eye(N)
    L = f.shape[-1]
    batch = f.shape[:-1]
    f2 = f.reshape(int(np.prod(batch)), L)
    c = np.zeros((N, f2.shape[0]))  # one column per signal
    out = np.empty((f2.shape[0], L, N))
    for k in range(1, L + 1):
        rhs = (eye + ((1.0 - alpha) / k) * A) @ c + np.outer(B / k, f2[:, k - 1])
        c = scipy.linalg.solve_triangular(eye - (alpha / k) * A, rhs, lower=True, check_finite=False)
        out[:, k - 1, :] = c.T
    return out.reshape(batch + (L, N))


def legendre_basis(z, N):
    """√(2n+1)·P_n(z) for n < N at points z (any shape) → z.shape + (N,), by the three-term recurrence
    (n+1) P_{n+1} = (2n+1) z P_n − n P_{n−1}, which is stable on [−1, 1]."""
    z = np.asarray(z, dtype=np.float64)
    P = np.empty(z.shape + (N,))
    P[..., 0] = 1.0
    if N > 1:
        P[..., 1] = z
    for n in range(1, N - 1):
        P[..., n + 1] = ((2 * n + 1) * z * P[..., n] - n * P[..., n - 1]) / (n + 1)
    return P * np.sqrt(2.0 * np.arange(N) + 1.0)


def legs_reconstruct(c, x, t, *, check_finite=True):
    """Evaluate the LegS approximation Σ_n c_n √(2n+1) P_n(2x/t − 1) at points x ∈ [0, t].

    c (..., N) coefficients; x (..., M) points (the last axis lists them; the rest broadcasts with c's batch);
    t > 0, a scalar or an array broadcastable with c's batch shape ``...``. Returns (..., M) float64.
    """
    c = as_array("c", c, min_ndim=1, complex_ok=False, check_finite=check_finite).astype(np.float64)
    x = as_array("x", x, min_ndim=1, complex_ok=False, check_finite=check_finite).astype(np.float64)
    if isinstance(t, numbers.Real) and not isinstance(t, bool):
        t = np.float64(t)
    t = as_array("t", t, complex_ok=False, check_finite=check_finite).astype(np.float64)
    if np.any(t <= 0):
        raise ValueError(f"t: expected t > 0, got min(t) = {t.min()}")
    try:
        batch = np.broadcast_shapes(c.shape[:-1], t.shape, x.shape[:-1])
    except ValueError:
        raise ValueError(f"shapes do not broadcast: c {c.shape} (..., N), x {x.shape} (..., M), "
                         f"t {t.shape} (...)") from None
    tt = t[..., None]
    slack = 1e-12 * tt
    if np.any(x < -slack) or np.any(x > tt + slack):
        raise ValueError(f"x: expected points in [0, t], got values in [{x.min()}, {x.max()}]")
    z = np.clip(2.0 * x / tt - 1.0, -1.0, 1.0)
    G = legendre_basis(z, c.shape[-1])  # (..., M, N)
    c_b = np.broadcast_to(c, batch + c.shape[-1:])
    G_b = np.broadcast_to(G, batch + G.shape[-2:])
    return np.einsum("...mn,...n->...m", G_b, c_b)
