#!/usr/bin/env python3
"""The project's commands, for a fresh machine with nothing but Python >= 3.10.

    python3 dev.py book    build the book into _build/html, every notebook executed
    python3 dev.py test    run the test suite (pytest; extra arguments go to pytest)
    python3 dev.py strip   remove outputs from the notebooks before committing them

``book`` and ``test`` create a virtual environment in .venv when it is absent and install refimpl into it
(editable, with the ``book`` and ``test`` extras); they reinstall only when pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess
import sys
import venv

ROOT = pathlib.Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")


def run(*cmd, **kw):
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, **kw).returncode


def ensure_env():
    """Create .venv and install refimpl[book,test] unless pyproject.toml is unchanged since the last install."""
    if sys.version_info < (3, 10):
        sys.exit(f"refimpl needs Python >= 3.10; this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = VENV / ".refimpl-installed"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == want:
        return
    if run(PY, "-m", "pip", "install", "--quiet", "--upgrade", "pip") != 0:
        sys.exit("could not upgrade pip in .venv")
    if run(PY, "-m", "pip", "install", "--quiet", "-e", ".[book,test]") != 0:
        sys.exit("could not install refimpl[book,test] into .venv")
    stamp.write_text(want)


def book(args):
    ensure_env()
    code = run(BIN / "jupyter-book", "build", ".", "-W", "-n", "--keep-going", *args)
    index = ROOT / "_build" / "html" / "index.html"
    if code == 0:
        print(f"\nThe book is built: open {index}")
    else:
        reports = ROOT / "_build" / "html" / "reports"
        print(f"\nThe book build failed (warnings count as errors); execution reports, if any: {reports}")
    return code


def test(args):
    ensure_env()
    return run(PY, "-m", "pytest", *args)


def strip(args):
    """Clear outputs, execution counts and execution metadata of notebooks/*.ipynb (or the files given)."""
    paths = [pathlib.Path(a) for a in args] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    for path in paths:
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                cell["outputs"] = []
                cell["execution_count"] = None
            cell.get("metadata", {}).pop("execution", None)
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        print(f"stripped {path}")
    return 0


def main():
    commands = {"book": book, "test": test, "strip": strip}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__)
        return 2
    return commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
