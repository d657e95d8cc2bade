"""What the package shows people while it runs: progress bars and file paths.

Progress bars are ``tqdm.auto`` bars (widgets in Jupyter when ipywidgets is installed, text
otherwise). ``TQDM_DISABLE`` set to any non-empty value turns every bar off, ours as well as
those of transformers and tqdm itself; ``scripts/execute_notebooks.py`` sets it so that the
executed notebooks carry no progress output. Paths are shown relative to the repository root
(or to ``~``), never as absolute machine paths.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm import TqdmWarning

# tqdm.auto warns once, with an absolute site-packages path, when ipywidgets is missing; it then
# falls back to text bars, which work in Jupyter too.
warnings.filterwarnings("ignore", message="IProgress not found", category=TqdmWarning)
from tqdm.auto import tqdm  # noqa: E402  (after the filter: the warning fires at import)

REPO_ROOT = Path(__file__).resolve().parent.parent


def display_path(path: str | Path) -> str:
    """``path`` for messages: an absolute path relative to the repository root inside it,
    ``~/...`` under home, else as given (relative paths too)."""
    if not Path(path).expanduser().is_absolute():
        return str(path)
    resolved = Path(path).expanduser().resolve()
    for root, prefix in ((REPO_ROOT, ""), (Path.home().resolve(), "~/")):
        if resolved == root:
            return prefix.rstrip("/") or "."
        if resolved.is_relative_to(root):
            return prefix + resolved.relative_to(root).as_posix()
    return str(path)


def relative_paths(text: str) -> str:
    """``text`` with absolute paths under the repository root (or home) written as in :func:`display_path`."""
    text = text.replace(f"{REPO_ROOT}{os.sep}", "")
    home = str(Path.home())
    return text.replace(f"{home}{os.sep}", "~/") if home != os.sep else text


def progress_bar(iterable: Iterable[Any] | None = None, desc: str = "", *, show: bool = True,
                 **kwargs: Any) -> tqdm:
    """A tqdm bar labelled ``desc`` (paths in it shortened); off when ``show`` is False or
    ``TQDM_DISABLE`` is set (tqdm's rule: any non-empty value), even where ``show`` is True."""
    disable = not show or bool(os.environ.get("TQDM_DISABLE"))
    return tqdm(iterable, desc=relative_paths(desc), disable=disable, **kwargs)


__all__ = ["REPO_ROOT", "display_path", "progress_bar", "relative_paths"]
