"""The book builds with Sphinx warnings as errors, serves MathJax itself, and links chapters to Colab."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _jupyter_book():
    exe = pathlib.Path(sys.executable).parent / "jupyter-book"
    return str(exe) if exe.exists() else shutil.which("jupyter-book")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
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


def test_book_builds_without_warnings(built):
    html, log = built
    assert (html / "index.html").exists()
    warnings = [line for line in log.splitlines() if "WARNING:" in line]
    assert not warnings, "\n".join(warnings)


def test_mathjax_is_local(built):
    html, _ = built
    page = (html / "notebooks" / "01_discretization.html").read_text()
    srcs = re.findall(r'<script[^>]+src="([^"]*mathjax[^"]*)"', page, flags=re.I)
    assert srcs and all(s.startswith("../_static/mathjax/") for s in srcs), srcs
    assert (html / "_static" / "mathjax" / "tex-chtml-full.js").exists()
    assert (html / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").is_dir()
    assert "cdn.jsdelivr" not in page and "cdnjs" not in page


def test_chapters_have_colab_buttons(built):
    html, _ = built
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        page = (html / "notebooks" / f"{path.stem}.html").read_text()
        assert re.search(rf'colab\.research\.google\.com/github/[^"]+/notebooks/{path.stem}\.ipynb', page), path.stem
