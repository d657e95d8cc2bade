#!/usr/bin/env python
"""Execute the book's notebooks in place with papermill (used by ``make book``).

Each notebook is run with the ``narrowgate`` Jupyter kernel (the repo's venv interpreter) and
with the repository root as working directory, exactly like ``papermill notebooks/X.ipynb ...``
typed at the root (relative paths such as ``output_dir="results"`` land in ``<repo>/results``). On success the executed notebook
replaces the original atomically, so committed notebooks carry their outputs. On failure the
original is left untouched, the failed run is written to ``_build/failed/<name>.ipynb`` and the
script exits 1 after trying every notebook.

Kernels get ``MPLBACKEND`` set to matplotlib's inline backend: an inherited ``MPLBACKEND=Agg``
(as exported for the tests) would make ``plt.show()`` draw nothing and leave chapters without figures.

Kernels run quietly: ``TQDM_DISABLE`` and ``HF_HUB_DISABLE_PROGRESS_BARS`` switch every progress
bar off (ours go through ``narrowgate_utils.console.progress_bar``; a bar refreshing in a notebook
becomes hundreds of stderr outputs), so the notebooks carry results, not progress.

After execution, cells tagged ``parameters`` or ``injected-parameters`` get the ``remove-cell``
tag so that myst-nb leaves them out of the HTML. As a safety net the committed outputs are then
cleaned: stderr stream outputs (warnings, stray bars) are dropped, and their first lines are
listed in this script's output so that the source can be fixed; absolute paths under the
repository root (or home) in text outputs and in papermill's metadata are made relative.

Usage::

    python scripts/execute_notebooks.py [-p NAME VALUE]... [--kernel NAME] [NOTEBOOK ...]

Without NOTEBOOK arguments every ``notebooks/*.ipynb`` is run, in sorted order. ``-p`` values are
typed as by ``papermill -p`` (``40`` -> int, ``1e-3`` -> float, ``True`` -> bool, ``cuda`` -> str).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
FAILED_DIR = REPO_ROOT / "_build" / "failed"
KERNEL_NAME = "narrowgate"
HIDDEN_TAGS = ("parameters", "injected-parameters")
REMOVE_TAG = "remove-cell"
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
QUIET_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def _rel(path: Path) -> str:
    """Path relative to the repo root when inside it (for messages)."""
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def resolve_value(raw: str) -> Any:
    """Type a ``-p`` value exactly as the papermill CLI does: True/False/None, int, float, else str."""
    constants = {"True": True, "False": False, "None": None}
    if raw in constants:
        return constants[raw]
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def parse_parameters(pairs: list[list[str]] | None) -> dict[str, Any]:
    """Turn ``[[name, value], ...]`` into papermill parameters (values typed as by ``papermill -p``)."""
    params: dict[str, Any] = {}
    for name, raw in pairs or []:
        if not name.isidentifier():
            raise ValueError(f"Parameter name {name!r} is not a Python identifier; use e.g. -p n_samples 40.")
        params[name] = resolve_value(raw)
    return params


def check_kernel(kernel_name: str) -> None:
    """Fail unless ``kernel_name`` exists and launches this interpreter (the venv's python)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel as err:
        raise ValueError(
            f"Jupyter kernel '{kernel_name}' is not installed for {sys.executable}. Register it with "
            f"`{sys.executable} -m ipykernel install --sys-prefix --name {kernel_name}` (make does this)."
        ) from err
    exe = spec.argv[0]
    if exe not in ("python", "python3") and Path(exe).resolve() != Path(sys.executable).resolve():
        raise ValueError(
            f"Kernel '{kernel_name}' runs {exe}, not this interpreter {sys.executable}. Re-register it with "
            f"`{sys.executable} -m ipykernel install --sys-prefix --name {kernel_name}`."
        )


def hide_parameter_cells(nb: Any) -> int:
    """Add ``remove-cell`` to cells tagged ``parameters``/``injected-parameters``; return how many changed."""
    changed = 0
    for cell in nb.cells:
        tags = list(cell.get("metadata", {}).get("tags", []))
        if any(t in tags for t in HIDDEN_TAGS) and REMOVE_TAG not in tags:
            cell.setdefault("metadata", {})["tags"] = tags + [REMOVE_TAG]
            changed += 1
    return changed


def strip_stderr(nb: Any) -> list[str]:
    """Remove every stderr stream output; return the first non-empty line of each, in order."""
    removed = []
    for cell in nb.cells:
        kept = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                lines = [line.strip() for line in re.split(r"[\r\n]", output.get("text", "")) if line.strip()]
                removed.append(lines[0] if lines else "")
            else:
                kept.append(output)
        if "outputs" in cell:
            cell.outputs = kept
    return removed


def relative_text(text: str, root: Path = REPO_ROOT) -> str:
    """``text`` with absolute paths under ``root`` made relative to it (``root`` itself: ``.``) and
    those under the home directory written ``~/...``."""
    bases = [(str(root), "")] + ([(str(Path.home()), "~/")] if str(Path.home()) != os.sep else [])
    for base, prefix in bases:
        start = rf"(?<![\w./~-]){re.escape(base)}"  # a whole path, not the tail of a longer one
        text = re.sub(start + "/", prefix, text)
        text = re.sub(start + r"(?![\w/-]|\.\w)", prefix.rstrip("/") or ".", text)  # a full stop may follow
    return text


def relativize_paths(nb: Any, path: Path) -> int:
    """Make absolute paths relative in text outputs (see :func:`relative_text`) and record
    ``path`` relative to the repo in papermill's metadata; return how many outputs changed."""
    changed = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            texts = {"text": output["text"]} if output.get("output_type") == "stream" else {}
            texts.update((m, v) for m, v in output.get("data", {}).items() if m.startswith("text/") and isinstance(v, str))
            fixed = {key: relative_text(value) for key, value in texts.items()}
            for key, value in fixed.items():
                (output if key == "text" else output.data)[key] = value
            changed += fixed != texts
    papermill = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):  # output_path was the temporary file
        if key in papermill:
            papermill[key] = _rel(path)
    return changed


