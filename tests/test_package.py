"""The package's shape: one subpackage per idea, reference at the root, cpu and gpu twins with the same
names and signatures, and a gpu import that explains itself where there is no GPU."""

from __future__ import annotations

import importlib
import inspect

import pytest

import refimpl

#: the contract's table: idea -> (reference functions, twin functions)
CONTRACT = {
    "discretize": (["zoh", "zoh_diag", "bilinear", "bilinear_diag"], ["zoh_diag", "zoh"]),
    "hippo": (["legs", "legs_nplr", "legs_s4d", "legs_online", "legs_reconstruct"], ["legs_online"]),
    "kernel": (["vandermonde_kernel", "power_kernel", "causal_conv"], ["vandermonde_kernel", "causal_conv"]),
    "scan": (["linear_scan", "blelloch_scan", "selective_scan"], ["linear_scan", "selective_scan"]),
    "ssd": (["ssd_recurrent", "ssd_quadratic", "ssd_chunked", "ssd"], ["ssd"]),
    "attention": (["attention", "attention_with_kvcache"], ["attention", "attention_with_kvcache"]),
}


@pytest.mark.parametrize("idea", CONTRACT)
def test_reference_exports_the_contract(idea):
    mod = importlib.import_module(f"refimpl.{idea}")
    refs, _ = CONTRACT[idea]
    for name in refs:
        assert callable(getattr(mod, name, None)), f"refimpl.{idea}.{name} is missing"
        assert getattr(mod, name).__doc__, f"refimpl.{idea}.{name} has no docstring"


def _params(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def _same_signature(twin, ref):
    """The twin takes the reference's parameters, in order, with the same kinds and defaults; it may add
    keyword-only options after them (the contract: extend freely, never rename or reorder)."""
    t, r = _params(twin), _params(ref)
    extra = t[len(r):]
    return t[:len(r)] == r and all(kind == inspect.Parameter.KEYWORD_ONLY for _, kind, _ in extra)


@pytest.mark.parametrize("twin", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("idea", CONTRACT)
def test_twins_share_the_reference_signature(idea, twin):
    ref = importlib.import_module(f"refimpl.{idea}")
    mod = importlib.import_module(f"refimpl.{idea}.{twin}")
    for name in CONTRACT[idea][1]:
        assert _same_signature(getattr(mod, name), getattr(ref, name)), f"refimpl.{idea}.{twin}.{name}"


@pytest.mark.parametrize("idea", CONTRACT)
def test_gpu_import_without_a_gpu_says_what_to_do(idea):
    if refimpl.has_gpu():
        pytest.skip("a GPU is present here: the import succeeds")
    with pytest.raises(ImportError) as info:
        importlib.import_module(f"refimpl.{idea}.gpu")
    msg = str(info.value)
    assert 'pip install "refimpl[gpu]"' in msg and f"refimpl.<idea>.cpu" in msg
    assert refimpl.why_no_gpu() and not refimpl.has_gpu()


def test_module_docstrings_open_with_a_glossary():
    for idea in CONTRACT:
        doc = importlib.import_module(f"refimpl.{idea}").__doc__ or ""
        assert "Glossary" in doc, f"refimpl.{idea} has no glossary"
