"""The opening and closing chapters' claims that are not a test elsewhere.

Associative recall (chapter 7, c): an SSD state of size n written with A = 0 and read with least-squares
queries recalls m <= n pairs exactly, loses exactly a fraction 1 − n/m of the values' energy past that
(whatever the keys), and attention with sharp queries recalls any number of pairs exactly. The operation
counts behind the cost table (chapters 0 and 7) have the stated exponents. No timing is asserted here:
speed is measured in the notebooks, never in tests.
"""

from __future__ import annotations

import numpy as np
import pytest

import refimpl.attention as attention_ref
import refimpl.ssd.cpu as ssd_cpu
from refimpl import story
from refimpl.testing import assert_close


@pytest.mark.parametrize("n", [4, 16, 48])
@pytest.mark.parametrize("fraction", [0.25, 0.5, 1.0])
def test_ssm_recall_is_exact_up_to_capacity(rng, n, fraction):
    m = max(1, int(fraction * n))
    keys = story.random_keys(m, n, rng)
    values = rng.standard_normal((m, 8))
    retrieved, H = story.ssm_recall(keys, values)
    assert_close(retrieved, values, op="ssd", dtype="float64")
    assert story.nearest_value_accuracy(retrieved, values) == 1.0


def test_state_is_the_sum_of_outer_products_and_does_not_grow(rng):
    n, p = 8, 5
    for m in (3, 8, 40):
        keys, values = story.random_keys(m, n, rng), rng.standard_normal((m, p))
        _, H = story.ssm_recall(keys, values)
        assert H.shape == (p, n)
        assert_close(H, values.T @ keys, op="ssd", dtype="float64")  # H = Σ_i v_i b_iᵀ, independent of ssd


@pytest.mark.parametrize("n, m", [(4, 6), (8, 16), (16, 64), (32, 40)])
def test_error_past_capacity_is_exactly_one_minus_n_over_m(rng, n, m):
    """With one-hot values (V = I) the error is tr(I − P)/m = 1 − rank(B)/m, with no sampling noise."""
    keys = story.random_keys(m, n, rng)
    retrieved, _ = story.ssm_recall(keys, np.eye(m))
    assert abs(story.recall_error(retrieved, np.eye(m)) - story.capacity_error(m, n)) < 1e-9


@pytest.mark.parametrize("family", ["gaussian", "identity_first", "low_rank", "hadamard_like"])
def test_no_choice_of_keys_beats_the_bound(rng, family):
    n, m = 8, 24
    if family == "gaussian":
        keys = rng.standard_normal((m, n))
    elif family == "identity_first":
        keys = np.vstack([np.eye(n), rng.standard_normal((m - n, n))])
    elif family == "low_rank":
        keys = rng.standard_normal((m, 3)) @ rng.standard_normal((3, n))
    else:
        keys = np.sign(rng.standard_normal((m, n)))
    retrieved, _ = story.ssm_recall(keys, np.eye(m))
    err = story.recall_error(retrieved, np.eye(m))
    assert err >= story.capacity_error(m, n) - 1e-9
    assert abs(err - (1 - np.linalg.matrix_rank(keys) / m)) < 1e-9


def test_past_capacity_recall_fails(rng):
    n, p = 16, 4
    m = 4 * n
    keys, values = story.random_keys(m, n, rng), rng.standard_normal((m, p))
    retrieved, _ = story.ssm_recall(keys, values)
    assert story.recall_error(retrieved, values) > 0.5          # expectation 0.75
    assert story.nearest_value_accuracy(retrieved, values) < 0.5


@pytest.mark.parametrize("n, m", [(4, 64), (16, 16), (16, 128), (32, 256)])
def test_attention_recalls_any_number_of_pairs(rng, n, m):
    keys, values = story.random_keys(m, n, rng), rng.standard_normal((m, 8))
    retrieved = story.attention_recall(keys, values)
    assert_close(retrieved, values, op="attention", dtype="float64")
    assert story.nearest_value_accuracy(retrieved, values) == 1.0


def test_blunt_attention_is_not_exact(rng):
    """The sharpness matters: at β = 1 the softmax averages, and recall is far from exact."""
    keys, values = story.random_keys(64, 8, rng), rng.standard_normal((64, 8))
    assert story.recall_error(story.attention_recall(keys, values, beta=1.0), values) > 0.5


def test_cpu_twin_recalls_like_the_reference(rng):
    n, m = 16, 40
    keys, values = story.random_keys(m, n, rng), rng.standard_normal((m, 4))
    ref, H_ref = story.ssm_recall(keys, values)
    twin, H_twin = story.ssm_recall(keys.astype(np.float32), values.astype(np.float32), ssd=ssd_cpu.ssd)
    assert twin.dtype == np.float32
    assert_close(twin, ref, op="ssd", dtype="float32")
    assert_close(H_twin, H_ref, op="ssd", dtype="float32")