def report_cleaning(path: Path, stripped: list[str], relativized: int) -> None:
    """Print what the output cleaning changed, so that the noisy source can be fixed."""
    if relativized:
        print(f"  {_rel(path)}: made absolute paths relative in {relativized} output(s)")
    if stripped:
        lines = list(dict.fromkeys(stripped))
        shown = "".join(f"\n    {line[:160]}" for line in lines[:5]) + ("\n    ..." if len(lines) > 5 else "")
        print(f"  {_rel(path)}: dropped {len(stripped)} stderr output(s), first lines:{shown}")


def execute_in_place(path: Path, parameters: dict[str, Any], kernel_name: str) -> bool:
    """Run one notebook with papermill; replace it atomically on success. Return success."""
    import nbformat
    import papermill as pm

    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".ipynb", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            pm.execute_notebook(
                str(path), str(tmp), parameters=parameters, kernel_name=kernel_name,
                cwd=str(REPO_ROOT), progress_bar=False, log_output=False,
            )
        except Exception as err:  # papermill raises PapermillExecutionError; kernel deaths raise others
            FAILED_DIR.mkdir(parents=True, exist_ok=True)
            failed = FAILED_DIR / path.name
            if tmp.exists() and tmp.stat().st_size > 0:
                shutil.copyfile(tmp, failed)
                where = f"failed run saved to {_rel(failed)}"
            else:
                where = "no output notebook was written"
            print(f"FAILED {_rel(path)}: {type(err).__name__}: {err}\n  ({where})",
                  file=sys.stderr)
            return False
        nb = nbformat.read(tmp, as_version=4)
        hide_parameter_cells(nb)
        stripped, relativized = strip_stderr(nb), relativize_paths(nb, path)
        nbformat.write(nb, tmp)
        report_cleaning(path, stripped, relativized)
        os.chmod(tmp, path.stat().st_mode & 0o777)  # mkstemp creates 0600; keep the original mode
        os.replace(tmp, path)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run (default: notebooks/*.ipynb)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"),
                        help="papermill parameter, repeatable (e.g. -p n_samples 40)")
    parser.add_argument("-k", "--kernel", default=KERNEL_NAME, help=f"Jupyter kernel name (default {KERNEL_NAME})")
    args = parser.parse_args(argv)

    parameters = parse_parameters(args.parameter)
    paths = [p.resolve() for p in args.notebooks] or sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"Notebook(s) not found: {', '.join(missing)}")
    if not paths:
        print(f"No notebooks in {_rel(NOTEBOOK_DIR)}/; nothing to execute.")
        return 0
    check_kernel(args.kernel)
    os.environ.update(QUIET_ENV, MPLBACKEND=INLINE_BACKEND)  # inherited by the kernels

    failures = []
    for path in paths:
        start = time.perf_counter()
        ok = execute_in_place(path, parameters, args.kernel)
        status = "ok    " if ok else "FAILED"
        print(f"{status} {_rel(path)}  {time.perf_counter() - start:7.1f} s", flush=True)
        if not ok:
            failures.append(path.name)
    if failures:
        print(f"{len(failures)} notebook(s) failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
