"""Comparing any framework's arrays with the float64 reference.

``to_numpy`` takes NumPy, CuPy, PyTorch and JAX arrays (and anything with ``__array__`` or DLPack) to a
NumPy array on the host; ``compare`` measures the errors; ``assert_close`` raises with all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tolerance import _dtype_name, tolerance


def to_numpy(x) -> np.ndarray:
    """A host NumPy copy (or view) of ``x``, upcast from bfloat16 where NumPy has no such dtype."""
    if isinstance(x, np.ndarray):
        return x
    mod = type(x).__module__.split(".")[0]
    if mod == "cupy":
        return x.get()
    if mod == "torch":
        t = x.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    try:
        a = np.asarray(x)  # JAX, lists, scalars, anything with __array__
    except Exception:
        a = np.from_dlpack(x)
    if a.dtype.name == "bfloat16":  # ml_dtypes' bfloat16, as JAX hands it over
        a = a.astype(np.float32)
    return a


@dataclass
class Comparison:
    """The errors of ``actual`` against ``expected``, and whether they are within tolerance."""

    rel_l2: float
    max_abs: float
    where: tuple
    rtol: float
    atol: float
    passed: bool
    reason: str = ""

    def __str__(self):
        verdict = "pass" if self.passed else "FAIL"
        return (f"{verdict}: relative L2 error {self.rel_l2:.3e} (rtol {self.rtol:.1e}, atol {self.atol:.1e}), "
                f"max abs error {self.max_abs:.3e} at index {self.where}" + (f"; {self.reason}" if self.reason else ""))


def compare(actual, expected, *, rtol, atol) -> Comparison:
    """Errors of ``actual`` against ``expected`` (see ``refimpl.testing.tolerance`` for the criterion)."""
    a = to_numpy(actual)
    e = to_numpy(expected)
    if a.shape != e.shape:
        return Comparison(np.inf, np.inf, (), rtol, atol, False, f"shape {a.shape} != expected {e.shape}")
    if a.size == 0:
        return Comparison(0.0, 0.0, (), rtol, atol, True)
    a = a.astype(np.complex128 if np.iscomplexobj(a) else np.float64)
    e = e.astype(np.complex128 if np.iscomplexobj(e) else np.float64)
    finite = np.isfinite(e)
    # non-finite expected values must be matched exactly (an output of -inf log-sum-exp, say)
    same_nonfinite = np.array_equal(a[~finite], e[~finite], equal_nan=True)
    diff = np.where(finite, np.abs(a - e), 0.0)
    bad = ~np.isfinite(diff) | (finite & ~np.isfinite(a))
    diff = np.where(bad, np.inf, diff)
    flat = int(np.argmax(diff))
    where = tuple(int(i) for i in np.unravel_index(flat, a.shape))
    max_abs = float(diff.reshape(-1)[flat])
    err = float(np.linalg.norm(diff[finite])) if max_abs < np.inf else np.inf
    ref = float(np.linalg.norm(e[finite]))
    rel_l2 = err / ref if ref > 0 else (0.0 if err == 0 else np.inf)
    n = int(finite.sum())
    ok = same_nonfinite and err <= atol * np.sqrt(max(n, 1)) + rtol * ref
    reason = "" if same_nonfinite else "non-finite values differ from the expected ones"
    if max_abs == np.inf:
        reason = "actual has NaN or inf where expected is finite"
    return Comparison(rel_l2, max_abs, where, rtol, atol, bool(ok), reason)


def assert_close(actual, expected, *, op, dtype=None, rtol=None, atol=None, name="output"):
    """Raise ``AssertionError`` unless ``actual`` is within ``tolerance(op, dtype)`` of ``expected``.

    ``dtype`` is the precision ``actual`` was computed in (default: its own dtype). ``rtol``/``atol``
    override the table. The message gives the relative L2 error, the max abs error and where it is.
    """
    if dtype is None:
        dtype = _dtype_name(actual.dtype if hasattr(actual, "dtype") else to_numpy(actual).dtype)
    t_rtol, t_atol = tolerance(op, dtype)
    c = compare(actual, expected, rtol=t_rtol if rtol is None else rtol, atol=t_atol if atol is None else atol)
    if not c.passed:
        raise AssertionError(f"{op} ({dtype}) {name}: {c}")
    return c
