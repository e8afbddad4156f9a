"""refimpl: NumPy-first reference implementations of the ideas behind modern sequence models.

One subpackage per idea (chapter), each with the float64 NumPy reference at its root and ``cpu`` (Numba)
and ``gpu`` (CuPy raw kernels) twins of the same names and signatures:

    refimpl.discretize   ZOH / bilinear discretization            (chapter 1)
    refimpl.hippo        HiPPO-LegS                               (chapter 2)
    refimpl.kernel       the Vandermonde kernel, FFT convolution  (chapter 3)
    refimpl.scan         linear and selective scans               (chapter 4)
    refimpl.ssd          state space duality (Mamba-2)            (chapter 5)
    refimpl.attention    attention with a KV cache                (chapter 6)

``refimpl.testing`` holds the tolerance table and ``assert_close`` for checking other implementations.
"""

__version__ = "0.1.0"

__all__ = ["has_gpu", "why_no_gpu", "__version__"]


def why_no_gpu() -> str:
    """'' when the ``gpu`` twins can run here, else the reason (what is missing and what to install)."""
    try:
        from . import _gpu  # noqa: F401
    except ImportError as exc:
        return str(exc)
    return ""


def has_gpu() -> bool:
    """True when CuPy and a CUDA device are present, so ``refimpl.<idea>.gpu`` imports."""
    return not why_no_gpu()
