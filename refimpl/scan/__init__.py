"""Chapter 4: linear recurrences as scans, and Mamba's selective scan on top.

Glossary
    a, b    (..., L)     coefficients of the first-order linear recurrence h_t = a_t·h_{t-1} + b_t
    h0      (...,)       the state before the first step, h_{-1} (default 0)
    h       (..., L)     the inclusive scan: h_t after step t
    L       sequence length;  ``...`` any batch of independent sequences
    u       (b, d, L)    Mamba's input x (``u`` in ``mamba_ssm``'s selective_scan_fn)
    delta   (b, d, L)    the step Δ before bias and softplus, one per channel and time step
    A       (d, N)       diagonal state matrix per channel (real, or complex: S4D-style modes)
    B, C    (d, N) time-invariant, (b, N, L) or (b, G, N, L) time-varying ("selective"); channel d reads
            group d // (d_model // G)
    D       (d,)         skip connection;  z (b, d, L) gate;  delta_bias (d,)
    b batch, d model dim (channels), N state size, G groups of B/C (Mamba-2's g)

A step h_t = a_t·h_{t-1} + b_t is the affine map x ↦ a_t·x + b_t. Composing two of them, first
(a₀, b₀) then (a₁, b₁), gives x ↦ a₁(a₀x + b₀) + b₁, so the pair operator

    (a₀, b₀) ∘ (a₁, b₁) = (a₁·a₀, a₁·b₀ + b₁)

is associative (function composition is) but not commutative; its identity is (1, 0). Any associative
operator can be scanned in O(log L) depth (Blelloch 1990), so a linear recurrence can be too.

Every function here computes in float64 / complex128 whatever it is given, and returns that.
``refimpl.scan.cpu`` (Numba) and ``refimpl.scan.gpu`` (CuPy raw kernels) are its fast twins.
"""

from __future__ import annotations

import numpy as np
import scipy.special

from .._checks import as_array, broadcast_shape, check_rank, result_dtype

__all__ = ["linear_scan", "blelloch_scan", "hillis_steele_scan", "selective_scan", "combine",
           "scan_shape", "selective_shape"]


# ---------------------------------------------------------------------------------------------------------
# the pair operator and the linear recurrence

def combine(first, second):
    """The pair operator: apply ``first`` = (a₀, b₀), then ``second`` = (a₁, b₁).

    (a₀, b₀) ∘ (a₁, b₁) = (a₁·a₀, a₁·b₀ + b₁). Associative, not commutative; identity (1, 0).
    Works elementwise on arrays of pairs.
    """
    a0, b0 = first
    a1, b1 = second
    return a1 * a0, a1 * b0 + b1


def scan_shape(a_shape, b_shape, h0_shape=None):
    """The broadcast shape (..., L) of ``linear_scan``'s arguments, or a ``ValueError`` naming the culprit.

    a and b broadcast to (..., L) with L >= 1; h0, when given, broadcasts to the batch shape ``...``.
    """
    check_rank("a", a_shape, min_ndim=1)
    check_rank("b", b_shape, min_ndim=1)
    shape = broadcast_shape([("a", a_shape), ("b", b_shape)])
    if shape[-1] < 1:
        raise ValueError(f"a, b: expected a length L >= 1 along the last axis, got shape {shape}")
    if h0_shape is not None:
        try:
            batch = np.broadcast_shapes(shape[:-1], tuple(h0_shape))
        except ValueError:
            raise ValueError(f"h0: expected a scalar or the batch shape {shape[:-1]} of a, b (..., L), "
                             f"got {tuple(h0_shape)}") from None
        if batch != shape[:-1]:
            raise ValueError(f"h0: expected a scalar or the batch shape {shape[:-1]} of a, b (..., L), "
                             f"got {tuple(h0_shape)}")
    return shape


