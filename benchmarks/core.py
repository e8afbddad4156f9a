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


_SPIN = r"""
extern "C" __global__ void spin(unsigned long long ns) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); } while (t - t0 < ns);
}
"""


def time_gpu(fn, repeats=20, warmup=3, detail=False):
    """Median device milliseconds of one ``fn()`` after warm-up, with the host's launch work kept off the clock.

    Before each timed call the stream gets a device-side wait: a one-thread kernel that spins on the global
    timer for longer than the host takes to issue the call. The start event is therefore reached only after
    ``fn`` has been enqueued, and the two events bracket what the device does for it, launch gaps between
    its kernels included: what ``triton.testing.do_bench`` or a replayed CUDA graph measures, and what the
    floors (bytes over copy bandwidth, operations over a unit's rate) are comparable with. The spin reads and
    writes no memory, so the cache holds what the previous call left, as it would without it.

    With ``detail=True`` it returns ``{"ms", "latency_ms", "host_ms"}``: ``latency_ms`` is the old figure, one
    call from an idle device with events around it (host work included), ``host_ms`` the host's wall time
    to issue one call. The idle and the held call alternate, so that both see the same clocks (a long run
    of heavy kernels can lower them: timed one set after the other, a 4 ms prefill differed by 14 %).
    All three are medians of ``repeats`` calls.
    """
    import cupy as cp

    spin = cp.RawKernel(_SPIN, "spin")
    spin((1,), (1,), (cp.uint64(1),))  # compiled and loaded before anything is timed
    slowest = 0.0
    for i in range(warmup):
        t0 = time.perf_counter()
        fn()
        if i:  # the first call may compile: seconds that say nothing about issuing
            slowest = max(slowest, time.perf_counter() - t0)
        cp.cuda.Device().synchronize()
    latency, host, times = [], [], []
    for _ in range(repeats):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        t0 = time.perf_counter()
        fn()
        host.append(time.perf_counter() - t0)
        stop.record()
        stop.synchronize()
        latency.append(cp.cuda.get_elapsed_time(start, stop))
        # three times the slowest issue seen so far, never under 50 us: the device still spins when fn's last
        # launch arrives
        slowest = max(slowest, host[-1])
        ns = int(min(max(50e3, 3e9 * slowest), 20e6))
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        spin((1,), (1,), (cp.uint64(ns),))
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop))
    ms = statistics.median(times)
    if detail:
        return {"ms": ms, "latency_ms": statistics.median(latency), "host_ms": 1e3 * statistics.median(host)}
    return ms


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
