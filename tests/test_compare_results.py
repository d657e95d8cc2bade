"""scripts/compare_results.py: numbers outside their interval, missing rows and files are listed."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_results.py"
spec = importlib.util.spec_from_file_location("compare_results", SCRIPT)
compare_results = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = compare_results  # dataclasses look their module up
spec.loader.exec_module(compare_results)


def write(root: Path, name: str, rows: list[dict]) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


def test_values_are_checked_against_their_interval_or_tolerance(tmp_path):
    reference, fresh = tmp_path / "reference", tmp_path / "fresh"
    write(reference, "02/shares.csv", [{"model": "a", "layer": 0, "share": 0.20, "share_sd": 0.01},
                                       {"model": "a", "layer": 1, "share": 0.30, "share_lo": 0.25, "share_hi": 0.32},
                                       {"model": "b", "layer": 0, "share": 0.50}])
    write(fresh, "02/shares.csv", [{"model": "a", "layer": 0, "share": 0.219, "share_sd": 0.01},  # inside 0.2 ± 0.02
                                   {"model": "a", "layer": 1, "share": 0.33, "share_lo": 0.2, "share_hi": 0.4},  # > 0.32
                                   {"model": "b", "layer": 0, "share": 0.500001}])  # single value: 1e-6 off, allowed 5e-7
    found = compare_results.compare(fresh, reference)
    assert [(d.row, d.column) for d in found] == [("model=a, layer=1", "share"), ("model=b, layer=0", "share")]
    assert "95 %" in found[0].allowed and "single value" in found[1].allowed
    assert compare_results.compare(fresh, reference, rtol=1e-3) == found[:1]


def test_missing_files_rows_and_the_cli(tmp_path):
    reference, fresh = tmp_path / "reference", tmp_path / "fresh"
    write(reference, "01/gap.csv", [{"model": "a", "layer": 0, "median": 0.1}, {"model": "a", "layer": 1, "median": 0.2}])
    write(reference, "03/chi.csv", [{"model": "a", "chi": 0.5}])
    write(fresh, "01/gap.csv", [{"model": "a", "layer": 0, "median": 0.1}])
    found = compare_results.compare(fresh, reference)
    assert {(d.file, d.fresh) for d in found} == {("01/gap.csv", "missing"), ("03/chi.csv", "missing")}
    run = lambda *args: subprocess.run([sys.executable, str(SCRIPT), "--fresh", str(fresh), *args],
                                       capture_output=True, text=True)
    cli = run("--reference", str(reference))
    assert cli.returncode == 1 and "2 differences" in cli.stdout
    assert run("--reference", str(tmp_path / "copy"), "--save").returncode == 0
    assert run("--reference", str(tmp_path / "copy")).returncode == 0
    with pytest.raises(ValueError, match="No reference CSVs"):
        compare_results.compare(fresh, tmp_path / "empty")
