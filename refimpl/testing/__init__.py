"""refimpl.testing: the oracle's tools.

- ``tolerance(op, dtype)`` -> (rtol, atol), one table for every op and dtype.
- ``assert_close(actual, expected, *, op, dtype)`` for NumPy, CuPy, PyTorch and JAX arrays.
- ``compare`` (the errors without raising) and ``to_numpy``.
"""

from .compare import Comparison, assert_close, compare, to_numpy
from .tolerance import tolerance

__all__ = ["tolerance", "assert_close", "compare", "Comparison", "to_numpy"]
