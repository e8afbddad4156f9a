"""``check(fn, op)``: run an implementation over refimpl's case sweep and compare it with the reference."""

from __future__ import annotations

import importlib
import inspect
import traceback
from dataclasses import dataclass, field

import numpy as np

from .cases import CANONICAL, GENERATORS, MODULES
from .compare import compare, to_numpy
from .tolerance import _dtype_name, tolerance


def reference(op):
    """The float64 reference function of ``op``."""
    if op not in MODULES:
        raise ValueError(f"op: expected one of {sorted(MODULES)}, got {op!r}")
    return getattr(importlib.import_module(f"refimpl.{MODULES[op]}"), op)


def round_to(a, dtype):
    """``a`` rounded to ``dtype`` (complex inputs to the complex dtype of that precision). bfloat16 values are
    returned as float32 arrays holding bfloat16-representable numbers (NumPy has no bfloat16)."""
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "fc":
        return a
    if dtype == "bfloat16":
        def bf16(x):
            bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000  # round to nearest even
            return bits.view(np.float32)
        return bf16(a.real) + 1j * bf16(a.imag) if a.dtype.kind == "c" else bf16(a)
    if a.dtype.kind == "c":
        return a.astype(np.complex128 if dtype == "float64" else np.complex64)
    return a.astype(dtype)


@dataclass
class Row:
    case: str
    output: str
    max_abs: float
    rel_l2: float
    rtol: float
    atol: float
    passed: bool
    error: str = ""


@dataclass
class Report:
    """What ``check`` found: one row per case and output; ``passed`` when every row passed."""

    op: str
    dtype: str
    fn_name: str
    rows: list = field(default_factory=list)

    @property
    def passed(self):
        return bool(self.rows) and all(r.passed for r in self.rows)

    def __bool__(self):
        return self.passed

    def __str__(self):
        head = f"{'case':<46} {'output':<12} {'max abs err':>12} {'rel L2 err':>11} {'rtol':>8} {'pass':>5}"
        lines = [f"check {self.fn_name} as {self.op} in {self.dtype} against the float64 reference", head,
                 "-" * len(head)]
        for r in self.rows:
            if r.error:
                lines.append(f"{r.case[:46]:<46} {r.output:<12} {'ERROR: ' + r.error[:60]}")
            else:
                lines.append(f"{r.case[:46]:<46} {r.output:<12} {r.max_abs:>12.3e} {r.rel_l2:>11.3e} "
                             f"{r.rtol:>8.1e} {'yes' if r.passed else 'NO':>5}")
        n_fail = sum(not r.passed for r in self.rows)
        lines.append(f"{'PASSED' if self.passed else 'FAILED'}: {len(self.rows) - n_fail} of {len(self.rows)} rows")
        return "\n".join(lines)


def _tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def check(fn, op, *, dtype="float32", seed=0, quick=False, convert=None, rtol=None, atol=None):
    """Run ``fn`` (the reference's signature) over the case sweep of ``op`` and compare with the reference.

    Floating inputs are rounded to ``dtype`` first and both the reference (in float64) and ``fn`` get the
    rounded values, so the error measured is ``fn``'s own. ``convert`` maps each NumPy input to what ``fn``
    takes (e.g. ``lambda a: torch.as_tensor(a, device="cuda")``); results may be NumPy, CuPy, PyTorch or
    JAX arrays. In-place arguments (the KV caches) are compared after the call too. Returns a ``Report``
    whose ``str()`` is a table and whose ``.passed`` says whether every row is within ``tolerance(op, dtype)``.
    """
    dtype = _dtype_name(dtype)
    ref = reference(op)
    t_rtol, t_atol = tolerance(op, dtype)
    rtol = t_rtol if rtol is None else rtol
    atol = t_atol if atol is None else atol
    params = list(inspect.signature(ref).parameters)
    convert = convert or (lambda a: a)
    report = Report(op, dtype, getattr(fn, "__qualname__", repr(fn)))
    rng = np.random.default_rng(seed)
    for case in GENERATORS[op](rng, quick):
        args = tuple(round_to(a, dtype) for a in case.args)
        kwargs = {k: round_to(v, dtype) for k, v in case.kwargs.items()}
        # the reference computes in float64; in-place buffers are float64 copies it may write into
        r_args = tuple(a.astype(np.complex128 if a.dtype.kind == "c" else np.float64)
                       if isinstance(a, np.ndarray) and a.dtype.kind == "f" and a.dtype != np.float64 else
                       (a.copy() if isinstance(a, np.ndarray) else a) for a in args)
        expected = _tuple(ref(*r_args, **{k: (v.copy() if isinstance(v, np.ndarray) else v)
                                          for k, v in kwargs.items()}))
        f_args = tuple(convert(a) if isinstance(a, np.ndarray) else a for a in args)
        f_kwargs = {k: (convert(v) if isinstance(v, np.ndarray) and v.dtype.kind in "fc" else v)
                    for k, v in kwargs.items()}
        try:
            actual = _tuple(fn(*f_args, **f_kwargs))
        except Exception as exc:  # an implementation that raises on a valid case fails that case
            report.rows.append(Row(case.name, "-", np.inf, np.inf, rtol, atol, False,
                                   f"{type(exc).__name__}: {exc}".replace("\n", " ")))
            if len(report.rows) == 1:
                traceback.print_exc()
            continue
        if len(actual) != len(expected):
            report.rows.append(Row(case.name, "-", np.inf, np.inf, rtol, atol, False,
                                   f"returned {len(actual)} outputs, expected {len(expected)}"))
            continue
        if op in CANONICAL:
            actual = CANONICAL[op](tuple(to_numpy(a) for a in actual))
            expected = CANONICAL[op](expected)
        pairs = [(f"out[{i}]" if len(expected) > 1 else "out", a, e) for i, (a, e) in enumerate(zip(actual, expected))]
        for name in case.inplace:
            i = params.index(name)
            pairs.append((name, f_args[i], r_args[i]))
        for name, a, e in pairs:
            c = compare(to_numpy(a), e, rtol=rtol, atol=atol)
            report.rows.append(Row(case.name, name, c.max_abs, c.rel_l2, rtol, atol, c.passed, c.reason))
    return report
