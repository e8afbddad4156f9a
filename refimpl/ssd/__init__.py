"""Chapter 5: state space duality (Mamba-2): the SSM as a semiseparable matrix, and the chunked algorithm.

Glossary (the paper's symbols from Dao & Gu 2024, "Transformers are SSMs"; layouts of mamba_ssm's
``mamba_chunk_scan_combined``)
    b       batch
    l / T   sequence length (t, s index time: t the output step, s the input step)
    h       heads; each head has its own scalar A and step dt (Mamba-2's "scalar times identity" A)
    p       head dimension (P): the channels of x that share one head's A, dt, B and C
    g       groups of heads sharing B and C; head i reads group i // (h // g)
    n / N   state size
    x       (b, l, h, p)   input
    dt      (b, l, h)      step Δ (after softplus(dt + dt_bias) when dt_softplus)
    A       (h,)           decay rate, negative;  a_t = Δ_t·A is the log of the per-step decay
    B, C    (b, l, g, n)   input and output projections of the state
    D       (h,) or (h, p) skip connection;  z (b, l, h, p) gate:  y <- y·silu(z)
    H       (b, h, p, n)   the state; ``initial_states`` and the final states have this shape
    Q       chunk size (``chunk_size``)

The recurrence (Δ, A, B, C per step; the state is p × n per head):

    H_t = exp(Δ_t A)·H_{t-1} + Δ_t·x_t ⊗ B_t,        y_t = H_t·C_t + D·x_t.

Unrolled, y = M·x per head with the lower-triangular matrix

    M[t, s] = exp(a_{s+1} + ... + a_t) · (C_t · B_s) · Δ_s    (s <= t),     i.e.  M = L ∘ (C Bᵀ) · diag(Δ),

which is *semiseparable*: every block of M below the diagonal has rank at most N. Four forms of the
same function live here: ``ssd_recurrent`` (the scan, O(l·p·n)), ``ssd_quadratic`` (masked linear
attention with decay, O(l²)), ``ssd_chunked`` (the block algorithm) and ``ssd`` (the recommended form,
chunked). Every one computes in float64 whatever it is given, and returns float64.
``refimpl.ssd.cpu`` (Numba) and ``refimpl.ssd.gpu`` (CuPy, tensor cores) are the fast twins of ``ssd``.

Segment sums. exp(a_{s+1} + ... + a_t) is computed from the *sum of the segment*, never as
exp(cs_t − cs_s) from a running cumulative sum cs: far into a long sequence cs is large, and the
difference of two large numbers loses the small segment (about three digits in float32 at l = 4096);
where s > t the mask is applied before the exponential, so no inf·0 can appear.
"""

from __future__ import annotations

import numpy as np

from .._checks import as_array, check_rank, positive_int

__all__ = ["ssd_recurrent", "ssd_quadratic", "ssd_chunked", "ssd", "segsum", "ssd_matrix", "ssd_shape"]


# --------------------------------------------------------------------------------------------------------
# validation: one function on shapes, shared by the reference and both twins


def ssd_shape(x_shape, dt_shape, A_shape, B_shape, C_shape, D_shape=None, z_shape=None, dt_bias_shape=None,
              initial_states_shape=None):
    """(b, l, h, p, g, n) from the shapes of ``ssd``'s arguments, or a ``ValueError`` naming the culprit."""
    check_rank("x", x_shape, ndim=4)
    b, l, h, p = (int(v) for v in x_shape)
    check_rank("B", B_shape, ndim=4)
    g, n = int(B_shape[2]), int(B_shape[3])
    expected = {"dt": (b, l, h), "A": (h,), "B": (b, l, g, n), "C": (b, l, g, n)}
    what = {"dt": "(b, l, h)", "A": "(h,)", "B": "(b, l, g, n)", "C": "(b, l, g, n) as B"}
    for name, shape in (("dt", dt_shape), ("A", A_shape), ("C", C_shape)):
        if tuple(shape) != expected[name]:
            raise ValueError(f"{name}: expected shape {what[name]} = {expected[name]}, got {tuple(shape)}")
    if tuple(B_shape[:2]) != (b, l):
        raise ValueError(f"B: expected shape (b, l, g, n) with (b, l) = {(b, l)} as in x, got {tuple(B_shape)}")
    if g < 1 or h % g:
        raise ValueError(f"B: the number of groups g = {g} (B and C of shape (b, l, g, n) = {tuple(B_shape)}) "
                         f"must divide the number of heads h = {h}")
    if D_shape is not None and tuple(D_shape) not in ((h,), (h, p)):
        raise ValueError(f"D: expected shape (h,) = {(h,)} or (h, p) = {(h, p)}, got {tuple(D_shape)}")
    if z_shape is not None and tuple(z_shape) != (b, l, h, p):
        raise ValueError(f"z: expected shape (b, l, h, p) = {(b, l, h, p)} as x, got {tuple(z_shape)}")
    if dt_bias_shape is not None and tuple(dt_bias_shape) != (h,):
        raise ValueError(f"dt_bias: expected shape (h,) = {(h,)}, got {tuple(dt_bias_shape)}")
    if initial_states_shape is not None and tuple(initial_states_shape) != (b, h, p, n):
        raise ValueError(f"initial_states: expected shape (b, h, p, n) = {(b, h, p, n)}, "
                         f"got {tuple(initial_states_shape)}")
    return b, l, h, p, g, n


