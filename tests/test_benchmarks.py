"""The benchmark harness measures what its records say it measures.

A GPU record's ``ms`` is the device's time for one call (the host's work to issue it is off the clock),
``latency_ms`` one call from an idle device with host work included, ``host_ms`` the host's issue time
(benchmarks/core.py). These tests give ``time_gpu`` a call whose host and device costs are known and far apart,
so that a timer that mixed them up fails by a wide margin, not by noise.
"""

from __future__ import annotations

import time

import pytest

from benchmarks import core

HOST_S = 0.004  # host work before the launch: 4 ms of sleeping
DEVICE_NS = 300_000  # device work: one kernel that waits 0.3 ms on the global timer


def test_time_cpu_is_the_median_wall_time():
    ms = core.time_cpu(lambda: time.sleep(HOST_S), repeats=5, warmup=1)
    assert HOST_S * 1e3 <= ms < 10 * HOST_S * 1e3


@pytest.mark.gpu
def test_time_gpu_keeps_the_host_off_the_clock():
    import cupy as cp

    wait = cp.RawKernel(core._SPIN, "spin")

    def call():
        time.sleep(HOST_S)
        wait((1,), (1,), (cp.uint64(DEVICE_NS),))

    timed = core.time_gpu(call, repeats=7, warmup=1, detail=True)
    device_ms, host_ms = DEVICE_NS * 1e-6, HOST_S * 1e3
    # the device's time: the 0.3 ms kernel plus a launch, nowhere near the 4 ms the host slept first
    assert device_ms <= timed["ms"] < device_ms + 0.5 * host_ms, timed
    # an idle device waits for the host, so the old figure holds both
    assert timed["latency_ms"] >= host_ms + device_ms, timed
    assert host_ms <= timed["host_ms"] < 10 * host_ms, timed


@pytest.mark.gpu
def test_time_gpu_orders_torch_work_on_the_same_stream():
    """The torch peers run on torch's current stream: the spin must hold them back too."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")

    def call():
        time.sleep(HOST_S)
        torch.cuda._sleep(1_000_000)  # a kernel that spins a million clock cycles: 0.5-1 ms at 1-2 GHz

    timed = core.time_gpu(call, repeats=7, warmup=1, detail=True)
    # held back by the spin, the events bracket torch's kernel (not zero) and not the host's sleep
    assert 0.4 < timed["ms"] < 0.5 * HOST_S * 1e3 < timed["latency_ms"], timed
