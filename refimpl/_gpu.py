"""What every ``refimpl.<idea>.gpu`` module needs: CuPy with a device, and ``.cu`` files loaded once.

Importing this module where CuPy or a CUDA device is missing raises ``ImportError`` that says what to
install and what to use instead, as the contract asks; the ``gpu`` modules import it first.
"""

from __future__ import annotations

import functools
import pathlib

_HINT = (
    'install CuPy for your CUDA version (pip install "refimpl[gpu]", or cupy-cuda13x for CUDA 13) on a '
    "machine with an NVIDIA GPU; without one, use refimpl.<idea>.cpu (Numba) or the NumPy reference "
    "refimpl.<idea>"
)

try:
    import cupy as cp
except Exception as exc:  # ImportError, or a CuPy that finds no CUDA libraries
    raise ImportError(f"refimpl GPU twins need CuPy ({exc}); {_HINT}") from exc

try:
    _count = cp.cuda.runtime.getDeviceCount()
except Exception as exc:
    raise ImportError(f"refimpl GPU twins found no CUDA device ({exc}); {_HINT}") from exc
if _count < 1:
    raise ImportError(f"refimpl GPU twins found no CUDA device; {_HINT}")


@functools.lru_cache(maxsize=None)
def module(cu_path: str, options: tuple = ()) -> "cp.RawModule":
    """Compile (once per process) and return the ``cupy.RawModule`` of a ``.cu`` file beside the caller."""
    path = pathlib.Path(cu_path)
    code = path.read_text()
    # The .cu files include nothing but themselves and CUDA's own headers.
    return cp.RawModule(code=code, options=("-std=c++17",) + tuple(options), name_expressions=None)


def kernel(cu_path, name, options=()):
    """The function ``name`` of the module compiled from ``cu_path``."""
    return module(str(cu_path), tuple(options)).get_function(name)


def as_device(name, x, dtype):
    """``x`` as a C-contiguous CuPy array of ``dtype`` (NumPy arrays are copied to the device)."""
    try:
        a = cp.asarray(x)
    except Exception as exc:
        raise TypeError(f"{name}: cannot move {type(x).__name__} to the GPU ({exc})") from exc
    if a.dtype.kind not in "biufc":
        raise TypeError(f"{name}: expected a numeric array, got dtype {a.dtype}")
    return cp.ascontiguousarray(a, dtype=dtype)


@functools.lru_cache(maxsize=None)
def multiprocessors(device_id: int) -> int:
    """The device's SM count, cached: cudaGetDeviceProperties costs about a millisecond of host time."""
    return cp.cuda.runtime.deviceGetAttribute(cp.cuda.runtime.cudaDevAttrMultiProcessorCount, device_id)


def blocks_for(n, threads, per_thread=1, max_blocks=None):
    """Grid size for a grid-stride loop over ``n`` items: enough blocks to fill the device, no more."""
    if max_blocks is None:
        max_blocks = multiprocessors(cp.cuda.Device().id) * 16
    need = -(-n // (threads * per_thread))
    return max(1, min(need, max_blocks))
