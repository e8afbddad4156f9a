"""What every ``refimpl.<idea>.gpu`` module needs: CuPy with a device, and ``.cu`` files loaded once.

Importing this module where CuPy or a CUDA device is missing raises ``ImportError`` that says what to
install and what to use instead, as the contract asks; the ``gpu`` modules import it first.
"""

from __future__ import annotations

import functools
import pathlib

import numpy as np

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


def device_array(name, x, *, complex_ok=True):
    """``x`` as a CuPy array (NumPy input is copied to the device; None stays None), or a ``TypeError``
    naming ``name`` when it is not numeric (or complex where ``complex_ok`` is False)."""
    if x is None:
        return None
    a = x if isinstance(x, cp.ndarray) else cp.asarray(np.asarray(x))
    if a.dtype.kind not in "biufc" or (a.dtype.kind == "c" and not complex_ok):
        raise TypeError(f"{name}: expected a {'numeric' if complex_ok else 'real'} array, got dtype {a.dtype}")
    return a


def require_finite(name, a, check_finite=True):
    """The twins' ``check_finite``: a ``ValueError`` naming ``name`` when ``a`` holds NaN or inf."""
    if check_finite and a is not None and a.size and not bool(cp.isfinite(a).all()):
        raise ValueError(f"{name}: contains NaN or inf (pass check_finite=False to skip this check)")


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


def packed_launcher(fn, grid, block, words, shared_mem=0):
    """A launcher of the ``cupy.RawKernel`` ``fn`` for one grid, block and shared-memory size, through
    ``cuLaunchKernel`` on the current stream. ``words`` are the kernel's arguments, each an ``int`` in the low
    bytes of its own 8-byte word (little-endian): device pointers and ``long long`` whole, 32-bit integers
    masked to 32 bits (the driver reads as many bytes as the parameter has); ``grid`` and ``block`` are
    3-tuples or ints. The ctypes parameter block is built once; the returned ``launch(pointers)`` writes the
    list ``pointers`` into the leading words and launches. A lock covers the write and the launch
    (cuLaunchKernel copies the block), so threads may share one launcher.

    Why: a one-launch call's CUDA-event timing counts the host time before its launch while the GPU waits.
    CuPy's own call converts every argument through its generic machinery (11 arguments: about 11 us on the
    H100 machine), and building the ctypes block on every call cost 6-12 us more than reusing one (measured).
    """
    import ctypes
    import threading

    n = len(words)
    values = (ctypes.c_uint64 * n)(*words)
    base = ctypes.addressof(values)
    params = (ctypes.c_void_p * n)(*range(base, base + 8 * n, 8))
    gx, gy, gz = (grid, 1, 1) if isinstance(grid, int) else (tuple(grid) + (1, 1))[:3]
    bx, by, bz = (block, 1, 1) if isinstance(block, int) else (tuple(block) + (1, 1))[:3]
    ptr, pp, lock = fn.kernel.ptr, ctypes.addressof(params), threading.Lock()
    call, stream = cp.cuda.driver.launchKernel, cp.cuda.get_current_stream
    written = [None]  # the pointers in the block now: a call with the same ones (a memory pool hands the same
                      # buffers back) skips the write

    def launch(pointers):
        with lock:
            if pointers != written[0]:
                values[:len(pointers)] = pointers
                written[0] = pointers
            call(ptr, gx, gy, gz, bx, by, bz, shared_mem, stream().ptr, pp, 0)

    launch.block = (values, params)  # the closure holds them too; kept visible for inspection
    return launch
