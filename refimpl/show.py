"""Show refimpl's own source in the book, so that a chapter never holds a copy that can drift."""

from __future__ import annotations

import inspect
import textwrap


def source_text(obj) -> str:
    """The source of a function, class or module, as refimpl has it now."""
    return textwrap.dedent(inspect.getsource(obj))


def source(*objs, language="python"):
    """Display the source of each object as a highlighted code block (Markdown output in notebooks)."""
    from IPython.display import Markdown, display

    for obj in objs:
        where = f"{inspect.getmodule(obj).__name__}" if inspect.getmodule(obj) else ""
        display(Markdown(f"*`{where}`*\n\n```{language}\n{source_text(obj)}```"))


def cuda_source(path, start=None, end=None):
    """Display a ``.cu`` file that ships with refimpl (optionally the lines between two markers)."""
    import pathlib

    from IPython.display import Markdown, display

    p = pathlib.Path(path)
    text = p.read_text()
    if start is not None:
        text = text[text.index(start):]
    if end is not None:
        text = text[: text.index(end) + len(end)]
    display(Markdown(f"*`{p.name}`*\n\n```cuda\n{text}\n```"))
