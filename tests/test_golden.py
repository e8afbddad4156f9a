"""Golden vectors match their manifest (sha256) and the current reference reproduces them."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import refimpl
from refimpl.testing import golden
from refimpl.testing.check import reference
from refimpl.testing.golden import HERE, manifest, names

ENTRIES = names()


def test_manifest_lists_every_file_with_its_hash():
    m = manifest()
    on_disk = {p.stem for p in HERE.glob("*.npz")}
    assert on_disk == set(m["files"]), "golden files and manifest disagree"
    for slug, entry in m["files"].items():
        assert hashlib.sha256((HERE / f"{slug}.npz").read_bytes()).hexdigest() == entry["sha256"], slug
    assert m["refimpl_version"] == refimpl.__version__
    total = sum(p.stat().st_size for p in HERE.glob("*.npz"))
    assert total < 2_000_000, f"golden vectors grew to {total / 1e6:.1f} MB"


def test_every_op_has_golden_vectors():
    from refimpl.testing.cases import GENERATORS

    assert {op for op, _ in ENTRIES} == set(GENERATORS)


@pytest.mark.parametrize("op, name", ENTRIES, ids=[f"{o}:{n}" for o, n in ENTRIES])
def test_reference_reproduces_golden(op, name):
    g = golden(op, name)
    copy = lambda v: v.copy() if isinstance(v, np.ndarray) else v  # noqa: E731
    out = reference(op)(*(copy(a) for a in g.args), **{k: copy(v)
                                                          for k, v in g.kwargs.items()})
    out = out if isinstance(out, tuple) else (out,)
    assert len(out) == len(g.outputs)
    for o, e in zip(out, g.outputs):
        np.testing.assert_allclose(o, e, rtol=1e-12, atol=1e-14)


def test_unknown_golden_raises():
    with pytest.raises(ValueError, match="no golden vectors"):
        golden("zoh_diag", "no such case")
