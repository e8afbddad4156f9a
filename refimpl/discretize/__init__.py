"""Chapter 1: from the continuous SSM x'(t) = A x(t) + B u(t) to the discrete one x_k = Ā x_{k-1} + B̄ u_k.

Glossary
    A       (..., N, N)  state matrix of the continuous system (real or complex; may be singular)
    B       (..., N, M)  input matrix (M inputs); in the diagonal case B is (..., N), one input
    Lambda  (..., N)     the diagonal of A when A is diagonal (S4D's Λ)
    dt      scalar or (...,)  the step Δ, one per system of the batch ``...`` (per channel in S4D/Mamba)
    Ad, Bd  the discrete pair (Ā, B̄)
    N       state size;  M  number of inputs

Zero-order hold (ZOH) holds u constant over each step, so the variation-of-constants formula
x(t+Δ) = e^{ΔA} x(t) + ∫₀^Δ e^{sA} ds · B u gives, exactly for piecewise-constant inputs,

    Ā = exp(ΔA),    B̄ = ∫₀^Δ exp(sA) ds · B,

computed here from one exponential of the augmented matrix [[A, B], [0, 0]]·Δ, with no inverse of A.
The bilinear (Tustin) rule is the trapezoid rule on the ODE:
Ā = (I − Δ/2·A)⁻¹(I + Δ/2·A), B̄ = (I − Δ/2·A)⁻¹·Δ·B.

Every function here computes in float64 / complex128 whatever it is given, and returns that.
``refimpl.discretize.cpu`` (Numba) and ``refimpl.discretize.gpu`` (CuPy) are its fast twins.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from .._checks import as_array, broadcast_shape, check_rank, result_dtype

__all__ = ["zoh", "zoh_diag", "bilinear", "bilinear_diag", "phi1"]


def dense_shape(A_shape, B_shape, dt_shape):
    """The batch shape ``...`` of ``zoh``'s arguments, or a ``ValueError`` naming the culprit."""
    check_rank("A", A_shape, min_ndim=2)
    check_rank("B", B_shape, min_ndim=2)
    if A_shape[-1] != A_shape[-2]:
        raise ValueError(f"A: expected shape (..., N, N) (square), got {tuple(A_shape)}")
    N = A_shape[-1]
    if B_shape[-2] != N:
        raise ValueError(f"B: expected shape (..., {N}, M) to match A's N = {N}, got {tuple(B_shape)}")
    batch = broadcast_shape([("A", A_shape[:-2]), ("B", B_shape[:-2])])
    try:
        return np.broadcast_shapes(batch, tuple(dt_shape))
    except ValueError:
        raise ValueError(f"dt: expected a scalar or the batch shape {batch} of A and B, "
                         f"got {tuple(dt_shape)}") from None


def _dense_inputs(A, B, dt, check_finite):
    """Validated (A, B, dt) broadcast to one batch shape, in their own dtypes (the twins share this)."""
    A = as_array("A", A, check_finite=check_finite)
    B = as_array("B", B, check_finite=check_finite)
    dt = as_array("dt", dt, complex_ok=False, check_finite=check_finite)
    batch = dense_shape(A.shape, B.shape, dt.shape)
    return (np.broadcast_to(A, batch + A.shape[-2:]), np.broadcast_to(B, batch + B.shape[-2:]),
            np.broadcast_to(dt, batch))


def _dense_args(A, B, dt, check_finite):
    A, B, dt = _dense_inputs(A, B, dt, check_finite)
    dtype = result_dtype(A, B)
    return A.astype(dtype), B.astype(dtype), dt.astype(np.float64)


def zoh(A, B, dt, *, check_finite=True):
    """Zero-order hold: Ā = exp(ΔA), B̄ = ∫₀^Δ exp(sA) ds · B, for a batch of dense systems.

    A (..., N, N), B (..., N, M), dt a scalar or of the batch shape ``...``; returns (Ad, Bd) with
    shapes (..., N, N) and (..., N, M). Uses the block identity

        exp(Δ·[[A, B], [0, 0]]) = [[Ā, B̄], [0, I]],

    so A may be singular (B̄ → Δ·B as A → 0) and nothing is inverted.
    """
    A, B, dt = _dense_args(A, B, dt, check_finite)
    N, M = B.shape[-2], B.shape[-1]
    aug = np.zeros(A.shape[:-2] + (N + M, N + M), dtype=A.dtype)
    aug[..., :N, :N] = A * dt[..., None, None]
    aug[..., :N, N:] = B * dt[..., None, None]
    E = scipy.linalg.expm(aug)
    return E[..., :N, :N].copy(), E[..., :N, N:].copy()


