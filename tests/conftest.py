"""Shared test setup: GPU tests are marked ``gpu`` and skipped, with the reason, where no device is found."""

from __future__ import annotations

import functools
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


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
    skip = pytest.mark.skip(reason=f"GPU test, no GPU here: {why.split(';')[0]}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng(request):
    """A fresh generator per test, seeded from the test's name so a failure reproduces."""
    import zlib

    import numpy as np

    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def _jupyter_book():
    exe = pathlib.Path(sys.executable).parent / "jupyter-book"
    return str(exe) if exe.exists() else shutil.which("jupyter-book")


@pytest.fixture(scope="session")
def built_book(tmp_path_factory):
    """The book built once per session into a temporary folder: (html folder, build log)."""
    exe = _jupyter_book()
    if exe is None:
        pytest.skip("jupyter-book is not installed (pip install 'refimpl[book]')")
    out = tmp_path_factory.mktemp("book")
    proc = subprocess.run([exe, "build", str(ROOT), "-W", "-n", "--keep-going", "--path-output", str(out)],
                          capture_output=True, text=True, timeout=3600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, "book build failed:\n" + "\n".join(
        line for line in log.splitlines() if "WARNING" in line or "ERROR" in line or "Error" in line)[-6000:]
    return out / "_build" / "html", log
