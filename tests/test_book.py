"""The book builds with Sphinx warnings as errors, serves MathJax itself, and links chapters to Colab."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_book_builds_without_warnings(built_book):
    html, log = built_book
    assert (html / "index.html").exists()
    warnings = [line for line in log.splitlines() if "WARNING:" in line]
    assert not warnings, "\n".join(warnings)


def test_mathjax_is_local(built_book):
    html, _ = built_book
    page = (html / "notebooks" / "01_discretization.html").read_text()
    srcs = re.findall(r'<script[^>]+src="([^"]*mathjax[^"]*)"', page, flags=re.I)
    assert srcs and all(s.startswith("../_static/mathjax/") for s in srcs), srcs
    assert (html / "_static" / "mathjax" / "tex-chtml-full.js").exists()
    assert (html / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").is_dir()
    assert "cdn.jsdelivr" not in page and "cdnjs" not in page


def test_chapters_have_colab_buttons(built_book):
    html, _ = built_book
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        page = (html / "notebooks" / f"{path.stem}.html").read_text()
        assert re.search(rf'colab\.research\.google\.com/github/[^"]+/notebooks/{path.stem}\.ipynb', page), path.stem
