"""Run the benchmark cases, print a table, write JSON under benchmarks/results/.

    python -m benchmarks.run [--ops a,b] [--impls numpy,cpu,gpu] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import sys
import traceback

from . import core

HERE = pathlib.Path(__file__).parent


def _gpu_ok():
    try:
        import refimpl._gpu  # noqa: F401  (raises ImportError with the reason)

        return True, ""
    except ImportError as exc:
        return False, str(exc)


def load_cases(quick):
    cases = []
    for path in sorted((HERE / "cases").glob("*.py")):
        if path.name.startswith("_"):
            continue
        mod = importlib.import_module(f"benchmarks.cases.{path.stem}")
        cases.extend(mod.cases(quick))
    return cases


def shape_key(case):
    """Cases compared with each other: same op and shape (the dtype may differ: numpy runs in float64)."""
    return (case.op, json.dumps(case.shape, sort_keys=True))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", default="", help="comma-separated ops to run (default: all)")
    p.add_argument("--impls", default="", help="comma-separated implementations, e.g. numpy,cpu,gpu")
    p.add_argument("--quick", action="store_true", help="smaller shapes, for a smoke test")
    p.add_argument("--out", default=str(HERE / "results"), help="folder for the JSON results")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    ops = set(filter(None, args.ops.split(",")))
    impls = set(filter(None, args.impls.split(",")))

    cases = [c for c in load_cases(args.quick) if (not ops or c.op in ops)
             and (not impls or c.impl in impls or c.impl.split(":")[0] in impls or c.device in impls)]
    gpu_ok, gpu_why = _gpu_ok()
    kinds = {c.device for c in cases if c.device == "cpu" or gpu_ok}
    ceilings = {}
    for kind in sorted(kinds):
        ceilings[kind] = core.gpu_ceiling() if kind == "gpu" else core.cpu_ceiling()
    records = []
    for case in cases:
        kind = case.device
        rec = {"op": case.op, "impl": case.impl, "dtype": case.dtype, "shape": case.shape,
               "bound": case.bound, "bytes": case.bytes, "flops": case.flops, "goal": case.goal,
               "note": case.note, "peer": case.peer, "kind": case.device, "device": None, "ms": None}
        if kind == "gpu" and not gpu_ok:
            rec["skipped"] = f"no GPU: {gpu_why.split(';')[0]}"
            records.append(rec)
            continue
        try:
            fn = case.setup()
            if kind == "gpu":
                timed = core.time_gpu(fn, repeats=case.repeats, detail=True)
                ms = timed.pop("ms")
                rec.update(timed)
            else:
                ms = core.time_cpu(fn, repeats=case.repeats)
        except Exception as exc:  # a peer that is not installed, an impl that cannot run here
            rec["skipped"] = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, ImportError):
                traceback.print_exc(file=sys.stderr)
            records.append(rec)
            continue
        ceil = ceilings[kind]
        if case.bound == "memory":
            rec["ceiling"] = f"copy {ceil['copy_bytes_per_s'] / 1e9:.0f} GB/s"
            rec["ceiling_ms"] = case.bytes / ceil["copy_bytes_per_s"] * 1e3 if case.bytes else None
        else:
            rate = ceil.get("matmul_flops_per_s")
            rec["ceiling"] = f"matmul {rate / 1e12:.0f} TFLOP/s" if rate else None
            rec["ceiling_ms"] = case.flops / rate * 1e3 if rate and case.flops else None
        rec.update(ms=ms, device=core.device_name(kind), versions=core.versions(kind), date=core.today())
        records.append(rec)
    by_key = {(shape_key(r_case), r["impl"]): r for r_case, r in zip(cases, records)}
    for case, rec in zip(cases, records):
        peer = by_key.get((shape_key(case), case.peer)) if case.peer else None
        rec["peer_ms"] = peer["ms"] if peer else None

    print_table(records)
    if not args.no_write and any(r["ms"] is not None for r in records):
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        kinds_run = sorted({c.device for c, r in zip(cases, records) if r["ms"] is not None})
        dev = "-".join(k if k == "cpu" else core.device_name(k).replace(" ", "_") for k in kinds_run)
        tag = "-".join(sorted(ops)) if ops else "all"
        path = out / f"{core.today()}_{dev}_{tag}{'_quick' if args.quick else ''}.json"
        path.write_text(json.dumps({"ceilings": ceilings, "results": records}, indent=1, default=str))
        print(f"\nwrote {path}")
    return 0


def print_table(records):
    head = f"{'op':<22}{'impl':<18}{'dtype':<10}{'shape':<34}{'ms':>10}{'ceil ms':>10}{'% ceil':>8}{'peer':>16}{'x peer':>8}{'idle ms':>10}{'host us':>8}"
    print(head)
    print("-" * len(head))
    for r in records:
        shape = ",".join(f"{k}{v}" for k, v in r["shape"].items())[:33]
        if r["ms"] is None:
            print(f"{r['op']:<22}{r['impl']:<18}{r['dtype']:<10}{shape:<34}  skipped: {r.get('skipped', '')[:60]}")
            continue
        cm = r.get("ceiling_ms")
        pct = f"{100 * cm / r['ms']:.0f}%" if cm else ""
        xp = f"{r['peer_ms'] / r['ms']:.2f}" if r.get("peer_ms") else ""
        print(f"{r['op']:<22}{r['impl']:<18}{r['dtype']:<10}{shape:<34}{r['ms']:>10.3f}"
              f"{(f'{cm:.3f}' if cm else ''):>10}{pct:>8}{(r['peer'] or ''):>16}{xp:>8}"
              + (f"{r['latency_ms']:>10.3f}{1e3 * r['host_ms']:>8.0f}" if "latency_ms" in r else ""))


if __name__ == "__main__":
    sys.exit(main())