def _scan_inputs(a, b, h0, check_finite):
    """Validated (a, b, h0) broadcast to (..., L) and (...), in their own dtypes (the twins share this)."""
    a = as_array("a", a, check_finite=check_finite)
    b = as_array("b", b, check_finite=check_finite)
    h0 = None if h0 is None else as_array("h0", h0, check_finite=check_finite)
    shape = scan_shape(a.shape, b.shape, None if h0 is None else h0.shape)
    h0 = np.zeros((), dtype=b.dtype) if h0 is None else h0
    return np.broadcast_to(a, shape), np.broadcast_to(b, shape), np.broadcast_to(h0, shape[:-1])


def _scan_args(a, b, h0, check_finite):
    a, b, h0 = _scan_inputs(a, b, h0, check_finite)
    dtype = result_dtype(a, b, h0)
    return a.astype(dtype), b.astype(dtype), h0.astype(dtype)


def linear_scan(a, b, h0=None, *, check_finite=True):
    """h_t = a_t·h_{t-1} + b_t along the last axis, h_{-1} = h0: the sequential loop, one step at a time.

    a, b (..., L) broadcastable, real or complex; h0 a scalar or (...) (default 0). Returns h (..., L),
    inclusive (h_t includes step t). O(L) work and O(L) depth: the ground truth the scans must match.
    """
    a, b, h0 = _scan_args(a, b, h0, check_finite)
    h = np.empty(a.shape, dtype=a.dtype)
    state = h0.copy()
    for t in range(a.shape[-1]):
        state = a[..., t] * state + b[..., t]
        h[..., t] = state
    return h


def _pad_pow2(a, b, pad_a=1.0, pad_b=0.0):
    """Pad the pairs along the last axis to a power of two with (pad_a, pad_b) = the identity (1, 0)."""
    L = a.shape[-1]
    P = 1 << max(0, (L - 1).bit_length())
    width = [(0, 0)] * (a.ndim - 1) + [(0, P - L)]
    return np.pad(a, width, constant_values=pad_a), np.pad(b, width, constant_values=pad_b)


def blelloch_tree(a, b, pad=(1.0, 0.0)):
    """Blelloch's work-efficient exclusive scan of the pairs (a, b), level by level, and the total.

    Up-sweep: a reduction tree, each right child becomes (left ∘ right). Down-sweep: the root is set to
    the identity, then each node passes its value to its left child and (its value ∘ old left) to its
    right child. 2(P - 1) applications of ∘ for P = L rounded up to a power of two, 2·log₂P levels.
    ``pad`` is what the leaves past L are filled with: the identity (1, 0). Returns the exclusive prefixes
    (A, B) of shape (..., L) and the total (A_tot, B_tot) of shape (...).
    """
    L = a.shape[-1]
    A, B = _pad_pow2(a, b, *pad)
    A, B = A.copy(), B.copy()
    P = A.shape[-1]
    d = 1
    while d < P:  # up-sweep: node k (a right child) absorbs its left sibling
        right = np.arange(2 * d - 1, P, 2 * d)
        A[..., right], B[..., right] = combine((A[..., right - d], B[..., right - d]), (A[..., right], B[..., right]))
        d *= 2
    total = A[..., -1].copy(), B[..., -1].copy()
    A[..., -1], B[..., -1] = 1, 0  # the root's exclusive prefix is the identity
    d = P // 2
    while d >= 1:  # down-sweep: left child gets the parent's prefix, right child gets prefix ∘ left sum
        right = np.arange(2 * d - 1, P, 2 * d)
        left = right - d
        la, lb = A[..., left].copy(), B[..., left].copy()
        A[..., left], B[..., left] = A[..., right], B[..., right]
        A[..., right], B[..., right] = combine((A[..., right], B[..., right]), (la, lb))
        d //= 2
    return A[..., :L], B[..., :L], total


def blelloch_scan(a, b, h0=None, *, check_finite=True):
    """h_t = a_t·h_{t-1} + b_t by Blelloch's up-sweep/down-sweep tree: O(L) work, O(log L) depth.

    Same arguments and result as ``linear_scan``. h0 is folded into the first pair,
    (a₀, b₀) → (a₀, a₀·h0 + b₀); the exclusive prefix of each element, composed with the element,
    is its inclusive prefix, whose b-part applied to h_{-1} = 0 is h_t. Any L: the tree is padded to a
    power of two with the identity (1, 0).
    """
    a, b, h0 = _scan_args(a, b, h0, check_finite)
    b = b.copy()
    b[..., 0] = a[..., 0] * h0 + b[..., 0]
    A, B, _ = blelloch_tree(a, b)
    _, h = combine((A, B), (a, b))
    return h


