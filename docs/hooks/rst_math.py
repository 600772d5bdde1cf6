"""Griffe extension for the docs: the docstrings' reST maths and literals as MkDocs shows them.

The docstrings are written for ``help()`` and Sphinx: ``:math:`x``` inline, ``.. math:: ...``
blocks (continued on more-indented lines). Here they become ``\\(x\\)`` and ``\\[...\\]``
(rendered by MathJax through ``pymdownx.arithmatex``). Nothing else of the text changes.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

INLINE = re.compile(r":math:`([^`]+)`")


def rst_to_markdown(text: str) -> str:
    """``:math:`x``` -> ``\\(x\\)``; a ``.. math::`` block -> a ``\\[ ... \\]`` paragraph."""
    out: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if stripped.startswith(".. math::"):
            indent = len(line) - len(stripped)
            body = [stripped[len(".. math::") :].strip()]
            i += 1
            while i < len(lines) and len(lines[i]) - len(lines[i].lstrip()) > indent:
                body.append(lines[i].strip())
                i += 1
            pad = " " * indent
            out += ["", pad + "\\[", *(pad + b for b in body if b), pad + "\\]", ""]
            continue
        out.append(INLINE.sub(lambda m: f"\\({m.group(1)}\\)", line))
        i += 1
    return "\n".join(out)


class RstMath(griffe.Extension):
    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
