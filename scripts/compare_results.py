#!/usr/bin/env python
"""Compare the CSVs of a fresh ``make book`` with the committed reference results.

    python scripts/compare_results.py                  # results/ against data/reference_results/
    python scripts/compare_results.py --fresh DIR --reference DIR
    python scripts/compare_results.py --save           # make results/ the new reference (after a rebuild)

Every CSV of the reference is matched with the fresh CSV of the same relative path. Rows are
matched on their text columns (model, layer, token, ablation, ...; integer columns named like
keys too, see :data:`KEY_COLUMNS`); every other numeric column is compared. A value is inside its
interval when the reference reports one for it — columns ``<name>_lo`` / ``<name>_hi`` (a 95 %
interval) or ``<name>_sd`` (mean ± 2 sd) — and otherwise when it equals the reference within
``--rtol`` / ``--atol`` (single-seed numbers have no spread to be inside of). Prints one line per
number outside its interval, every missing file, row or column, and exits 1 if there is any.
"""
from __future__ import annotations

import argparse
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
#: integer columns that identify a row rather than measure something
KEY_COLUMNS = {"layer", "step", "seed", "position", "window", "k", "repeat", "class", "label", "n"}
INTERVAL_SUFFIXES = ("_lo", "_hi", "_sd")


@dataclass(frozen=True)
class Difference:
    """One number (or file, row, column) of the fresh build that does not match the reference."""

    file: str
    row: str
    column: str
    reference: str
    fresh: str
    allowed: str

    def __str__(self) -> str:
        return f"{self.file} | {self.row} | {self.column}: reference {self.reference}, fresh {self.fresh} ({self.allowed})"


def key_columns(table: pd.DataFrame) -> list[str]:
    """The columns that identify a row: non-numeric ones and the integer columns of :data:`KEY_COLUMNS`."""
    return [c for c in table.columns
            if not pd.api.types.is_numeric_dtype(table[c]) or pd.api.types.is_bool_dtype(table[c])
            or (c in KEY_COLUMNS and pd.api.types.is_integer_dtype(table[c]))]


def interval(row: pd.Series, column: str, rtol: float, atol: float) -> tuple[float, float, str]:
    """(low, high, description) of the allowed values of ``column`` in a reference ``row``."""
    value = float(row[column])
    reported = {suffix: row[f"{column}{suffix}"] for suffix in INTERVAL_SUFFIXES
                if f"{column}{suffix}" in row and not pd.isna(row[f"{column}{suffix}"])}
    if "_lo" in reported and "_hi" in reported:
        return float(reported["_lo"]), float(reported["_hi"]), "outside the reported 95 % interval"
    if "_sd" in reported:
        spread = 2 * float(row[f"{column}_sd"])
        return value - spread, value + spread, "outside mean ± 2 sd"
    tolerance = atol + rtol * abs(value)
    return value - tolerance, value + tolerance, f"single value: allowed ± {tolerance:.2g}"


def compare_tables(name: str, reference: pd.DataFrame, fresh: pd.DataFrame, rtol: float, atol: float) -> list[Difference]:
    """Every reference number of ``name`` that the fresh table misses or puts outside its interval."""
    keys = key_columns(reference)
    measured = [c for c in reference.columns if c not in keys and not c.endswith(INTERVAL_SUFFIXES)]
    missing = [c for c in reference.columns if c not in fresh.columns]
    if missing:
        return [Difference(name, "-", ", ".join(missing), "present", "missing", "column")]
    if not keys or reference.duplicated(keys).any():
        reference, fresh = reference.assign(_row=range(len(reference))), fresh.assign(_row=range(len(fresh)))
        keys = [*keys, "_row"]  # rows without a unique key are matched in order
    merged = reference.merge(fresh, on=keys, how="left", suffixes=("", "__fresh"), indicator=True)
    out = []
    for _, row in merged.iterrows():
        label = ", ".join(f"{k}={row[k]}" for k in keys if k != "_row") or "-"
        if row["_merge"] == "left_only":
            out.append(Difference(name, label, "*", "row", "missing", "row"))
            continue
        for column in measured:
            value, new = row[column], row[f"{column}__fresh"]
            if pd.isna(value) and pd.isna(new):
                continue
            if not pd.api.types.is_number(value) or isinstance(value, bool):
                if str(value) != str(new):
                    out.append(Difference(name, label, column, str(value), str(new), "must be equal"))
                continue
            low, high, allowed = interval(row, column, rtol, atol)
            if pd.isna(new) or not math.isfinite(float(new)) or not low <= float(new) <= high:
                out.append(Difference(name, label, column, f"{float(value):.6g}", f"{float(new):.6g}", allowed))
    return out


def compare(fresh_dir: Path, reference_dir: Path, rtol: float = 1e-6, atol: float = 1e-9) -> list[Difference]:
    """All differences between the CSVs under ``reference_dir`` and their twins under ``fresh_dir``."""
    references = sorted(reference_dir.rglob("*.csv"))
    if not references:
        raise ValueError(f"No reference CSVs under {reference_dir}; build the book and run with --save first.")
    out = []
    for path in references:
        name = str(path.relative_to(reference_dir))
        twin = fresh_dir / name
        if not twin.exists():
            out.append(Difference(name, "-", "-", "file", "missing", "file"))
            continue
        out.extend(compare_tables(name, pd.read_csv(path), pd.read_csv(twin), rtol, atol))
    return out


def save_reference(fresh_dir: Path, reference_dir: Path) -> int:
    """Replace the reference by every CSV of ``fresh_dir``; returns the number of files."""
    files = sorted(fresh_dir.rglob("*.csv"))
    if not files:
        raise ValueError(f"No CSVs under {fresh_dir}: run `make book` first.")
    staging = reference_dir.with_name(f".{reference_dir.name}.new")
    shutil.rmtree(staging, ignore_errors=True)
    for path in files:
        target = staging / path.relative_to(fresh_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    shutil.rmtree(reference_dir, ignore_errors=True)
    staging.rename(reference_dir)
    return len(files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fresh", type=Path, default=ROOT / "results", help="results of the fresh build (default results/)")
    parser.add_argument("--reference", type=Path, default=ROOT / "data" / "reference_results",
                        help="committed reference results (default data/reference_results/)")
    parser.add_argument("--rtol", type=float, default=1e-6, help="relative tolerance for values without an interval")
    parser.add_argument("--atol", type=float, default=1e-9, help="absolute tolerance for values without an interval")
    parser.add_argument("--save", action="store_true", help="copy the fresh CSVs over the reference and stop")
    args = parser.parse_args(argv)
    if args.save:
        print(f"saved {save_reference(args.fresh, args.reference)} reference CSVs to {args.reference}")
        return 0
    differences = compare(args.fresh, args.reference, args.rtol, args.atol)
    for difference in differences:
        print(difference)
    n_files = len(list(args.reference.rglob("*.csv")))
    print(f"{len(differences)} differences in {n_files} reference CSVs" if differences
          else f"all numbers of {n_files} reference CSVs inside their intervals")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
