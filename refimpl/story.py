"""The book's opening and closing chapters: associative recall with no training, and what decoding costs.

Glossary (the symbols of chapters 5 and 6)
    m        key–value pairs written into the context (the "facts" to recall)
    n        state size N of one SSM head, and the dimension of the key embeddings
    p        value dimension (the head dimension P of Mamba-2's x)
    keys     (m, n)  the key embeddings b_i; the rows of the matrix B (Mamba-2's B_t at write step i)
    values   (m, p)  the values v_i (Mamba-2's x_t at write step i)
    H        (p, n)  the SSM state after the m writes with A = 0, Δ = 1:  H = Σ_i v_i b_iᵀ = Vᵀ B
    queries  (m, n)  the read vectors c_j (Mamba-2's C_t at read step j)
    beta     the softmax scale of attention's sharp queries (β → ∞ is a hard lookup)
    T        context length (tokens already in the KV cache) when decoding

Associative recall (Zoology, Arora et al. 2024): write m pairs (b_i, v_i), then ask for v_j given b_j.
An SSM head with A = 0 adds each pair into its state, H = Σ_i v_i b_iᵀ, and reads y_j = H c_j = Vᵀ (B c_j).
The query that brings B c_j closest to e_j is the least-squares one, c_j = B⁺ e_j; then
B c_j = P e_j with P = B B⁺ the orthogonal projector onto the column space of B, of rank min(m, n). So

    recall is exact while m <= n (keys in general position: P = I),   and
    Σ_j ||y_j − v_j||² / Σ_j ||v_j||²  has expectation  tr(I − P) / m = 1 − n/m  for m > n

over values with E[v vᵀ] = I, whatever the keys: a p × n state cannot hold more than n pairs exactly.
Attention keeps all m keys (its cache grows with m) and retrieves v_j exactly at any m as β grows.

Everything here computes in float64 with refimpl's own functions (``refimpl.ssd.ssd`` writes and reads
the state, ``refimpl.attention.attention`` attends); pass a twin (``refimpl.ssd.cpu.ssd``) to use it instead.
"""

from __future__ import annotations

import time

import numpy as np

from . import attention as _attention
from . import ssd as _ssd
from ._checks import as_array, positive_int

__all__ = ["random_keys", "least_squares_queries", "ssm_recall", "write_weights", "attention_sharpness", "attention_recall",
           "recall_error", "nearest_value_accuracy", "capacity_error", "ssm_state_bytes", "stack_layers",
           "prefill_flops", "decode_flops", "seconds", "loglog_slope", "crossover"]


def random_keys(m, n, rng):
    """m key embeddings of unit norm in n dimensions, drawn uniformly on the sphere: (m, n)."""
    m, n = positive_int("m", m), positive_int("n", n)
    keys = rng.standard_normal((m, n))
    return keys / np.linalg.norm(keys, axis=1, keepdims=True)


def least_squares_queries(keys):
    """The read vectors c_j = B⁺ e_j, one per row: (m, n). B c_j is then the projection of e_j on range(B)."""
    keys = as_array("keys", keys, ndim=2, complex_ok=False)
    return np.linalg.pinv(keys).T


def _pairs(keys, values):
    keys = as_array("keys", keys, ndim=2, complex_ok=False)
    values = as_array("values", values, ndim=2, complex_ok=False)
    if values.shape[0] != keys.shape[0]:
        raise ValueError(f"values: expected shape (m, p) with m = {keys.shape[0]} as keys (m, n) = "
                         f"{keys.shape}, got {values.shape}")
    return keys, values


