"""Case generators for ``refimpl.testing.check``: per op, a sweep of shapes, every optional argument, and the
inputs that break real kernels.

A generator takes ``(rng, quick)`` and yields ``Case(name, args, kwargs)`` with float64/complex128 NumPy
inputs; ``check`` rounds the floating inputs to the dtype under test before calling both the reference and
the implementation, so that the errors measured are the implementation's own. Lengths cover 1, primes,
powers of two plus and minus one and one long case; the adversarial cases are named for what they stress.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Case:
    name: str
    args: tuple
    kwargs: dict = field(default_factory=dict)
    #: names of arguments the op writes in place (compared after the call, as outputs)
    inplace: tuple = ()


def _lengths(quick, long=4097):
    return [1, 2, 7, 31, 64, 65] if quick else [1, 2, 7, 31, 63, 64, 65, 127, 257, long]


def _modes(rng, shape, *, near_circle=False):
    """S4D-like complex modes: Re in [-1, -0.01] (or nearly 0: |exp(dt Lambda)| -> 1), Im up to 20 pi."""
    re = -rng.uniform(1e-4, 1e-3, shape) if near_circle else -rng.uniform(0.01, 1.0, shape)
    return re + 1j * rng.uniform(0, 20 * np.pi, shape)


def _c(rng, shape):
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


# ----------------------------------------------------------------------------------------------- chapter 1

def _zoh_diag(rng, quick):
    for H, N in [(1, 1), (3, 7), (16, 64)] + ([] if quick else [(37, 129)]):
        yield Case(f"H{H} N{N}", (_modes(rng, (H, N)), _c(rng, (H, N)), np.exp(rng.uniform(-7, 0, H))))
    # slow modes: |dt*Lambda| ~ 1e-8 with O(1) outputs (a tiny dt would make every output tiny instead)
    yield Case("tiny dt*Lambda (1e-8)", (_modes(rng, (4, 16)) * 1e-8, _c(rng, (4, 16)), np.ones(4)))
    yield Case("Lambda = 0 (limit dt*B)", (np.zeros((2, 8), complex), _c(rng, (2, 8)), np.array([0.1, 1.0])))
    strong = -rng.uniform(5, 50, (4, 16)) + 1j * rng.uniform(0, 2 * np.pi, (4, 16))
    yield Case("strong decay (|exp(dt Lambda)| down to 1e-22)", (strong, _c(rng, (4, 16)), np.ones(4)))
    yield Case("real modes", (-rng.uniform(0.01, 2, (5, 9)), rng.standard_normal((5, 9)), rng.uniform(0.001, 1, 5)))
    yield Case("shared Lambda (N,), per-channel B", (_modes(rng, (12,)), _c(rng, (6, 12)), rng.uniform(0.001, 0.1, 6)))


def _dense_A(rng, batch, N, scale=1.0):
    return scale * rng.standard_normal(batch + (N, N)) / np.sqrt(N) - 1.5 * np.eye(N)


def _zoh(rng, quick):
    for batch, N, M in [((), 1, 1), ((3,), 4, 1), ((2, 3), 7, 2)] + ([] if quick else [((5,), 16, 3)]):
        yield Case(f"batch{batch} N{N} M{M}", (_dense_A(rng, batch, N), rng.standard_normal(batch + (N, M)),
                                              rng.uniform(0.01, 1.0, batch) if batch else 0.3))
    yield Case("singular A", (np.zeros((2, 3, 3)), rng.standard_normal((2, 3, 1)), np.array([0.5, 2.0])))
    yield Case("large ||dt A|| (many squarings)", (_dense_A(rng, (3,), 5, 10.0), rng.standard_normal((3, 5, 1)),
                                                  np.array([1.0, 3.0, 5.0])))
    yield Case("tiny dt", (_dense_A(rng, (2,), 4), rng.standard_normal((2, 4, 2)), np.array([1e-8, 1e-6])))


def _bilinear(rng, quick):
    for case in _zoh(rng, quick):
        if case.name != "singular A":
            yield case


# ----------------------------------------------------------------------------------------------- chapter 2

def _legs_N(rng, quick):
    for N in [1, 2, 3, 8, 17, 64] + ([] if quick else [256]):
        yield Case(f"N{N}", (N,))


def _canonical_nplr(outputs):
    """Eigenvectors are defined up to a phase per column: fix V[0, j] real and positive (P and B follow)."""
    Lambda, P, B, V = (np.asarray(o) for o in outputs)
    phase = V[0] / np.where(np.abs(V[0]) > 0, np.abs(V[0]), 1)
    return Lambda, P * phase, B * phase, V * phase.conj()


def _legs_online(rng, quick):
    for L in [1, 2, 7, 64, 65] + ([] if quick else [257, 1000]):
        t = np.linspace(0, 1, L)
        f = np.sin(6 * t)[None, :] + 0.1 * rng.standard_normal((3, L))
        yield Case(f"L{L} N16", (f, 16))
    yield Case("N 1", (rng.standard_normal((2, 50)), 1))
    yield Case("N 64 smooth signals", (np.cumsum(rng.standard_normal((4, 300)), axis=-1) / 10, 64))


def _legs_reconstruct(rng, quick):
    for N in [1, 8, 64]:
        c = rng.standard_normal((3, N)) / np.arange(1, N + 1)
        yield Case(f"N{N}", (c, np.linspace(0, 2.0, 33), 2.0))


# ----------------------------------------------------------------------------------------------- chapter 3

def _vandermonde_kernel(rng, quick):
    for H, N, L in [(1, 1, 1), (3, 7, 31), (8, 16, 257)] + ([] if quick else [(4, 64, 4097)]):
        yield Case(f"H{H} N{N} L{L}", (_modes(rng, (H, N)), _c(rng, (H, N)), _c(rng, (H, N)),
                                        np.exp(rng.uniform(-6, -1, H)), L))
    yield Case("bilinear, conj_pairs=False", (_modes(rng, (3, 8)), _c(rng, (3, 8)), _c(rng, (3, 8)),
                                              np.full(3, 0.01), 65), {"discretization": "bilinear",
                                                                        "conj_pairs": False})
    yield Case("modes near the unit circle, long", (_modes(rng, (2, 8), near_circle=True), _c(rng, (2, 8)),
                                                    _c(rng, (2, 8)), np.full(2, 0.01), 64 if quick else 8192))


def _power_kernel(rng, quick):
    for N, L in [(1, 1), (4, 33), (16, 257)]:
        Ad = np.eye(N) + 0.1 * _dense_A(rng, (), N)  # an Euler step of a stable system: |eig| < 1
        yield Case(f"N{N} L{L}", (Ad, rng.standard_normal(N) * 0.1, rng.standard_normal(N), L))


def _causal_conv(rng, quick):
    for H, L in [(1, 1), (3, 7), (4, 64), (2, 257)] + ([] if quick else [(2, 4097)]):
        yield Case(f"H{H} L{L}", (rng.standard_normal((2, H, L)), rng.standard_normal((H, L)) / np.sqrt(L)))
    yield Case("with D", (rng.standard_normal((H, L)), rng.standard_normal((H, L)) / L, rng.standard_normal(H)))


# ----------------------------------------------------------------------------------------------- chapter 4

def _linear_scan(rng, quick):
    for L in _lengths(quick, long=100_003):
        yield Case(f"L{L}", (rng.uniform(0.5, 1.0, (3, L)), rng.standard_normal((3, L))))
    yield Case("with h0", (rng.uniform(0.5, 1.0, (4, 33)), rng.standard_normal((4, 33)), rng.standard_normal(4)))
    yield Case("complex", (np.exp(_modes(rng, (2, 65)) * 0.01), _c(rng, (2, 65)), _c(rng, 2)))
    yield Case("strong decay then reset (a = 0)", (np.where(rng.random((2, 64)) < 0.1, 0.0, 0.99),
                                                    rng.standard_normal((2, 64))))
    yield Case("a = 1 (pure sum)", (np.ones((2, 513)), rng.standard_normal((2, 513))))


_blelloch_scan = _linear_scan


def _selective_inputs(rng, b, d, L, N, *, variable=True, groups=None, complex_=False, big_delta=False):
    u = rng.standard_normal((b, d, L))
    delta = rng.uniform(-4, 1 if big_delta else -1, (b, d, L))
    A = -np.exp(rng.uniform(-2, 1, (d, N)))
    if complex_:
        A = A + 1j * rng.uniform(0, np.pi, (d, N))
    if not variable:
        B, C = rng.standard_normal((d, N)), rng.standard_normal((d, N))
        if complex_:
            B, C = _c(rng, (d, N)), _c(rng, (d, N))
    elif groups:
        B, C = rng.standard_normal((b, groups, N, L)), rng.standard_normal((b, groups, N, L))
    else:
        B, C = rng.standard_normal((b, N, L)), rng.standard_normal((b, N, L))
    return u, delta, A, B, C


def _selective_scan(rng, quick):
    for L in [1, 7, 64, 65] + ([] if quick else [257, 1023]):
        yield Case(f"L{L} variable B/C", _selective_inputs(rng, 2, 4, L, 8), {"delta_softplus": True})
    yield Case("time-invariant B/C", _selective_inputs(rng, 1, 3, 33, 4, variable=False), {"delta_softplus": True})
    yield Case("grouped B/C (G=2)", _selective_inputs(rng, 2, 4, 33, 4, groups=2), {"delta_softplus": True})
    u, delta, A, B, C = _selective_inputs(rng, 2, 4, 40, 4)
    yield Case("D, z, delta_bias, softplus, last state", (u, delta, A, B, C),
               {"D": rng.standard_normal(4), "z": rng.standard_normal((2, 4, 40)),
                "delta_bias": rng.standard_normal(4) * 0.5, "delta_softplus": True, "return_last_state": True})
    yield Case("complex A", _selective_inputs(rng, 1, 2, 33, 4, variable=False, complex_=True),
               {"delta_softplus": True, "return_last_state": True})
    yield Case("large delta (resets)", _selective_inputs(rng, 1, 2, 64, 4, big_delta=True),
               {"delta_softplus": True})


# ----------------------------------------------------------------------------------------------- chapter 5

def _ssd_inputs(rng, b, l, h, p, g, n, *, strong=False):
    x = rng.standard_normal((b, l, h, p))
    dt = rng.uniform(-3, 0 if not strong else 3, (b, l, h))
    A = -np.exp(rng.uniform(-1, 1 if not strong else 2, h))
    B = rng.standard_normal((b, l, g, n))
    C = rng.standard_normal((b, l, g, n))
    return x, dt, A, B, C


def _ssd(rng, quick):
    for l in [1, 7, 63, 64, 65] + ([] if quick else [257, 1000]):
        yield Case(f"l{l} h4 p8 g1 n16", _ssd_inputs(rng, 2, l, 4, 8, 1, 16), {"dt_softplus": True})
    yield Case("groups g2 h4", _ssd_inputs(rng, 1, 33, 4, 4, 2, 8), {"dt_softplus": True})
    x, dt, A, B, C = _ssd_inputs(rng, 2, 40, 4, 4, 1, 8)
    yield Case("D (h, p), z, dt_bias, initial and final states", (x, dt, A, B, C),
               {"D": rng.standard_normal((4, 4)), "z": rng.standard_normal((2, 40, 4, 4)),
                "dt_bias": rng.standard_normal(4) * 0.5, "dt_softplus": True,
                "initial_states": rng.standard_normal((2, 4, 4, 8)), "return_final_states": True})
    yield Case("D (h,)", _ssd_inputs(rng, 1, 20, 2, 4, 1, 4), {"D": rng.standard_normal(2), "dt_softplus": True})
    yield Case("strong decay", _ssd_inputs(rng, 1, 300 if quick else 4096, 2, 4, 1, 4, strong=True),
               {"dt_softplus": True})


# ----------------------------------------------------------------------------------------------- chapter 6

def _qkv(rng, b, s_q, s_k, h, h_k, d, scale=1.0):
    return (scale * rng.standard_normal((b, s_q, h, d)), rng.standard_normal((b, s_k, h_k, d)),
            rng.standard_normal((b, s_k, h_k, d)))


def _attention(rng, quick):
    for s in [1, 7, 64, 65] + ([] if quick else [257]):
        yield Case(f"s{s} causal", _qkv(rng, 2, s, s, 4, 4, 16), {"causal": True})
    yield Case("s_q < s_k causal (bottom-right)", _qkv(rng, 1, 5, 33, 2, 2, 8), {"causal": True, "return_lse": True})
    yield Case("s_q > s_k causal (empty rows -> 0)", _qkv(rng, 1, 20, 7, 2, 2, 8), {"causal": True})
    yield Case("GQA 8/2, not causal", _qkv(rng, 2, 9, 17, 8, 2, 16))
    yield Case("MQA 4/1, causal", _qkv(rng, 1, 16, 16, 4, 1, 8), {"causal": True})
    yield Case("large logits (~1e3)", _qkv(rng, 1, 16, 16, 2, 2, 16, scale=60.0), {"causal": True})
    yield Case("softmax_scale", _qkv(rng, 1, 8, 8, 2, 2, 8), {"softmax_scale": 0.3, "return_lse": True})


def _attention_with_kvcache(rng, quick):
    b, s_cache, h, h_k, d = 3, 64, 4, 2, 16
    for s_new in [1, 4]:
        q = rng.standard_normal((b, s_new, h, d))
        kc = rng.standard_normal((b, s_cache, h_k, d))
        vc = rng.standard_normal((b, s_cache, h_k, d))
        k = rng.standard_normal((b, s_new, h_k, d))
        v = rng.standard_normal((b, s_new, h_k, d))
        seqlens = np.array([0, 17, s_cache - s_new])
        yield Case(f"append {s_new}, per-row cache_seqlens, causal", (q, kc, vc, k, v),
                   {"cache_seqlens": seqlens, "causal": True, "return_lse": True}, inplace=("k_cache", "v_cache"))
    q = rng.standard_normal((2, 1, 8, 16))
    kc = rng.standard_normal((2, 40, 2, 16))
    vc = rng.standard_normal((2, 40, 2, 16))
    yield Case("decode without new keys, int cache_seqlens", (q, kc, vc), {"cache_seqlens": 33})


GENERATORS = {
    "zoh": _zoh, "zoh_diag": _zoh_diag, "bilinear": _bilinear, "bilinear_diag": _zoh_diag,
    "legs": _legs_N, "legs_nplr": _legs_N, "legs_s4d": _legs_N, "legs_online": _legs_online, "legs_reconstruct": _legs_reconstruct,
    "vandermonde_kernel": _vandermonde_kernel, "power_kernel": _power_kernel, "causal_conv": _causal_conv,
    "linear_scan": _linear_scan, "blelloch_scan": _blelloch_scan, "selective_scan": _selective_scan,
    "ssd": _ssd, "ssd_recurrent": _ssd, "ssd_quadratic": _ssd, "ssd_chunked": _ssd,
    "attention": _attention, "attention_with_kvcache": _attention_with_kvcache,
}

#: the module holding each op's reference
MODULES = {
    "zoh": "discretize", "zoh_diag": "discretize", "bilinear": "discretize", "bilinear_diag": "discretize",
    "legs": "hippo", "legs_nplr": "hippo", "legs_s4d": "hippo", "legs_online": "hippo", "legs_reconstruct": "hippo",
    "vandermonde_kernel": "kernel", "power_kernel": "kernel", "causal_conv": "kernel",
    "linear_scan": "scan", "blelloch_scan": "scan", "selective_scan": "scan",
    "ssd": "ssd", "ssd_recurrent": "ssd", "ssd_quadratic": "ssd", "ssd_chunked": "ssd",
    "attention": "attention", "attention_with_kvcache": "attention",
}

#: outputs defined only up to a symmetry are brought to one canonical form before they are compared
CANONICAL = {"legs_nplr": _canonical_nplr}