def hillis_steele_scan(a, b, h0=None, *, check_finite=True):
    """h_t = a_t·h_{t-1} + b_t by Hillis & Steele's scan: log₂L rounds, each combining every element with
    the one 2^k before it. O(L log L) work, O(log L) depth. Same arguments and result as ``linear_scan``.
    """
    a, b, h0 = _scan_args(a, b, h0, check_finite)
    A, B = a.copy(), b.copy()
    B[..., 0] = a[..., 0] * h0 + b[..., 0]
    L, d = A.shape[-1], 1
    while d < L:
        # every element t >= d absorbs the segment that ends d before it (earlier segment first)
        A[..., d:], B[..., d:] = combine((A[..., :-d], B[..., :-d]), (A[..., d:], B[..., d:]))
        d *= 2
    return B


# ---------------------------------------------------------------------------------------------------------
# the selective scan (Mamba)

def selective_shape(u_shape, delta_shape, A_shape, B_shape, C_shape, D_shape=None, z_shape=None,
                    delta_bias_shape=None):
    """(batch, dim, L, N) of ``selective_scan``'s arguments, or a ``ValueError`` naming the culprit."""
    check_rank("u", u_shape, ndim=3)
    batch, dim, L = u_shape
    if tuple(delta_shape) != tuple(u_shape):
        raise ValueError(f"delta: expected shape (batch, dim, L) = {tuple(u_shape)}, got {tuple(delta_shape)}")
    check_rank("A", A_shape, ndim=2)
    if A_shape[0] != dim:
        raise ValueError(f"A: expected shape (dim, N) with dim = {dim}, got {tuple(A_shape)}")
    N = A_shape[1]
    for name, s in (("B", B_shape), ("C", C_shape)):
        check_rank(name, s, ndim=(2, 3, 4))
        s = tuple(s)
        if len(s) == 2 and s != (dim, N):
            raise ValueError(f"{name}: expected shape (dim, N) = {(dim, N)} (time-invariant), got {s}")
        if len(s) == 3 and s != (batch, N, L):
            raise ValueError(f"{name}: expected shape (batch, N, L) = {(batch, N, L)}, got {s}")
        if len(s) == 4:
            G = s[1]
            if s[0] != batch or s[2:] != (N, L) or G < 1:
                raise ValueError(f"{name}: expected shape (batch, G, N, L) = ({batch}, G, {N}, {L}), got {s}")
            if dim % G:
                raise ValueError(f"{name}: the number of groups G = {G} must divide dim = {dim}, got shape {s}")
    for name, s in (("D", D_shape), ("delta_bias", delta_bias_shape)):
        if s is not None and tuple(s) != (dim,):
            raise ValueError(f"{name}: expected shape (dim,) = {(dim,)}, got {tuple(s)}")
    if z_shape is not None and tuple(z_shape) != tuple(u_shape):
        raise ValueError(f"z: expected shape (batch, dim, L) = {tuple(u_shape)}, got {tuple(z_shape)}")
    return batch, dim, L, N