def _inputs(x, dt, A, B, C, D, z, dt_bias, initial_states, check_finite):
    """Validated arguments as NumPy arrays in their own dtypes (the CPU twin shares this)."""
    arr = {}
    for name, v in (("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("dt_bias", dt_bias), ("initial_states", initial_states)):
        arr[name] = None if v is None else as_array(name, v, complex_ok=False, check_finite=check_finite)
    shapes = {k: (None if v is None else v.shape) for k, v in arr.items()}
    dims = ssd_shape(shapes["x"], shapes["dt"], shapes["A"], shapes["B"], shapes["C"], shapes["D"], shapes["z"],
                     shapes["dt_bias"], shapes["initial_states"])
    return arr, dims


def softplus(v):
    """log(1 + e^v) without overflow (Mamba's parametrization of Δ)."""
    return np.logaddexp(0.0, v)


def _prepared(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_states, check_finite):
    """float64 arrays with Δ made effective and B, C expanded from groups to heads: (b, l, h, n)."""
    arr, (b, l, h, p, g, n) = _inputs(x, dt, A, B, C, D, z, dt_bias, initial_states, check_finite)
    f = {k: (None if v is None else v.astype(np.float64)) for k, v in arr.items()}
    dt = f["dt"] + (0.0 if f["dt_bias"] is None else f["dt_bias"])
    if dt_softplus:
        dt = softplus(dt)
    group = np.arange(h) // (h // g)  # head i reads group i // (h // g)
    H0 = np.zeros((b, h, p, n)) if f["initial_states"] is None else f["initial_states"].copy()
    return dict(x=f["x"], dt=dt, A=f["A"], B=f["B"][:, :, group], C=f["C"][:, :, group], D=f["D"], z=f["z"],
                H0=H0)


def _finish(y, x, D, z):
    """y + D·x, then the gate y·silu(z) (mamba_ssm's ``z``)."""
    if D is not None:
        y = y + (D[:, None] if D.ndim == 1 else D) * x
    if z is not None:
        y = y * z / (1.0 + np.exp(-z))  # silu(z) = z·sigmoid(z); exp(-z) -> inf gives 0, not NaN
    return y


def _out(y, H, return_final_states):
    return (y, H) if return_final_states else y


# --------------------------------------------------------------------------------------------------------
# form 1: the recurrence


def ssd_recurrent(x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False, initial_states=None,
                  return_final_states=False, check_finite=True):
    """The SSM as a scan, one step at a time:  H_t = exp(Δ_t A)·H_{t-1} + Δ_t·x_t ⊗ B_t,  y_t = H_t·C_t.

    Shapes in the module docstring. Returns y (b, l, h, p), and the final states (b, h, p, n) when asked.
    """
    s = _prepared(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_states, check_finite)
    x, dt, A, B, C, H = s["x"], s["dt"], s["A"], s["B"], s["C"], s["H0"]
    y = np.empty_like(x)
    for t in range(x.shape[1]):
        Abar = np.exp(dt[:, t] * A)                                            # (b, h)
        H = Abar[..., None, None] * H + np.einsum("bhp,bhn->bhpn", dt[:, t, :, None] * x[:, t], B[:, t])
        y[:, t] = np.einsum("bhpn,bhn->bhp", H, C[:, t])
    return _out(_finish(y, x, s["D"], s["z"]), H, return_final_states)


# --------------------------------------------------------------------------------------------------------
# form 2: the matrix (masked attention with decay)


def segsum(a):
    """Stable segment sums: out[..., t, s] = a[s+1] + ... + a[t] for s <= t, and -inf for s > t.

    a (..., T) -> (..., T, T). Each entry is a sum over its own segment (a cumulative sum down a masked
    copy of ``a``), not a difference cs[t] − cs[s] of running sums, which cancels catastrophically once
    |cs| is much larger than the segment. exp(segsum(a)) is the decay matrix L, exactly 0 above the diagonal.
    """
    T = a.shape[-1]
    rep = np.repeat(a[..., :, None], T, axis=-1)                   # rep[..., k, s] = a[k]
    rep = np.where(np.tril(np.ones((T, T), dtype=bool), -1), rep, 0.0)  # keep k > s
    out = np.cumsum(rep, axis=-2)                                  # sum of a[k] for s < k <= t
    return np.where(np.tril(np.ones((T, T), dtype=bool)), out, -np.inf)


def ssd_matrix(dt, A, B, C, *, dt_bias=None, dt_softplus=False, check_finite=True):
    """The SSD matrix per head, M = L ∘ (C·Bᵀ)·diag(Δ): (b, h, l, l), so that
    y[:, t, i] = Σ_s M[:, i, t, s]·x[:, s, i].

    L[t, s] = exp(a_{s+1} + ... + a_t) with a = Δ·A: 1-semiseparable decay; C·Bᵀ has rank <= N, so every
    block of M strictly below the diagonal has rank <= N (``M`` is N-semiseparable).
    """
    dt = as_array("dt", dt, ndim=3, complex_ok=False, check_finite=check_finite)
    b, l, h = dt.shape
    x0 = np.zeros((b, l, h, 1))
    s = _prepared(x0, dt, A, B, C, None, None, dt_bias, dt_softplus, None, check_finite)
    a = np.moveaxis(s["dt"] * s["A"], 1, 2)                       # (b, h, l)
    L = np.exp(segsum(a))
    CB = np.einsum("bthn,bshn->bhts", s["C"], s["B"])
    return L * CB * np.moveaxis(s["dt"], 1, 2)[:, :, None, :]


def ssd_quadratic(x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False, initial_states=None,
                  return_final_states=False, check_finite=True):
    """The dual (attention-like) form: y = (L ∘ C·Bᵀ)·(Δ·x), O(l²) per head.

    Linear attention with queries C, keys B, values Δ·x, and a causal mask L that also decays:
    L[t, s] = exp(a_{s+1} + ... + a_t). An initial state H_0 adds exp(a_0 + ... + a_t)·H_0·C_t.
    """
    s = _prepared(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_states, check_finite)
    x, dt, A, B, C, H0 = s["x"], s["dt"], s["A"], s["B"], s["C"], s["H0"]
    a = np.moveaxis(dt * A, 1, 2)                                  # (b, h, l)
    L = np.exp(segsum(a))                                          # (b, h, l, l), 0 above the diagonal
    M = L * np.einsum("bthn,bshn->bhts", C, B)
    y = np.einsum("bhts,bsh,bshp->bthp", M, dt, x)
    from_start = np.exp(np.cumsum(a, axis=-1))                     # a_0 + ... + a_t: a segment from 0
    y += np.einsum("bht,bthn,bhpn->bthp", from_start, C, H0)
    l = x.shape[1]
    if l:  # the final state: the last row of L weights every input
        H = np.einsum("bhs,bsh,bshp,bshn->bhpn", L[:, :, -1], dt, x, B) + from_start[..., -1, None, None] * H0
    else:
        H = H0
    return _out(_finish(y, x, s["D"], s["z"]), H, return_final_states)


# --------------------------------------------------------------------------------------------------------
# form 3: the chunked block algorithm (Dao & Gu 2024, section 6), in its four steps


def _pad_to_chunks(s, Q):
    """Pad the time axis to a multiple of Q with the identity step: Δ = 0 (decay 1, no input), x = B = C = 0."""
    l = s["x"].shape[1]
    c = max(1, -(-l // Q))
    pad = c * Q - l
    out = {}
    for k in ("x", "dt", "B", "C"):
        v = s[k]
        out[k] = np.concatenate([v, np.zeros((v.shape[0], pad) + v.shape[2:])], axis=1) if pad else v
    return out, c


def chunk_diagonal_blocks(C, B, L, dt, x):
    """Step 1 (the diagonal blocks of M): each chunk as a small quadratic form.

    C, B (b, c, Q, h, n); L (b, h, c, Q, Q) = exp(segsum) within the chunk; dt (b, h, c, Q); x (b, c, Q, h, p).
    """
    return np.einsum("bclhn,bcshn,bhcls,bhcs,bcshp->bclhp", C, B, L, dt, x, optimize=True)


def chunk_states(B, decay_to_end, dt, x):
    """Step 2 (the right factors of the off-diagonal blocks): the state each chunk builds from its own inputs.

    decay_to_end[..., s] = exp(a_{s+1} + ... + a_{Q-1}), the segment from s to the chunk's end. -> (b, c, h, p, n)
    """
    return np.einsum("bcshn,bhcs,bhcs,bcshp->bchpn", B, decay_to_end, dt, x, optimize=True)


def chunk_recurrence(states, chunk_decay, H0):
    """Step 3 (the inter-chunk recurrence): H_c = exp(a over chunk c)·H_{c-1} + states_c.

    A linear scan over chunks (chapter 4) with c steps instead of l. Returns the state entering each chunk
    (b, c, h, p, n) and the final state (b, h, p, n). chunk_decay (b, h, c).
    """
    entering = np.empty_like(states)
    H = H0
    for c in range(states.shape[1]):
        entering[:, c] = H
        H = chunk_decay[:, :, c, None, None] * H + states[:, c]
    return entering, H


def state_to_output(C, entering, decay_from_start):
    """Step 4 (the left factors of the off-diagonal blocks): y_t += exp(a_0 + ... + a_t within the chunk)·H·C_t."""
    return np.einsum("bclhn,bchpn,bhcl->bclhp", C, entering, decay_from_start, optimize=True)


def ssd_chunked(x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False, initial_states=None,
                return_final_states=False, chunk_size=64, check_finite=True):
    """The block algorithm: split l into chunks of Q; the diagonal blocks of M are small quadratic forms, the
    off-diagonal blocks are low-rank and pass through a state of size p × n per head.

    1. diagonal blocks:   Y_diag = (L_c ∘ C_c·B_cᵀ)·(Δ·x)_c                (matrix products, O(l·Q))
    2. chunk states:      S_c = Σ_s exp(a_{s+1..end})·Δ_s·x_s ⊗ B_s         (matrix products)
    3. recurrence:        H_c = exp(Σ a over chunk c)·H_{c-1} + S_c          (a scan over l/Q chunks)
    4. state to output:   Y_off = exp(a_{start..t})·H_{c-1}·C_t              (matrix products)

    Any l: the last chunk is padded with the identity step (Δ = 0), so it may be short.
    """
    Q = positive_int("chunk_size", chunk_size)
    s = _prepared(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_states, check_finite)
    b, l, h, p = s["x"].shape
    n = s["B"].shape[-1]
    pd, c = _pad_to_chunks(s, Q)
    xc = pd["x"].reshape(b, c, Q, h, p)
    Bc = pd["B"].reshape(b, c, Q, h, n)
    Cc = pd["C"].reshape(b, c, Q, h, n)
    dtc = np.moveaxis(pd["dt"].reshape(b, c, Q, h), 3, 1)         # (b, h, c, Q)
    a = dtc * s["A"][None, :, None, None]
    Lc = np.exp(segsum(a))                                         # (b, h, c, Q, Q)
    Y_diag = chunk_diagonal_blocks(Cc, Bc, Lc, dtc, xc)
    states = chunk_states(Bc, Lc[..., -1, :], dtc, xc)             # last row of L_c: decay to the chunk's end
    entering, H = chunk_recurrence(states, np.exp(a.sum(axis=-1)), s["H0"])
    Y_off = state_to_output(Cc, entering, np.exp(np.cumsum(a, axis=-1)))
    y = (Y_diag + Y_off).reshape(b, c * Q, h, p)[:, :l]
    return _out(_finish(y, s["x"], s["D"], s["z"]), H, return_final_states)


def ssd(x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False, initial_states=None,
        return_final_states=False, chunk_size=None, check_finite=True):
    """State space duality (Mamba-2's SSD layer core), the recommended form: ``ssd_chunked``.

    x (b, l, h, p), dt (b, l, h), A (h,), B and C (b, l, g, n); D (h,) or (h, p), z (b, l, h, p),
    dt_bias (h,), initial_states (b, h, p, n). Returns y (b, l, h, p), and the final states (b, h, p, n)
    when ``return_final_states``. Follows mamba_ssm's ``mamba_chunk_scan_combined``. ``chunk_size=None`` lets
    each implementation choose (64 here and in the CPU twin, 256 on the GPU): the result does not depend on it
    beyond rounding.
    """
    return ssd_chunked(x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
                       initial_states=initial_states, return_final_states=return_final_states,
                       chunk_size=64 if chunk_size is None else chunk_size, check_finite=check_finite)