def bilinear(A, B, dt, *, check_finite=True):
    """Bilinear (Tustin) rule: Ā = (I − Δ/2·A)⁻¹(I + Δ/2·A), B̄ = (I − Δ/2·A)⁻¹·Δ·B.

    Shapes as in ``zoh``. Raises ``ValueError`` when I − Δ/2·A is singular (an eigenvalue of A at 2/Δ).
    """
    A, B, dt = _dense_args(A, B, dt, check_finite)
    N = A.shape[-1]
    h = dt[..., None, None] / 2
    eye = np.eye(N, dtype=A.dtype)
    lhs = eye - h * A
    rhs = np.concatenate([eye + h * A, 2 * h * B], axis=-1)
    try:
        sol = np.linalg.solve(lhs, np.broadcast_to(rhs, lhs.shape[:-2] + rhs.shape[-2:]))
    except np.linalg.LinAlgError:
        raise ValueError("A, dt: I - dt/2*A is singular (A has an eigenvalue at 2/dt)") from None
    return sol[..., :N], sol[..., N:]


def diag_shape(Lambda_shape, B_shape, dt_shape):
    """The broadcast shape (..., N) of ``zoh_diag``'s arguments, or a ``ValueError`` naming the culprit."""
    check_rank("Lambda", Lambda_shape, min_ndim=1)
    check_rank("B", B_shape, min_ndim=1)
    shape = broadcast_shape([("Lambda", Lambda_shape), ("B", B_shape)])
    try:
        return np.broadcast_shapes(shape, tuple(dt_shape) + (1,))
    except ValueError:
        raise ValueError(f"dt: expected a scalar or the batch shape {shape[:-1]} of Lambda (..., N), "
                         f"got {tuple(dt_shape)}") from None


def _diag_inputs(Lambda, B, dt, check_finite):
    """Validated (Lambda, B, dt) broadcast to one shape (..., N), in their own dtypes (shared with the twins)."""
    Lambda = as_array("Lambda", Lambda, check_finite=check_finite)
    B = as_array("B", B, check_finite=check_finite)
    dt = as_array("dt", dt, complex_ok=False, check_finite=check_finite)
    shape = diag_shape(Lambda.shape, B.shape, dt.shape)
    return (np.broadcast_to(Lambda, shape), np.broadcast_to(B, shape),
            np.broadcast_to(dt[..., None], shape))


def _diag_args(Lambda, B, dt, check_finite):
    Lambda, B, dt = _diag_inputs(Lambda, B, dt, check_finite)
    lam_dtype = np.complex128 if np.iscomplexobj(Lambda) else np.float64
    return Lambda.astype(lam_dtype), B.astype(result_dtype(Lambda, B)), dt.astype(np.float64)


def phi1(z):
    """φ₁(z) = (exp(z) − 1)/z with φ₁(0) = 1, accurate for tiny |z| because it uses expm1.

    The naive (exp(z) − 1)/z loses all digits when |z| is near the machine epsilon: exp(z) rounds to 1.
    NumPy's complex expm1 uses Re(e^z − 1) = expm1(x)·cos y − 2·sin²(y/2), free of that cancellation.
    """
    z = np.asarray(z)
    out = np.ones_like(z, dtype=np.result_type(z, np.float64))
    nz = z != 0
    out[nz] = np.expm1(z[nz]) / z[nz]
    return out


def zoh_diag(Lambda, B, dt, *, check_finite=True):
    """ZOH for a diagonal state matrix: Ā = exp(ΔΛ), B̄ = expm1(ΔΛ)/Λ · B  (→ Δ·B as Λ → 0).

    Lambda, B (..., N) broadcastable; dt scalar or (...,), one step per system (per channel).
    Returns (Ad, Bd), both of the broadcast shape (..., N). B̄ is computed as Δ·φ₁(ΔΛ)·B.
    """
    Lambda, B, dt = _diag_args(Lambda, B, dt, check_finite)
    z = dt * Lambda
    return np.exp(z), dt * phi1(z) * B


def bilinear_diag(Lambda, B, dt, *, check_finite=True):
    """Bilinear rule, diagonal case: Ā = (1 + ΔΛ/2)/(1 − ΔΛ/2), B̄ = Δ·B/(1 − ΔΛ/2)."""
    Lambda, B, dt = _diag_args(Lambda, B, dt, check_finite)
    den = 1 - dt * Lambda / 2
    if np.any(den == 0):
        raise ValueError("Lambda, dt: 1 - dt*Lambda/2 is zero for some mode (Lambda = 2/dt)")
    return (1 + dt * Lambda / 2) / den, dt * B / den