def _selective_inputs(u, delta, A, B, C, D, z, delta_bias, check_finite):
    """Validated arguments of ``selective_scan`` in their own dtypes (shared with the twins)."""
    u = as_array("u", u, complex_ok=False, check_finite=check_finite)
    delta = as_array("delta", delta, complex_ok=False, check_finite=check_finite)
    A = as_array("A", A, check_finite=check_finite)
    B = as_array("B", B, check_finite=check_finite)
    C = as_array("C", C, check_finite=check_finite)
    D = None if D is None else as_array("D", D, complex_ok=False, check_finite=check_finite)
    z = None if z is None else as_array("z", z, complex_ok=False, check_finite=check_finite)
    delta_bias = (None if delta_bias is None
                  else as_array("delta_bias", delta_bias, complex_ok=False, check_finite=check_finite))
    selective_shape(u.shape, delta.shape, A.shape, B.shape, C.shape, None if D is None else D.shape,
                    None if z is None else z.shape, None if delta_bias is None else delta_bias.shape)
    if not np.iscomplexobj(A):
        for name, x in (("B", B), ("C", C)):
            if np.iscomplexobj(x):
                raise TypeError(f"{name}: complex {name} needs a complex A (dtype {A.dtype} given); "
                                f"pass A as a complex array")
    return u, delta, A, B, C, D, z, delta_bias


def softplus(x):
    """log(1 + e^x), without overflow for large x (mamba_ssm's kernels switch to x itself above 20)."""
    return np.logaddexp(0.0, x)


def _at_step(M, t, group):
    """B or C at step t: (dim, N) when time-invariant, else (batch, dim, N) with channel d reading group[d]."""
    if M.ndim == 2:
        return M
    if M.ndim == 3:
        return M[:, None, :, t]  # one group: broadcasts over dim
    return M[..., t][:, group, :]


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, *, check_finite=True):
    """Mamba's selective scan, as ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` defines it.

        Δ = softplus(delta + delta_bias)  (if delta_softplus; else delta + delta_bias)
        Ā_t = exp(Δ_t·A)                  ZOH for A
        B̄_t·u_t = Δ_t·B_t·u_t             Euler for B (Mamba's choice, not ZOH's (Ā − 1)/A·B)
        h_t = Ā_t·h_{t-1} + B̄_t·u_t       per channel d and state n, h_{-1} = 0
        y_t = C_t·h_t + D·u_t             (2·Re(C_t·h_t) when A is complex: conjugate pairs)
        out = y·silu(z)                   if z is given

    u, delta, z (batch, dim, L); A (dim, N); B, C (dim, N) or (batch, N, L) or (batch, G, N, L); D and
    delta_bias (dim,). Returns out (batch, dim, L) float64, and last_state (batch, dim, N) when asked
    (complex128 when A is complex). Memory O(batch·dim·N): one step at a time, never (batch, dim, L, N).
    """
    u, delta, A, B, C, D, z, delta_bias = _selective_inputs(u, delta, A, B, C, D, z, delta_bias, check_finite)
    cplx = np.iscomplexobj(A)
    state_dtype = np.complex128 if cplx else np.float64
    u = u.astype(np.float64, copy=False)
    delta = delta.astype(np.float64, copy=False)
    if delta_bias is not None:
        delta = delta + delta_bias.astype(np.float64)[:, None]
    if delta_softplus:
        delta = softplus(delta)
    A = A.astype(state_dtype, copy=False)
    B, C = B.astype(state_dtype, copy=False), C.astype(state_dtype, copy=False)
    batch, dim, L = u.shape
    gB = np.arange(dim) // (dim // B.shape[1]) if B.ndim == 4 else None  # channel d -> group d // (dim // G)
    gC = np.arange(dim) // (dim // C.shape[1]) if C.ndim == 4 else None
    h = np.zeros((batch, dim, A.shape[1]), dtype=state_dtype)
    y = np.empty((batch, dim, L), dtype=np.float64)
    for t in range(L):
        dt = delta[:, :, t, None]                                        # (b, d, 1)
        Bt, Ct = _at_step(B, t, gB), _at_step(C, t, gC)                  # (d, N) or (b, d, N)
        h = np.exp(dt * A) * h + dt * Bt * u[:, :, t, None]              # "bdn"
        yt = np.einsum("bdn,bdn->bd", h, np.broadcast_to(Ct, h.shape))
        y[:, :, t] = 2 * yt.real if cplx else yt
    if D is not None:
        y = y + D.astype(np.float64)[:, None] * u
    if z is not None:
        zf = z.astype(np.float64)
        y = y * zf * scipy.special.expit(zf)                             # silu(z) = z·sigmoid(z)
    return (y, h) if return_last_state else y
