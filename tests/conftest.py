"""Shared test setup: GPU tests are marked ``gpu`` and skipped, with the reason, where no device is found."""

from __future__ import annotations

import functools

import pytest


@functools.lru_cache(maxsize=None)
def gpu_reason():
    """'' where refimpl's GPU twins can run, else why not (the ImportError refimpl._gpu raises)."""
    try:
        import refimpl._gpu  # noqa: F401
    except ImportError as exc:
        return str(exc)
    return ""


def pytest_collection_modifyitems(config, items):
    why = gpu_reason()
    if not why:
        return
    skip = pytest.mark.skip(reason=f"GPU test: {why}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng(request):
    """A fresh generator per test, seeded from the test's name so a failure reproduces."""
    import zlib

    import numpy as np

    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
