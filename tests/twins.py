"""Parametrize a test over the three implementations of an idea: reference, ``cpu`` and ``gpu``.

    @pytest.mark.parametrize("impl", twins("discretize"))
    def test_x(impl): impl.zoh_diag(...)

``impl`` is the module; the ``gpu`` param carries the ``gpu`` mark (skipped where no device is found) and is
imported only when the test runs. ``impl.name`` is one of "reference", "cpu", "gpu".
"""

from __future__ import annotations

import importlib

import pytest


class Impl:
    def __init__(self, idea, name):
        self.idea, self.name = idea, name

    @property
    def module(self):
        path = f"refimpl.{self.idea}" + ("" if self.name == "reference" else f".{self.name}")
        return importlib.import_module(path)

    def __getattr__(self, attr):
        return getattr(self.module, attr)

    def __repr__(self):
        return self.name

    def to_host(self, x):
        """A NumPy array of a result (CuPy arrays are copied back)."""
        return x.get() if hasattr(x, "get") and type(x).__module__.startswith("cupy") else x


def twins(idea, names=("reference", "cpu", "gpu")):
    return [pytest.param(Impl(idea, n), id=n, marks=[pytest.mark.gpu] if n == "gpu" else [])
            for n in names]