def ssm_recall(keys, values, queries=None, *, A=0.0, dt=None, ssd=None):
    """Write m pairs into one SSD head, then read them back: returns (retrieved (r, p), H (p, n)).

    One call of ``ssd`` over m + r steps: steps 0..m−1 write (x_t = v_t, B_t = b_t, C_t = 0, step Δ_t from
    ``dt``, default 1), steps m..m+r−1 read (x_t = 0, B_t = 0, C_t = c_j, Δ = 0 so that reading does not
    decay the state), so that y at read step j is H·c_j with

        H = Σ_i w_i v_i b_iᵀ,   w_i = Δ_i · exp(A · (Δ_{i+1} + … + Δ_{m−1}))    (w_i = 1 when A = 0, Δ = 1).

    A decay (A < 0) or a selective Δ reweights the keys, b_i → w_i b_i; the state's rank bound is unchanged.
    ``queries`` defaults to the least-squares ones for the reweighted keys; ``ssd`` defaults to the float64
    reference (pass ``refimpl.ssd.cpu.ssd`` for the Numba twin).
    """
    keys, values = _pairs(keys, values)
    m, n = keys.shape
    p = values.shape[1]
    dt = np.ones(m) if dt is None else as_array("dt", dt, ndim=1, complex_ok=False)
    if dt.shape != (m,):
        raise ValueError(f"dt: expected shape (m,) = ({m},) as keys (m, n), got {dt.shape}")
    if queries is None:
        queries = least_squares_queries(write_weights(A, dt)[:, None] * keys)
    else:
        queries = as_array("queries", queries, ndim=2, complex_ok=False)
    if queries.shape[1] != n:
        raise ValueError(f"queries: expected shape (r, n) with n = {n} as keys, got {queries.shape}")
    r = queries.shape[0]
    x = np.zeros((1, m + r, 1, p))
    x[0, :m, 0] = values
    B = np.zeros((1, m + r, 1, n))
    B[0, :m, 0] = keys
    C = np.zeros((1, m + r, 1, n))
    C[0, m:, 0] = queries
    steps = np.zeros((1, m + r, 1))
    steps[0, :m, 0] = dt
    run = _ssd.ssd if ssd is None else ssd
    dtype = np.float64 if ssd is None else np.result_type(values.dtype, np.float32)
    cast = lambda a: np.asarray(a, dtype=dtype)  # noqa: E731
    y, H = run(cast(x), cast(steps), cast([A]), cast(B), cast(C), return_final_states=True)
    return np.asarray(y)[0, m:, 0], np.asarray(H)[0, 0]


def write_weights(A, dt):
    """w_i = Δ_i · exp(A · Σ_{k>i} Δ_k): how much of pair i is left in the state after all m writes."""
    dt = np.asarray(dt, dtype=np.float64)
    after = np.concatenate([np.cumsum(dt[::-1])[::-1][1:], [0.0]])  # Σ_{k>i} Δ_k, summed over its own segment
    return dt * np.exp(float(A) * after)


def attention_sharpness(keys, margin=40.0):
    """β with β·(1 − max_{i≠j} cos(b_i, b_j)) = margin: every other key is down by e^−margin in the softmax.

    Attention needs only that the keys be distinct (the gap is positive); no bound on m.
    """
    keys = as_array("keys", keys, ndim=2, complex_ok=False)
    unit = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    cos = unit @ unit.T
    np.fill_diagonal(cos, -np.inf)
    gap = 1.0 - (cos.max() if len(keys) > 1 else -1.0)
    if gap <= 0:
        raise ValueError("keys: two keys point the same way, so no query can tell them apart")
    return float(margin / gap)


def attention_recall(keys, values, beta=None, *, attention=None):
    """Keep all m pairs in a KV cache and ask with q_j = b_j at softmax scale β: returns retrieved (m, p).

    Keys and values are zero-padded to one head dimension d = max(n, p) (attention's v has q's d); the
    padding changes no dot product. ``attention`` defaults to the float64 reference.
    """
    keys, values = _pairs(keys, values)
    m, n = keys.shape
    p = values.shape[1]
    beta = attention_sharpness(keys) if beta is None else float(beta)
    d = max(n, p)
    k = np.zeros((1, m, 1, d))
    k[0, :, 0, :n] = keys
    v = np.zeros((1, m, 1, d))
    v[0, :, 0, :p] = values
    run = _attention.attention if attention is None else attention
    out = run(k, k, v, softmax_scale=beta)
    return np.asarray(out)[0, :, 0, :p]


def recall_error(retrieved, values):
    """Σ_j ||retrieved_j − v_j||² / Σ_j ||v_j||²: 0 when every value comes back exactly."""
    retrieved, values = _pairs(retrieved, values)
    return float(((retrieved - values) ** 2).sum() / (values ** 2).sum())


def nearest_value_accuracy(retrieved, values):
    """The fraction of j whose retrieved vector is nearer to v_j than to any other stored value."""
    retrieved, values = _pairs(retrieved, values)
    dist = ((retrieved[:, None, :] - values[None, :, :]) ** 2).sum(-1)
    return float(np.mean(dist.argmin(axis=1) == np.arange(len(values))))


def capacity_error(m, n):
    """The closed form of ``recall_error``'s expectation for an n-dimensional state: max(0, 1 − n/m)."""
    m, n = np.asarray(m, dtype=float), np.asarray(n, dtype=float)
    return np.maximum(0.0, 1.0 - n / m)


