"""Command line: ``python -m refimpl check module:function --op OP [--dtype D] [--seed S] [--quick]``,
and ``python -m refimpl golden --write`` to regenerate the golden vectors.

Exit status 0 when the implementation passes, 1 when it does not, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import importlib
import sys


def main(argv=None):
    from .testing.cases import GENERATORS

    p = argparse.ArgumentParser(prog="python -m refimpl", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="check an implementation against the float64 reference")
    c.add_argument("target", help="module:function, importable from the current directory")
    c.add_argument("--op", required=True, choices=sorted(GENERATORS), help="the reference op it implements")
    c.add_argument("--dtype", default="float32", help="float64, float32, float16 or bfloat16 (default float32)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--quick", action="store_true", help="fewer and smaller cases")
    g = sub.add_parser("golden", help="regenerate the golden vectors (refimpl/testing/golden/)")
    g.add_argument("--write", action="store_true", required=True)
    args = p.parse_args(argv)
    if args.command == "golden":
        from .testing.golden import HERE, MANIFEST, write

        files = write()
        total = sum((HERE / f"{s}.npz").stat().st_size for s in files)
        print(f"wrote {len(files)} golden files ({total / 1e6:.2f} MB) and {MANIFEST}")
        return 0

    mod_name, _, fn_name = args.target.partition(":")
    if not mod_name or not fn_name:
        p.error(f"target: expected module:function, got {args.target!r}")
    sys.path.insert(0, "")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as exc:
        p.error(f"cannot load {args.target}: {exc}")
    from .testing import check

    try:
        report = check(fn, args.op, dtype=args.dtype, seed=args.seed, quick=args.quick)
    except ValueError as exc:  # an unknown dtype
        p.error(str(exc))
    print(report)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
