"""Input validation shared by every reference function and twin.

Errors follow the contract: a ``ValueError`` (or ``TypeError`` for a dtype that cannot be taken) whose
message names the argument, the shape or dtype expected and the one received. Nothing here writes to its
inputs, so a call that raises leaves the caller's arrays as they were.
"""

from __future__ import annotations

import numbers

import numpy as np

_REAL = (np.float16, np.float32, np.float64)
_COMPLEX = (np.complex64, np.complex128)


def as_array(name, x, *, ndim=None, min_ndim=None, complex_ok=True, check_finite=True):
    """Return ``x`` as a NumPy array after checking its rank, kind and values.

    ``ndim`` (an int or a tuple of ints) or ``min_ndim`` bound the rank; booleans, integers of any kind
    are accepted (and later promoted), strings and objects are not. ``check_finite`` rejects NaN and inf.
    """
    try:
        a = np.asarray(x)
    except Exception as exc:  # e.g. a CuPy array handed to a NumPy reference
        raise TypeError(f"{name}: cannot convert {type(x).__name__} to a NumPy array ({exc})") from exc
    if a.dtype == object or a.dtype.kind not in "biufc":
        raise TypeError(f"{name}: expected a numeric array, got dtype {a.dtype}")
    if a.dtype.kind == "c" and not complex_ok:
        raise TypeError(f"{name}: expected a real array, got dtype {a.dtype}")
    check_rank(name, a.shape, ndim=ndim, min_ndim=min_ndim)
    if check_finite and a.dtype.kind in "fc" and not np.isfinite(a).all():
        raise ValueError(f"{name}: contains NaN or inf (pass check_finite=False to skip this check)")
    return a


def check_rank(name, shape, *, ndim=None, min_ndim=None):
    """Raise ``ValueError`` naming ``name`` unless ``len(shape)`` is ``ndim`` (int or tuple) / at least ``min_ndim``."""
    shape = tuple(shape)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if len(shape) not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(f"{name}: expected {want} dimensions, got shape {shape} ({len(shape)} dimensions)")
    if min_ndim is not None and len(shape) < min_ndim:
        raise ValueError(f"{name}: expected at least {min_ndim} dimensions, got shape {shape}")


def require_shape(name, a, expected, what=None):
    """Raise ``ValueError`` unless ``a.shape == expected``; ``what`` names the expected shape symbolically."""
    expected = tuple(expected)
    if tuple(a.shape) != expected:
        sym = f" {what} =" if what else ""
        raise ValueError(f"{name}: expected shape{sym} {expected}, got {tuple(a.shape)}")


def broadcast_shape(names_and_shapes):
    """The broadcast of several shapes, or a ``ValueError`` naming the arguments that do not broadcast."""
    shapes = [tuple(s) for _, s in names_and_shapes]
    if all(s == shapes[0] for s in shapes):  # the common case, without NumPy's machinery
        return shapes[0]
    try:
        return np.broadcast_shapes(*shapes)
    except ValueError:
        listed = ", ".join(f"{n} {tuple(s)}" for n, s in names_and_shapes)
        raise ValueError(f"shapes do not broadcast: {listed}") from None


def positive_int(name, value, minimum=1):
    """An ``int`` of at least ``minimum``, or a ``ValueError`` naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return int(value)


def float_dtype(name, a, allowed=("float32", "float64"), complex_allowed=("complex64", "complex128")):
    """Check that a twin's input has a dtype it computes in; return that dtype."""
    ok = set(allowed) | set(complex_allowed)
    if a.dtype.name not in ok:
        raise TypeError(f"{name}: expected dtype in {sorted(ok)}, got {a.dtype}")
    return a.dtype


def result_dtype(*arrays, real=np.float64, complex_=np.complex128):
    """float64 unless one of ``arrays`` is complex, then complex128: the reference's output dtype."""
    return complex_ if any(np.iscomplexobj(a) for a in arrays) else real
