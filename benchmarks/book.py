"""Benchmark 4: book build time from a warm venv, and ``narrowgate toy train`` when cached.

* ``make html``: the jupyter-book build of the already executed notebooks, incremental in
  ``_build/`` (run only when ``make -n html`` shows that the venv and MathJax are up to date,
  so timing it never reinstalls anything);
* the same ``jupyter-book build`` command into an empty temporary directory (a clean build);
* ``narrowgate toy train`` when every toy model is already in the cache (it must only check
  the cache). Skipped, never triggered, when some toy model is not trained yet;
* ``make book`` (executes every notebook) is left to the lead: a placeholder row.

``python benchmarks/book.py [--quick] [--steps html clean toy]``
"""
from __future__ import annotations

import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import benchlib

REPO = Path(__file__).resolve().parents[1]
STEPS = ("html", "clean", "toy")
#: the arguments of the Makefile's html target (`jupyter-book build . -W -n --keep-going`)
BUILD_ARGS = ["build", ".", "-W", "-n", "--keep-going"]


def venv_bin(name: str) -> str:
    """``.venv/bin/<name>`` of the repo, else whatever is on PATH."""
    candidate = REPO / ".venv" / "bin" / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if found is None:
        raise ValueError(f"'{name}' not found in {REPO / '.venv' / 'bin'} or on PATH; run `make venv` first.")
    return found


def timed_run(command: list[str]) -> tuple[float, float, int, str]:
    """``(wall s, CPU s of the child processes, exit status, output tail)`` of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.returncode, (done.stdout + done.stderr)[-2000:]


def status_text(code: int) -> str:
    return "ok" if code == 0 else f"exit {code}"


def html_is_warm() -> tuple[bool, str]:
    """Whether ``make html`` would only run the jupyter-book build (venv and MathJax up to date)."""
    done = subprocess.run(["make", "-n", "--no-print-directory", "html"], cwd=REPO, capture_output=True, text=True,
                          check=False)
    commands = [line for line in done.stdout.splitlines() if line.strip()]
    warm = done.returncode == 0 and len(commands) == 1 and "jupyter-book build" in commands[0]
    return warm, "; ".join(commands) or done.stderr.strip()


def untrained_toy_models() -> list[str]:
    """Names of the toy models that are NOT trained yet (empty: all cached)."""
    from narrowgate_utils.toy.registry import TOY_MODEL_NAMES, is_trained

    return [name for name in TOY_MODEL_NAMES if not is_trained(name)]


def run(args) -> str:
    rows: list[list[str]] = []
    if "html" in args.steps:
        warm, plan = html_is_warm()
        if warm:
            wall, cpu, code, tail = timed_run(["make", "--no-print-directory", "html"])
            rows.append(["`make html` (incremental, existing `_build/`)", "1", benchlib.seconds(wall),
                         benchlib.seconds(cpu), status_text(code)])
            if code:
                print(tail)
        else:
            rows.append(["`make html`", "—", "—", "—", f"skipped: `make -n html` would run `{plan}`"])
    if "clean" in args.steps:
        with tempfile.TemporaryDirectory(prefix="narrowgate-bench-book-") as tmp:
            command = [venv_bin("jupyter-book"), *BUILD_ARGS, "--path-output", tmp]
            wall, cpu, code, tail = timed_run(command)
        rows.append(["`jupyter-book build` into an empty directory (clean)", "1", benchlib.seconds(wall),
                     benchlib.seconds(cpu), status_text(code)])
        if code:
            print(tail)
    if "toy" in args.steps:
        missing = untrained_toy_models()
        if missing:
            rows.append(["`narrowgate toy train` (all cached)", "—", "—", "—",
                         f"skipped: not trained yet: {', '.join(missing)}"])
        else:
            runs = [timed_run([venv_bin("narrowgate"), "toy", "train"]) for _ in range(args.repeats)]
            walls, cpus = sorted(r[0] for r in runs), sorted(r[1] for r in runs)
            codes = {r[2] for r in runs}
            rows.append(["`narrowgate toy train` (all cached)", str(args.repeats), benchlib.seconds(walls[len(walls) // 2]),
                         benchlib.seconds(cpus[len(cpus) // 2]), status_text(max(codes))])
    rows.append(["`make book` (executes every notebook, then builds)", "—", "measured by the lead", "—", "—"])
    lines = [
        "## 4. Book build and cached toy models",
        "",
        benchlib.table(["step", "runs", "wall (median)", "CPU of child processes", "status"], rows),
        "",
        ("The venv is warm (installed once); notebooks are not executed. CPU time is the user + system time of "
         "the child processes (`RUSAGE_CHILDREN`)."),
        "",
        benchlib.machine_info(),
        benchlib.CONTENTION,
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchlib.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=None,
                        help="what to time (default: all; --quick skips the clean build)")
    args = parser.parse_args(argv)
    args.steps = args.steps or ([s for s in STEPS if s != "clean"] if args.quick else list(STEPS))
    benchlib.setup(args)
    return benchlib.publish("book", run(args), args)


if __name__ == "__main__":
    sys.exit(main())
