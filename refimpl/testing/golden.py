"""Golden vectors: small committed inputs and reference outputs, for checking an implementation without
running refimpl (or for checking that refimpl itself has not drifted).

    from refimpl.testing import golden
    g = golden("ssd", "l7 h4 p8 g1 n16")      # g.args, g.kwargs, g.outputs (NumPy arrays)
    python -m refimpl golden --write          # regenerate the files and the manifest

Each op's vectors are one ``.npz`` file per case under ``refimpl/testing/golden/`` (loaded with
``allow_pickle=False``), listed in ``manifest.json`` with the seed, shapes, dtype, refimpl version and sha256.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import re
from dataclasses import dataclass

import numpy as np

HERE = pathlib.Path(__file__).parent / "golden"
MANIFEST = HERE / "manifest.json"
SEED = 20261122
MAX_ELEMENTS = 6_000  # per case, inputs together; with at most PER_OP cases an op the set stays near 1 MB
PER_OP = 4


@dataclass
class Golden:
    op: str
    name: str
    args: tuple
    kwargs: dict
    outputs: tuple


def _slug(op, name):
    return f"{op}__{re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_')}"


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest():
    """The manifest: {"seed", "refimpl_version", "files": {slug: {op, name, sha256, shapes, dtype, ...}}}."""
    return json.loads(MANIFEST.read_text())


def names(op=None):
    """The (op, name) pairs that have golden vectors."""
    return [(e["op"], e["name"]) for e in manifest()["files"].values() if op is None or e["op"] == op]


def golden(op, name):
    """The golden vectors of one case: inputs as the reference takes them, and its float64 outputs."""
    entry = manifest()["files"].get(_slug(op, name))
    if entry is None:
        raise ValueError(f"no golden vectors for op {op!r}, case {name!r}; available: {names(op)}")
    with np.load(HERE / f"{_slug(op, name)}.npz", allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    scalars = entry.get("scalar_args", {})
    args = tuple(scalars[str(i)] if str(i) in scalars else data[f"arg{i}"] for i in range(entry["n_args"]))
    kwargs = {k[3:]: data[k] for k in data if k.startswith("kw_")}
    kwargs.update(entry.get("scalar_kwargs", {}))
    outputs = tuple(data[f"out{i}"] for i in range(entry["n_outputs"]))
    return Golden(op, name, args, kwargs, outputs)


def write():
    """Regenerate every golden file from the current reference and rewrite the manifest."""
    import refimpl

    from .cases import GENERATORS
    from .check import reference

    HERE.mkdir(exist_ok=True)
    for old in HERE.glob("*.npz"):
        old.unlink()
    files = {}
    for op, gen in GENERATORS.items():
        rng = np.random.default_rng(SEED)
        kept = 0
        for case in gen(rng, True):
            if kept == PER_OP:
                break
            arrays = [a for a in case.args if isinstance(a, np.ndarray)]
            arrays += [v for v in case.kwargs.values() if isinstance(v, np.ndarray)]
            if sum(a.size for a in arrays) > MAX_ELEMENTS:
                continue
            ref_args = tuple(a.copy() if isinstance(a, np.ndarray) else a for a in case.args)
            out = reference(op)(*ref_args, **case.kwargs)
            out = tuple(out) if isinstance(out, tuple) else (out,)
            data = {f"arg{i}": a for i, a in enumerate(case.args) if isinstance(a, np.ndarray)}
            scalar_args = {str(i): a for i, a in enumerate(case.args) if not isinstance(a, np.ndarray)}
            scalar_kwargs = {}
            for k, v in case.kwargs.items():
                if not isinstance(v, np.ndarray):
                    scalar_kwargs[k] = v
                else:
                    data[f"kw_{k}"] = np.asarray(v)
            data.update({f"out{i}": np.asarray(o) for i, o in enumerate(out)})
            slug = _slug(op, case.name)
            path = HERE / f"{slug}.npz"
            np.savez_compressed(path, **data)
            kept += 1
            files[slug] = {"op": op, "name": case.name, "sha256": _sha256(path), "n_args": len(case.args),
                           "n_outputs": len(out), "scalar_args": scalar_args, "scalar_kwargs": scalar_kwargs,
                           "shapes": {k: list(v.shape) for k, v in data.items()},
                           "dtype": {k: v.dtype.name for k, v in data.items()}}
    MANIFEST.write_text(json.dumps({"seed": SEED, "refimpl_version": refimpl.__version__, "files": files},
                                   indent=1, sort_keys=True) + "\n")
    return files
