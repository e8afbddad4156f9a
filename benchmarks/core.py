"""Timing, ceilings and the result records of ``python -m benchmarks.run``."""

from __future__ import annotations

import dataclasses
import datetime
import platform
import statistics
import time
from typing import Callable, Optional


@dataclasses.dataclass
class Case:
    """One op x implementation at one shape.

    ``setup()`` draws fresh random inputs and returns a zero-argument callable that runs the op once
    (on the GPU it may return without synchronizing: the timer synchronizes). ``bytes`` is the fewest
    bytes the op must move (inputs read once, outputs written once); ``flops`` its arithmetic; the
    ceiling compared against is bandwidth when ``bound == "memory"`` and the matmul rate otherwise.
    ``peer`` names the implementation in the same run this one is measured against (``impl`` of another
    case with the same op and shape), and ``goal`` quotes PERFORMANCE.md.
    """

    op: str
    impl: str
    dtype: str
    shape: dict
    setup: Callable[[], Callable[[], object]]
    bytes: float = 0.0
    flops: float = 0.0
    bound: str = "memory"
    peer: Optional[str] = None
    goal: str = ""
    repeats: int = 20
    note: str = ""
    device: str = ""  # "cpu" or "gpu"; default: "gpu" for impl "gpu", "gpu:..." or "...(gpu)", else "cpu"

    def __post_init__(self):
        if not self.device:
            gpu = self.impl == "gpu" or self.impl.startswith("gpu:") or self.impl.endswith("(gpu)")
            self.device = "gpu" if gpu else "cpu"


def time_cpu(fn, repeats=20, warmup=2, budget_s=20.0):
    """Median wall-clock milliseconds of ``fn()`` after ``warmup`` calls; fewer repeats if slow."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start > budget_s and len(times) >= 3:
            break
    return statistics.median(times)


def time_gpu(fn, repeats=20, warmup=3):
    """Median CUDA-event milliseconds of ``fn()`` after warm-up."""
    import cupy as cp

    for _ in range(warmup):
        fn()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(repeats):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop))
    return statistics.median(times)


def cpu_ceiling():
    """Host memory bandwidth of a large np.copyto, in bytes per second (bytes read + written)."""
    import numpy as np

    n = 1 << 26
    src = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    dst = np.empty_like(src)
    ms = time_cpu(lambda: np.copyto(dst, src), repeats=10)
    return {"copy_bytes_per_s": 2 * 4 * n / (ms * 1e-3), "copy_ms": ms, "copy_elements": n}


def gpu_ceiling():
    """Device copy bandwidth (2^28 float32, read + write) and fp16 matmul rate (8192^3), measured now."""
    import cupy as cp

    n = 1 << 28
    src = cp.random.standard_normal(n, dtype=cp.float32)
    dst = cp.empty_like(src)
    copy_ms = time_gpu(lambda: dst.__setitem__(Ellipsis, src), repeats=20)
    del src, dst
    m = 8192
    a = cp.random.standard_normal((m, m), dtype=cp.float32).astype(cp.float16)
    b = cp.random.standard_normal((m, m), dtype=cp.float32).astype(cp.float16)
    mm_ms = time_gpu(lambda: a @ b, repeats=10)
    del a, b
    return {"copy_bytes_per_s": 2 * 4 * n / (copy_ms * 1e-3), "copy_ms": copy_ms, "copy_elements": n,
            "matmul_flops_per_s": 2 * m**3 / (mm_ms * 1e-3), "matmul_ms": mm_ms, "matmul_shape": [m, m, m]}


def device_name(kind):
    if kind == "gpu":
        import cupy as cp

        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        return props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    import os

    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def versions(kind):
    import numba
    import numpy
    import scipy

    v = {"python": platform.python_version(), "numpy": numpy.__version__, "scipy": scipy.__version__,
         "numba": numba.__version__}
    if kind == "gpu":
        import cupy as cp

        v["cupy"] = cp.__version__
        v["cuda_runtime"] = cp.cuda.runtime.runtimeGetVersion()
        v["cuda_driver"] = cp.cuda.runtime.driverGetVersion()
    try:
        import torch

        v["torch"] = torch.__version__
    except Exception:
        pass
    return v


def today():
    return datetime.date.today().isoformat()
