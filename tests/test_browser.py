"""The built book, opened page by page in headless Chromium as a reader would see it.

For every page: MathJax has typeset the math (its output elements are in the DOM and no raw TeX delimiters
are left in the text), every image loads (the file exists and is a PNG/SVG with content), every internal link
resolves to a file and, where it names an anchor, to an element with that id, and chapter pages carry a
Colab button pointing at their .ipynb. A screenshot of each page is saved under ``_build/screenshots/``.
Runs where Chromium is installed (Debian's ``chromium``; ``.ci/run`` installs it) and is skipped elsewhere.
"""

from __future__ import annotations

import functools
import html as htmllib
import http.server
import pathlib
import re
import shutil
import socketserver
import subprocess
import threading
import urllib.parse

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHOTS = ROOT / "_build" / "screenshots"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def site(built_book, tmp_path_factory):
    """(base URL, html folder, chromium path) with the book served on localhost."""
    exe = _chromium()
    if exe is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    html, _ = built_book
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(html))
    server = socketserver.TCPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    profile = tmp_path_factory.mktemp("chromium-profile")
    yield f"http://127.0.0.1:{server.server_address[1]}", html, exe, profile
    server.shutdown()


def _pages(html):
    return sorted(p for p in html.rglob("*.html")
                  if not {"_static", "_sources", "_images", "reports"} & set(p.relative_to(html).parts)
                  and p.name not in ("genindex.html", "search.html"))


def _render(exe, profile, url, *extra):
    proc = subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=15000",
                           "--window-size=1280,2400", *extra, url], capture_output=True, text=True, timeout=120)
    return proc


def _visible_text(dom):
    """The DOM with code, scripts, styles and MathJax's own output removed (where TeX may legitimately stay)."""
    for tag in ("script", "style", "pre", "code", "mjx-container", "mjx-assistive-mml", "textarea"):
        dom = re.sub(rf"<{tag}\b.*?</{tag}>", " ", dom, flags=re.S | re.I)
    return htmllib.unescape(re.sub(r"<[^>]+>", " ", dom))


def test_every_page_in_chromium(site):
    base, html, exe, profile = site
    SHOTS.mkdir(parents=True, exist_ok=True)
    problems = []
    pages = _pages(html)
    assert pages, "no pages built"
    for page in pages:
        rel = page.relative_to(html).as_posix()
        url = f"{base}/{rel}"
        dom = _render(exe, profile, url, "--dump-dom").stdout
        if not dom.strip():
            problems.append(f"{rel}: Chromium returned no DOM")
            continue
        source = page.read_text()
        has_math = "math notranslate" in source or 'class="math' in source
        if has_math:
            if "<mjx-container" not in dom:
                problems.append(f"{rel}: math on the page but no MathJax output (mjx-container) after load")
            text = _visible_text(dom)
            for delim in ("$$", "\\[", "\\(", "\\begin{"):
                if delim in text:
                    i = text.index(delim)
                    problems.append(f"{rel}: raw TeX left in the text: ...{text[max(0, i - 40):i + 40]!r}")
                    break
        for src in re.findall(r'<img[^>]+src="([^"]+)"', source):
            if src.startswith(("http:", "https:", "data:")):
                continue
            target = (page.parent / urllib.parse.unquote(src.split("?")[0])).resolve()
            if not target.exists() or target.stat().st_size < 100:
                problems.append(f"{rel}: image {src} does not load")
            elif target.suffix == ".png" and target.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
                problems.append(f"{rel}: image {src} is not a PNG")
        for href in re.findall(r'<a[^>]+href="([^"]+)"', source):
            if href.startswith(("http:", "https:", "mailto:", "javascript:")) or href == "#":
                continue
            path, _, anchor = urllib.parse.unquote(href).partition("#")
            target = (page.parent / path).resolve() if path else page
            if not target.exists():
                problems.append(f"{rel}: internal link {href} points at a missing file")
            elif anchor and target.suffix == ".html" and f'id="{anchor}"' not in target.read_text():
                problems.append(f"{rel}: internal link {href} names a missing anchor")
        if rel.startswith("notebooks/"):
            stem = pathlib.Path(rel).stem
            if not re.search(rf'colab\.research\.google\.com/github/[^"]+/{stem}\.ipynb', source):
                problems.append(f"{rel}: no Colab button pointing at {stem}.ipynb")
        shot = SHOTS / (rel.replace("/", "__").replace(".html", ".png"))
        _render(exe, profile, url, f"--screenshot={shot}")
        if not shot.exists() or shot.stat().st_size < 10_000:
            problems.append(f"{rel}: no screenshot")
    assert not problems, "\n".join(problems)
