"""refimpl.testing: the oracle's tools.

- ``tolerance(op, dtype)`` -> (rtol, atol), one table for every op and dtype.
- ``assert_close(actual, expected, *, op, dtype)`` for NumPy, CuPy, PyTorch and JAX arrays.
- ``check(fn, op, *, dtype)`` runs an implementation over a sweep of shapes and adversarial cases and returns
  a report (a table; ``.passed``); ``python -m refimpl check module:function --op OP`` is the same from a shell.
- ``golden(op, name)``: small committed input/output vectors (``refimpl/testing/golden/``).
- ``compare`` (the errors without raising) and ``to_numpy``.
"""

from .check import Report, check, reference
from .compare import Comparison, assert_close, compare, to_numpy
from .golden import golden
from .tolerance import tolerance

__all__ = ["tolerance", "assert_close", "check", "golden", "Report", "reference", "compare", "Comparison", "to_numpy"]
