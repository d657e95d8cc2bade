"""The parameters every chapter takes, read from the notebooks' ``parameters`` cells.

:func:`chapter_parameters` parses one notebook's ``parameters`` cell (the cell papermill
overrides with ``-p name value``) into name, default and the comment that explains it;
:func:`parameters_markdown` renders every chapter as the table of the book's "Run it on your
model" page (``book/chapter_parameters.md``, written by ``python -m narrowgate_utils.parameters``
and kept in sync by a test), so the page lists exactly what the notebooks accept.
"""
from __future__ import annotations

import ast
import io
import json
import tokenize
from dataclasses import dataclass
from pathlib import Path

from .runner import NOTEBOOK_DIR

#: characters that Markdown or MyST would read as markup inside a table cell
_MARKUP = str.maketrans({c: "\\" + c for c in "|<>*`$"})


@dataclass(frozen=True)
class Parameter:
    """One assignment of a ``parameters`` cell: the default is the source text of its value."""

    name: str
    default: str
    help: str


def parameters_source(notebook: Path) -> str:
    """The source of ``notebook``'s cell tagged ``parameters``."""
    cells = json.loads(Path(notebook).read_text(encoding="utf-8"))["cells"]
    for cell in cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return "".join(cell["source"])
    raise ValueError(f"{notebook} has no cell tagged 'parameters'; papermill could not override its parameters.")


def chapter_parameters(notebook: Path) -> list[Parameter]:
    """Every top-level ``name = value  # comment`` of ``notebook``'s ``parameters`` cell, in order."""
    source = parameters_source(notebook)
    comments = {token.start[0]: token.string.lstrip("#").strip()
                for token in tokenize.generate_tokens(io.StringIO(source).readline) if token.type == tokenize.COMMENT}
    parameters = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            default = ast.get_source_segment(source, node.value) or ""
            parameters.append(Parameter(node.targets[0].id, default, comments.get(node.end_lineno, "")))
    return parameters


def parameters_markdown(notebook_dir: Path = NOTEBOOK_DIR) -> str:
    """One Markdown table of all chapters' parameters; a parameter with the same default and
    comment in several chapters is one row listing those chapters, and the rows of one name are
    adjacent (names in the order the notebooks introduce them)."""
    rows: dict[tuple[str, str, str], list[str]] = {}
    for notebook in sorted(Path(notebook_dir).glob("[0-9][0-9]_*.ipynb")):
        for parameter in chapter_parameters(notebook):
            key = (parameter.name, parameter.default, parameter.help)
            rows.setdefault(key, []).append(notebook.stem[:2])
    names = list(dict.fromkeys(name for name, _, _ in rows))
    lines = ["| parameter | chapters | default | meaning |", "|---|---|---|---|"]
    for (name, default, meaning), chapters in sorted(rows.items(), key=lambda row: names.index(row[0][0])):
        code = " ".join(default.split()).replace("|", "\\|")  # one line per table row
        lines.append(f"| `{name}` | {', '.join(chapters)} | `{code}` | {meaning.translate(_MARKUP)} |")
    return ("<!-- generated from the notebooks' parameters cells by `python -m narrowgate_utils.parameters`; "
            "do not edit -->\n\n" + "\n".join(lines) + "\n")


__all__ = ["Parameter", "chapter_parameters", "parameters_markdown", "parameters_source"]


if __name__ == "__main__":
    target = NOTEBOOK_DIR.parent / "book" / "chapter_parameters.md"
    target.write_text(parameters_markdown())
    print(f"wrote {target.relative_to(NOTEBOOK_DIR.parent)}")