# ---------------------------------------------------------------------------------------------------------
# costs, counted rather than quoted

def ssm_state_bytes(layers, heads, head_dim, state_size, dtype="float32", *, batch=1):
    """Bytes of the SSM decoding state: layers · heads · head_dim (p) · state_size (n) · batch · itemsize.

    The state is (b, h, p, n) per layer (``refimpl.ssd``'s H), whatever the context length.
    """
    return (int(layers) * int(heads) * int(head_dim) * int(state_size) * int(batch)
            * np.dtype(dtype).itemsize)


def stack_layers(layers, attention_every):
    """(attention layers, SSM layers) of a stack with one attention layer in every ``attention_every``.

    ``attention_every=1`` is a pure transformer, ``0`` a pure SSM; Jamba's 1:7 interleaving is 8.
    """
    layers = positive_int("layers", layers)
    if attention_every == 0:
        return 0, layers
    every = positive_int("attention_every", attention_every)
    n_attn = layers // every
    return n_attn, layers - n_attn


def prefill_flops(kind, L, d, *, n=None):
    """Multiply-adds ×2 to process L tokens of width d (one head, one layer's sequence mixing), counted.

    ``"rnn"``: L steps of tanh(W h + U x) with W (d, d), U (d, d): 4·L·d² (and L steps in sequence).
    ``"attention"``: causal, S = QKᵀ and P V over the L(L+1)/2 visible pairs: 4·d·L(L+1)/2.
    ``"fft"``: causal convolution of d channels by FFTs of length 2L (3 transforms of ~5·2L·log2(2L)
    real flops each, plus the product): d·(15·2L·log2(2L) + 6·2L).
    ``"scan"``: the SSM recurrence with a p × n state, p = d and n given: H_t = a H + x bᵀ, y = H c:
    per step 2 multiply-adds per state entry plus the read: 6·L·d·n.
    """
    L, d = positive_int("L", L), positive_int("d", d)
    if kind == "rnn":
        return 4 * L * d * d
    if kind == "attention":
        return 4 * d * L * (L + 1) // 2
    if kind == "fft":
        M = 2 * L
        return int(d * (15 * M * np.log2(M) + 6 * M))
    if kind == "scan":
        return 6 * L * d * positive_int("n", n)
    raise ValueError(f"kind: expected one of 'rnn', 'attention', 'fft', 'scan', got {kind!r}")


def decode_flops(kind, T, d, *, n=None):
    """Flops of one decoding step at context T (width d): attention reads T cached keys and values
    (4·T·d), the SSM and the RNN update a fixed state (6·d·n and 4·d², whatever T)."""
    T, d = positive_int("T", T, minimum=0), positive_int("d", d)
    if kind == "attention":
        return 4 * T * d
    if kind == "scan":
        return 6 * d * positive_int("n", n)
    if kind == "rnn":
        return 4 * d * d
    raise ValueError(f"kind: expected one of 'rnn', 'attention', 'scan', got {kind!r}")


# ---------------------------------------------------------------------------------------------------------
# measuring on the reader's machine

def seconds(fn, *, repeat=5, warmup=1, budget_s=5.0):
    """The fastest of ``repeat`` timed calls of ``fn()`` after ``warmup`` untimed ones, in seconds.

    The minimum, not the median: on a shared machine every disturbance only adds time, so the fastest
    run is the one closest to the cost of the computation (what a slope fit needs). Stops early once
    ``budget_s`` is spent and three runs are in.
    """
    for _ in range(warmup):
        fn()
    best, start, runs = np.inf, time.perf_counter(), 0
    while runs < repeat:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        runs += 1
        if runs >= 3 and time.perf_counter() - start > budget_s:
            break
    return best


def loglog_slope(x, y):
    """The least-squares slope of log y against log x: the exponent k of y ∝ x^k."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"y: expected the shape of x {x.shape} with at least two points, got {y.shape}")
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def crossover(x, y1, y2):
    """The first x where y1 − y2 changes sign, interpolated on log axes; None where it never does."""
    x, y1, y2 = (np.asarray(v, dtype=float) for v in (x, y1, y2))
    diff = np.log(y1) - np.log(y2)
    for i in range(len(x) - 1):
        if diff[i] == 0:
            return float(x[i])
        if diff[i] * diff[i + 1] < 0:
            w = diff[i] / (diff[i] - diff[i + 1])
            return float(np.exp(np.log(x[i]) + w * (np.log(x[i + 1]) - np.log(x[i]))))
    return None
