"""``narrowgate run``: execute the paper's notebooks for one model and collect a results table.

Each notebook is executed with papermill into ``<output>/<notebook>.ipynb`` (the committed
notebooks are not touched) with ``model_id`` and any extra parameters; every notebook writes its
tidy CSVs to ``<output>/<notebook>/``. Finished notebooks are skipped on a re-run unless
``--force`` is given, so an interrupted run continues where it stopped.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pandas as pd

from .atomic import atomic_path, write_csv
from .console import display_path

#: the chapter notebooks of a repository checkout (`--notebooks all` runs every `NN_*.ipynb` in order)
NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"


def model_slug(model_id: str) -> str:
    """File-system friendly name of a model id (``facebook/chameleon-7b`` → ``facebook__chameleon-7b``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "__", model_id.strip("/"))


def select_notebooks(which: str, notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """``all`` or a comma-separated list of notebook names or number prefixes (``01,04``)."""
    available = sorted(notebook_dir.glob("[0-9][0-9]_*.ipynb"))
    if not available:
        raise ValueError(f"No notebooks found in {notebook_dir}; run from a checkout of the narrowgate repository "
                         "or pass --notebook-dir.")
    if which == "all":
        return available
    chosen = []
    for token in (t.strip() for t in which.split(",") if t.strip()):
        matches = [p for p in available if p.stem == token or p.stem.startswith(f"{token}_")]
        if not matches:
            raise ValueError(f"No notebook matches '{token}'; available: {', '.join(p.stem for p in available)}.")
        chosen.extend(matches)
    return chosen


def run_notebooks(model_id: str, notebooks: list[Path], output: Path, parameters: dict[str, Any],
                  kernel_name: str = "python3", force: bool = False) -> list[Path]:
    """Execute each notebook for ``model_id`` into ``output``; returns the executed notebook paths."""
    import papermill as pm

    output.mkdir(parents=True, exist_ok=True)
    done = []
    for notebook in notebooks:
        target = output / notebook.name
        if target.exists() and not force:
            print(f"skip  {notebook.stem} (already executed in {display_path(target)}; --force to rerun)")
            done.append(target)
            continue
        print(f"run   {notebook.stem} for {model_id}", flush=True)
        with atomic_path(target) as tmp:
            pm.execute_notebook(str(notebook), str(tmp), kernel_name=kernel_name, cwd=str(Path.cwd()),
                                parameters={"model_id": model_id, "output_dir": str(output), **parameters})
        done.append(target)
    return done


def collect_results(output: Path) -> pd.DataFrame:
    """Stack every ``summary.csv`` and the knockout table under ``output`` into one long table
    (notebook, model, quantity, value)."""
    frames = []
    for csv in sorted(output.glob("*/summary.csv")) + sorted(output.glob("*/knockout_table.csv")):
        table = pd.read_csv(csv)
        keys = [c for c in ("model", "ablation", "site", "position") if c in table.columns]
        long = table.melt(id_vars=keys, var_name="quantity", value_name="value")
        if "ablation" in keys:
            long["quantity"] = long["ablation"] + " · " + long["quantity"]
        for extra in ("site", "position"):
            if extra in keys:
                long["quantity"] = long[extra] + " · " + long["quantity"]
        frames.append(long[["model", "quantity", "value"]].assign(notebook=csv.parent.name))
    if not frames:
        raise ValueError(f"No results found under {output}: run the notebooks first.")
    return pd.concat(frames, ignore_index=True)[["notebook", "model", "quantity", "value"]]


def add_run_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``narrowgate run`` (see :mod:`narrowgate_utils.cli`)."""
    parser = subparsers.add_parser("run", help="execute the paper's notebooks for one model and collect a results table",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="hub id, local checkpoint or toy model name")
    parser.add_argument("--notebooks", default="all", help="'all' or e.g. '01,04' (default all)")
    parser.add_argument("--output", type=Path, default=None, help="results folder (default results/<model>)")
    parser.add_argument("--notebook-dir", type=Path, default=NOTEBOOK_DIR)
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="extra papermill parameter, repeatable (e.g. -p device cuda -p dtype bfloat16)")
    parser.add_argument("--kernel", default="python3")
    parser.add_argument("--force", action="store_true", help="re-execute notebooks already executed")
    parser.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    from papermill.cli import _resolve_type

    parameters = {name: _resolve_type(value) for name, value in args.parameter}
    output = args.output or Path("results") / model_slug(args.model)
    run_notebooks(args.model, select_notebooks(args.notebooks, args.notebook_dir), output, parameters,
                  args.kernel, args.force)
    table = collect_results(output)
    write_csv(table, output / "results_table.csv")
    print(table.to_string(index=False))
    print(f"\nresults table: {display_path(output / 'results_table.csv')}")
    return 0
