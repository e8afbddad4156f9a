"""Deliberately wrong implementations, one per classic bug, for showing (and testing) that ``check`` catches them.

Each has the reference's signature and is wrong in exactly one way that real kernels have been wrong:

- ``naive_zoh_diag``: (exp(z) - 1)/z in single precision instead of expm1 (chapter 1)
- ``top_left_attention``: the causal mask aligned top-left when s_q != s_k (chapter 6)
- ``unstable_softmax_attention``: softmax without subtracting the row maximum (chapter 6)
- ``exclusive_scan``: an exclusive scan where the recurrence is inclusive (chapter 4)
- ``zoh_B_selective_scan``: the ZOH rule for B where mamba_ssm uses Euler (chapter 4)
- ``overdecayed_ssd``: the SSD final state decayed once too often (chapter 5)
"""

from __future__ import annotations

import numpy as np
import scipy.special

__all__ = ["naive_zoh_diag", "top_left_attention", "unstable_softmax_attention", "exclusive_scan",
           "zoh_B_selective_scan", "overdecayed_ssd", "MUTANTS"]


def _f32(*arrays):
    return [np.asarray(a, dtype=np.complex64 if np.iscomplexobj(a) else np.float32) for a in arrays]


def naive_zoh_diag(Lambda, B, dt, check_finite=True):
    """Bug: (exp(z) - 1)/z in single precision instead of expm1."""
    Lambda, B = _f32(Lambda, B)
    dt = np.broadcast_to(np.asarray(dt, np.float32)[..., None], np.broadcast_shapes(Lambda.shape, B.shape))
    z = dt * Lambda
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.where(z == 0, 1, (np.exp(z) - 1) / z)
    return np.exp(z), q * dt * B


def _softmax_attention(q, k, v, causal, scale, top_left=False, subtract_max=True):
    q, k, v = _f32(q, k, v)
    b, s_q, h, d = q.shape
    s_k, h_k = k.shape[1], k.shape[2]
    k = np.repeat(k, h // h_k, axis=2)
    v = np.repeat(v, h // h_k, axis=2)
    s = np.einsum("bqhd,bkhd->bhqk", q, k) * np.float32(scale or 1 / np.sqrt(d))
    if causal:
        offset = 0 if top_left else s_k - s_q
        mask = np.arange(s_k)[None, :] <= np.arange(s_q)[:, None] + offset
        s = np.where(mask, s, -np.inf)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        m = s.max(-1, keepdims=True) if subtract_max else np.float32(0)
        m = np.where(np.isfinite(m), m, 0)
        p = np.exp(s - m)
        den = p.sum(-1, keepdims=True)
        out = np.einsum("bhqk,bkhd->bqhd", np.where(den > 0, p / den, 0), v)
        lse = (np.log(den) + m)[..., 0]
    return out, lse


def top_left_attention(q, k, v, *, causal=False, softmax_scale=None, return_lse=False):
    """Bug: the causal mask aligned top-left (query i sees keys j <= i) when s_q != s_k."""
    out, lse = _softmax_attention(q, k, v, causal, softmax_scale, top_left=True)
    return (out, lse) if return_lse else out


def unstable_softmax_attention(q, k, v, *, causal=False, softmax_scale=None, return_lse=False):
    """Bug: softmax without subtracting the row maximum (overflows for logits ~ 1e2 in float32)."""
    out, lse = _softmax_attention(q, k, v, causal, softmax_scale, subtract_max=False)
    return (out, lse) if return_lse else out


def exclusive_scan(a, b, h0=None):
    """Bug: an exclusive scan (h_t without the step t's own term)."""
    import refimpl.scan as ref

    h = ref.linear_scan(a, b, h0)
    h0 = np.zeros(h.shape[:-1]) if h0 is None else np.broadcast_to(h0, h.shape[:-1])
    return np.concatenate([h0[..., None], h[..., :-1]], axis=-1).astype(np.result_type(a, np.float32))


def zoh_B_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False):
    """Bug: the ZOH rule for B, (exp(delta A) - 1)/A * B, where mamba_ssm uses Euler, delta * B."""
    u, delta, A, B, C = (np.asarray(x, dtype=np.complex128 if np.iscomplexobj(x) else np.float64)
                         for x in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + np.asarray(delta_bias)[:, None]
    if delta_softplus:
        delta = np.logaddexp(0, delta)
    b, d, L = u.shape
    N = A.shape[1]

    def at(M, t):  # B or C at time t as (b, d, N)
        if M.ndim == 2:
            return np.broadcast_to(M, (b, d, N))
        if M.ndim == 3:
            return np.broadcast_to(M[:, None, :, t], (b, d, N))
        G = M.shape[1]
        return np.repeat(M[:, :, :, t], d // G, axis=1)

    h = np.zeros((b, d, N), dtype=np.result_type(A, B, np.float64))
    ys = []
    for t in range(L):
        dA = delta[:, :, t, None] * A
        zoh_B = np.expm1(dA) / A  # the bug: (exp(delta A) - 1)/A where mamba_ssm has delta (A != 0 here)
        h = np.exp(dA) * h + zoh_B * at(B, t) * u[:, :, t, None]
        y = (h * at(C, t)).sum(-1)
        ys.append(2 * y.real if np.iscomplexobj(A) else y.real)
    y = np.stack(ys, -1)
    if D is not None:
        y = y + np.asarray(D)[:, None] * u
    if z is not None:
        y = y * np.asarray(z) * scipy.special.expit(np.asarray(z))
    return (y, h) if return_last_state else y


def overdecayed_ssd(x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False, initial_states=None,
                    return_final_states=False):
    """Bug: the final state decayed once too often (by exp(dt_last * A) a second time)."""
    import refimpl.ssd as ref

    out = ref.ssd(x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
                  initial_states=initial_states, return_final_states=return_final_states)
    if not return_final_states:
        return out
    y, H = out
    last = np.asarray(dt, np.float64)[:, -1]
    if dt_bias is not None:
        last = last + dt_bias
    if dt_softplus:
        last = np.logaddexp(0, last)
    return y, H * np.exp(last * np.asarray(A))[:, :, None, None]


#: (mutant, the op it claims to implement)
MUTANTS = [(naive_zoh_diag, "zoh_diag"), (top_left_attention, "attention"), (unstable_softmax_attention, "attention"),
           (exclusive_scan, "linear_scan"), (zoh_B_selective_scan, "selective_scan"), (overdecayed_ssd, "ssd")]