def test_bad_input_names_the_argument(rng):
    keys = story.random_keys(5, 4, rng)
    with pytest.raises(ValueError, match="values"):
        story.ssm_recall(keys, np.ones((4, 2)))
    with pytest.raises(ValueError, match="queries"):
        story.ssm_recall(keys, np.ones((5, 2)), queries=np.ones((5, 3)))
    with pytest.raises(ValueError, match="keys"):
        story.attention_sharpness(np.vstack([keys, keys[:1]]))
    with pytest.raises(ValueError, match="kind"):
        story.prefill_flops("lstm", 8, 4)
    with pytest.raises(ValueError, match="attention_every"):
        story.stack_layers(8, -1)


# ---------------------------------------------------------------------------------------------------------
# operation counts behind the cost table


def _slope(f, L):
    return np.log(f(2 * L) / f(L)) / np.log(2)


def test_prefill_exponents():
    d, n, L = 64, 64, 1 << 14
    assert _slope(lambda x: story.prefill_flops("rnn", x, d), L) == pytest.approx(1.0)
    assert _slope(lambda x: story.prefill_flops("scan", x, d, n=n), L) == pytest.approx(1.0)
    assert _slope(lambda x: story.prefill_flops("attention", x, d), L) == pytest.approx(2.0, abs=1e-3)
    fft = _slope(lambda x: story.prefill_flops("fft", x, d), L)
    assert 1.0 < fft < 1.1  # L log L: a slope that creeps down to 1 as L grows


def test_attention_count_is_the_causal_mask():
    """4·d per visible (query, key) pair: the pairs are those of refimpl's causal mask."""
    for L in (1, 7, 64):
        pairs = int(attention_ref.causal_mask(L, L).sum())
        assert story.prefill_flops("attention", L, 3) == 4 * 3 * pairs


def test_decode_costs_and_state_memory():
    d, n = 64, 64
    assert story.decode_flops("attention", 2000, d) == 2 * story.decode_flops("attention", 1000, d)
    assert story.decode_flops("scan", 2000, d, n=n) == story.decode_flops("scan", 1, d, n=n)
    assert story.decode_flops("rnn", 2000, d) == story.decode_flops("rnn", 1, d)
    # the state is refimpl.ssd's H: (b, h, p, n)
    H = np.zeros((2, 3, 5, 7), np.float32)
    assert story.ssm_state_bytes(1, 3, 5, 7, "float32", batch=2) == H.nbytes
    # a KV cache is the two arrays of attention_with_kvcache
    kc = np.zeros((2, 100, 3, 5), np.float16)
    assert attention_ref.kv_cache_bytes(1, 3, 5, 100, "float16", batch=2) == 2 * kc.nbytes


def test_stack_layers():
    assert story.stack_layers(32, 8) == (4, 28)
    assert story.stack_layers(8, 1) == (8, 0)
    assert story.stack_layers(8, 0) == (0, 8)


def test_slope_and_crossover_helpers():
    x = np.array([1.0, 2.0, 4.0, 8.0])
    assert story.loglog_slope(x, 3 * x ** 2) == pytest.approx(2.0)
    assert story.crossover(x, x, np.full(4, 3.0)) == pytest.approx(3.0)
    assert story.crossover(x, x, np.full(4, 100.0)) is None
    calls = []
    assert story.seconds(lambda: calls.append(1), repeat=4, warmup=2) >= 0 and len(calls) == 6


def test_decay_and_selective_steps_only_reweight_the_keys(rng):
    """A < 0 and a per-step Δ give H = Σ w_i v_i b_iᵀ: exact up to n pairs, and the bound 1 − n/m past it."""
    n, A = 8, -0.3
    for m in (5, 8, 24):
        keys = story.random_keys(m, n, rng)
        dt = rng.uniform(0.2, 1.0, m)
        values = rng.standard_normal((m, 3))
        retrieved, H = story.ssm_recall(keys, values, A=A, dt=dt)
        w = story.write_weights(A, dt)
        assert_close(H, (w[:, None] * values).T @ keys, op="ssd", dtype="float64")  # independent of ssd
        if m <= n:
            assert_close(retrieved, values, op="ssd", dtype="float64")
        onehot, _ = story.ssm_recall(keys, np.eye(m), A=A, dt=dt)
        assert story.recall_error(onehot, np.eye(m)) >= story.capacity_error(m, n) - 1e-9


def test_write_weights_against_the_recurrence():
    dt = np.array([0.5, 1.0, 0.25, 2.0])
    w = story.write_weights(-0.7, dt)
    expected = [dt[i] * np.prod(np.exp(-0.7 * dt[i + 1:])) for i in range(4)]
    assert np.allclose(w, expected, rtol=1e-14, atol=0)
    assert np.array_equal(story.write_weights(0.0, np.ones(3)), np.ones(3))


def test_hybrid_memory_tends_to_one_eighth():
    """The 1:7 hybrid's carried memory over the attention stack's tends to 1/8 as the context grows."""
    def carried(every, T):
        n_attn, n_ssm = story.stack_layers(32, every)
        return attention_ref.kv_cache_bytes(n_attn, 8, 128, T) + story.ssm_state_bytes(n_ssm, 80, 64, 128)
    ratios = [carried(8, T) / carried(1, T) for T in (1 << 12, 1 << 16, 1 << 20, 1 << 24)]
    assert all(a > b for a, b in zip(ratios, ratios[1:]))
    assert abs(ratios[-1] - 1 / 8) < 1e-3
    assert carried(0, 1 << 12) == carried(0, 1 << 24)
