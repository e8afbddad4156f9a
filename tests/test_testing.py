"""refimpl.testing: the tolerance table and assert_close must catch what they exist to catch."""

from __future__ import annotations

import numpy as np
import pytest

from refimpl.testing import assert_close, compare, to_numpy, tolerance


def test_tolerance_rows():
    assert tolerance("zoh_diag", "float64") == tolerance("zoh_diag", "complex128")
    assert tolerance("zoh_diag", np.float32) == tolerance("zoh_diag", "complex64")
    r64, _ = tolerance("ssd", "float64")
    r32, _ = tolerance("ssd", "float32")
    r16, _ = tolerance("ssd", "float16")
    assert r64 < r32 < r16
    with pytest.raises(ValueError, match="dtype"):
        tolerance("ssd", "int32")
    with pytest.raises(ValueError, match="op"):
        tolerance("", "float32")


def test_assert_close_passes_rounding_and_fails_a_real_error(rng):
    expected = rng.standard_normal((64, 33))
    assert_close(expected.astype(np.float32), expected, op="zoh_diag")
    wrong = expected.copy()
    wrong[5, 7] += 0.5  # one wrong element among 2112
    with pytest.raises(AssertionError, match=r"max abs error 5\.0+e-01 at index \(5, 7\)"):
        assert_close(wrong.astype(np.float32), expected, op="zoh_diag")


def test_nan_and_shape_mismatch_fail(rng):
    e = rng.standard_normal(10)
    a = e.copy()
    a[3] = np.nan
    c = compare(a, e, rtol=1e-3, atol=1e-3)
    assert not c.passed and c.where == (3,)
    assert not compare(e[:9], e, rtol=1, atol=1).passed


def test_matching_infinities_pass():
    e = np.array([0.0, -np.inf, 1.0])
    assert compare(e.copy(), e, rtol=1e-12, atol=0).passed
    assert not compare(np.array([0.0, 0.0, 1.0]), e, rtol=1e-12, atol=0).passed


def test_complex_arrays(rng):
    e = rng.standard_normal(50) + 1j * rng.standard_normal(50)
    assert_close(e.astype(np.complex64), e, op="zoh_diag")
    with pytest.raises(AssertionError):
        assert_close(e.conj(), e, op="zoh_diag", dtype="complex128")


def test_to_numpy_takes_framework_arrays():
    torch = pytest.importorskip("torch")
    t = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)
    np.testing.assert_array_equal(to_numpy(t), np.arange(6.0).reshape(2, 3))


def test_to_numpy_takes_dlpack_and_array_protocol():
    class Wrapped:
        def __init__(self, a):
            self.a = a

        def __array__(self, dtype=None, copy=None):
            return self.a

    a = np.arange(4.0)
    np.testing.assert_array_equal(to_numpy(Wrapped(a)), a)


def test_to_numpy_takes_jax_arrays():
    jnp = pytest.importorskip("jax.numpy")
    np.testing.assert_array_equal(to_numpy(jnp.arange(3.0)), np.arange(3.0))


@pytest.mark.gpu
def test_assert_close_takes_cupy_arrays(rng):
    import cupy as cp

    e = rng.standard_normal(100)
    assert_close(cp.asarray(e.astype(np.float32)), e, op="zoh_diag")
    with pytest.raises(AssertionError, match="max abs error"):
        assert_close(cp.asarray(e[::-1].copy()), e, op="zoh_diag")
