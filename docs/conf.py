"""Sphinx configuration for secureml's API reference (``make docs``; warnings are errors)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

project = "secureml"
author = "the secureml developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
exclude_patterns = ["_build", "*.md"]  # the Markdown pages are read on GitHub, as written
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
html_theme = "alabaster"



def _fit_adornments(text: str) -> str:
    """Every title's over- and underline as long as the title: the spec page
    (docs/key_management.rst) is kept byte for byte as the spec has it, short lines too,
    so they are fitted as Sphinx reads it instead of in the file."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        after = lines[i + 2] if i + 2 < len(lines) else ""
        mark = re.fullmatch(r"([=\-~^\"'`#*+])\1{2,}", line)
        if mark and nxt.strip() and re.fullmatch(re.escape(line[0]) + "{3,}", after):
            out += [line[0] * len(nxt), nxt, after[0] * len(nxt)]
            i += 3
            continue
        under = re.fullmatch(r"([=\-~^\"'`#*+])\1{2,}", nxt)
        if line.strip() and under and not re.fullmatch(r"([=\-~^\"'`#*+])\1{2,}", line):
            out += [line, nxt[0] * len(line)]
            i += 2
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _markdown_literals(text: str) -> str:
    """The spec writes code Markdown's way, in single backticks (and a bare
    ``SECUREML_`` that reST takes for a link): read as the literals it means."""
    text = re.sub(r"(?<![`\w])`([^`\n]+)`(?![`_])", r"``\1``", text)
    return text.replace('"SECUREML_"', '``SECUREML_``')


def _on_source_read(app: Any, docname: str, source: list[str]) -> None:
    if docname == "key_management":
        source[0] = _markdown_literals(_fit_adornments(source[0]))


def setup(app: Any) -> None:
    app.connect("source-read", _on_source_read)
