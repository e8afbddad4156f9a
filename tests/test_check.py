"""refimpl.testing.check: passes correct implementations, fails each planted bug (mutation tests), and the
``python -m refimpl check`` command line reports it through its exit status."""

from __future__ import annotations

import subprocess
import sys

import pytest

from refimpl.testing import check
from refimpl.testing.mutants import MUTANTS


# ------------------------------------------------------------------------------------- correct implementations

@pytest.mark.parametrize("idea, op", [
    ("discretize", "zoh_diag"), ("discretize", "zoh"), ("hippo", "legs_online"),
    ("kernel", "vandermonde_kernel"), ("kernel", "causal_conv"), ("scan", "linear_scan"),
    ("scan", "selective_scan"), ("ssd", "ssd"), ("attention", "attention"),
    ("attention", "attention_with_kvcache"),
])
def test_check_passes_refimpl_cpu_twins(idea, op):
    import importlib

    twin = getattr(importlib.import_module(f"refimpl.{idea}.cpu"), op)
    report = check(twin, op, dtype="float32", quick=True)
    assert report.passed, str(report)


def test_report_is_a_table():
    import refimpl.discretize.cpu as cpu

    report = check(cpu.zoh_diag, "zoh_diag", dtype="float32", quick=True)
    text = str(report)
    assert "max abs err" in text and "rel L2 err" in text and "PASSED" in text
    assert len(report.rows) >= 10


# ------------------------------------------------------------------------------------------ planted bugs

@pytest.mark.parametrize("bug, op", MUTANTS, ids=[m.__name__ for m, _ in MUTANTS])
def test_check_catches_planted_bug(bug, op):
    report = check(bug, op, dtype="float32", quick=True)
    assert not report.passed, f"{bug.__name__} slipped through:\n{report}"


# ------------------------------------------------------------------------------------------------- the CLI

def _cli(*args):
    import os
    import pathlib

    here = pathlib.Path(__file__).resolve().parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(here.parent), str(here)]))
    return subprocess.run([sys.executable, "-m", "refimpl", "check", *args], capture_output=True, text=True,
                          cwd=str(here), env=env, timeout=600)


def test_cli_exit_codes():
    ok = _cli("refimpl.discretize.cpu:zoh_diag", "--op", "zoh_diag", "--quick")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "PASSED" in ok.stdout
    bad = _cli("refimpl.testing.mutants:naive_zoh_diag", "--op", "zoh_diag", "--quick")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAILED" in bad.stdout
    assert _cli("refimpl.discretize.cpu:zoh_diag", "--op", "no_such_op").returncode == 2
    assert _cli("no_such_module:f", "--op", "zoh").returncode == 2
    assert _cli("refimpl.discretize.cpu", "--op", "zoh").returncode == 2
    assert _cli("refimpl.discretize.cpu:zoh_diag", "--op", "zoh_diag", "--dtype", "int8").returncode == 2


# ------------------------------------------------------------------------------- a live third-party check

def test_torch_sdpa_passes_with_bottom_right_mask_and_fails_with_is_causal():
    """PyTorch's SDPA is right under refimpl's (flash-attn's) convention only with a bottom-right mask:
    its own ``is_causal`` aligns the mask top-left, which ``check`` catches on the s_q != s_k cases."""
    pytest.importorskip("torch")
    from refimpl.testing.adapters import torch_sdpa

    good = check(torch_sdpa, "attention", dtype="float32", quick=True)
    assert good.passed, str(good)
    top_left = check(lambda *a, **k: torch_sdpa(*a, bottom_right=False, **k), "attention", quick=True)
    failed = {r.case for r in top_left.rows if not r.passed}
    assert failed == {"s_q < s_k causal (bottom-right)", "s_q > s_k causal (empty rows -> 0)"}, str(top_left)
