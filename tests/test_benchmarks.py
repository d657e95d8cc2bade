"""Smoke tests of benchmarks/*.py: every script's main runs at a tiny size and writes its table.

No timing assertions (the machine is shared); the checks are on what the tables must contain.
"""
from __future__ import annotations

import importlib.util
import io
import json
import re
import sys
from contextlib import redirect_stdout
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
#: a 2-layer, hidden-32 model with 16 image tokens: a forward takes milliseconds
TINY = ["--model", "midsize-llava", "--hidden", "32", "--layers", "2", "--image-size", "32", "--patch", "8"]


def load_script(name: str) -> ModuleType:
    """Import benchmarks/<name>.py under a private module name (the scripts import benchlib)."""
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    if name == "benchlib":  # the scripts' own `import benchlib` must find this very module
        return importlib.import_module("benchlib")
    module_name = f"narrowgate_bench_{name}"
    spec = importlib.util.spec_from_file_location(module_name, BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def table_rows(text: str, section: str) -> list[list[str]]:
    """Data rows of the first Markdown table inside ``section`` of a results file."""
    body = re.search(rf"<!-- section:{section} -->\n(.*?)<!-- /section:{section} -->", text, re.DOTALL).group(1)
    lines = [line for line in body.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_write_section_replaces_only_its_section_and_keeps_order(tmp_path):
    benchlib = load_script("benchlib")
    path = tmp_path / "results.md"
    benchlib.write_section("cache", "## cache v1\n", path)
    benchlib.write_section("extraction", "## extraction\n", path)
    benchlib.write_section("cache", "## cache v2\n", path)
    text = path.read_text()
    assert "cache v1" not in text and text.count("## cache v2") == 1
    assert text.index("## extraction") < text.index("## cache v2")  # SECTIONS order, not write order
    assert text.startswith("# narrowgate benchmarks")
    with pytest.raises(ValueError, match="Unknown results section"):
        benchlib.write_section("nope", "x", path)


def test_ratio_text_judges_targets_in_both_directions():
    benchlib = load_script("benchlib")
    assert benchlib.ratio_text(1.1, 1.15) == "1.10× (≤ 1.15×: met)"
    assert benchlib.ratio_text(1.2, 1.15).endswith("NOT met)")
    assert benchlib.ratio_text(12.0, 10, at_least=True).endswith("(≥ 10×: met)")
    assert benchlib.ratio_text(1234.0) == "1,234×"


def test_extraction_main_writes_three_comparisons(tmp_path):
    path = tmp_path / "results.md"
    assert load_script("extraction").main([*TINY, "--batch-size", "2", "--repeats", "1", "--results", str(path)]) == 0
    rows = table_rows(path.read_text(), "extraction")
    assert [row[3] for row in rows] == ["`collect_residual`", "`knockout_forward`", "`attention_profile`"]
    assert "1.15×" in rows[0][-1] and "1.2×" in rows[1][-1]
    assert "16 image tokens" in path.read_text()


def test_memory_worker_output_array_is_layers_by_samples_by_width():
    out = io.StringIO()
    with redirect_stdout(out):  # a worker call prints its figures as one JSON line
        assert load_script("memory").main(["--worker", "6", "--batch-size", "4", *TINY]) == 0
    result = json.loads(out.getvalue().strip().splitlines()[-1])
    assert result["output"] == 2 * 6 * 32 * 4  # layers × n × d float32
    assert result["peak"] >= result["baseline"] > 0


def test_memory_main_runs_fresh_processes_per_size(tmp_path):
    path = tmp_path / "results.md"
    assert load_script("memory").main([*TINY, "--sizes", "2", "4", "--batch-size", "2", "--results", str(path)]) == 0
    rows = table_rows(path.read_text(), "memory")
    assert [row[0] for row in rows] == ["2", "4"]


def test_cache_main_loads_the_same_arrays_faster(tmp_path):
    path = tmp_path / "results.md"
    argv = [*TINY, "--samples", "2", "--batch-size", "2", "--repeats", "1", "--results", str(path)]
    assert load_script("cache").main(argv) == 0
    (row,) = table_rows(path.read_text(), "cache")
    assert row[0].startswith("`modality_vectors`, 2 samples, all 2 layers")
    assert "≥ 10×" in row[6]


def test_book_main_never_trains_and_leaves_make_book_to_the_lead(tmp_path):
    path = tmp_path / "results.md"
    assert load_script("book").main(["--steps", "toy", "--repeats", "1", "--results", str(path)]) == 0
    rows = table_rows(path.read_text(), "book")
    assert rows[0][0] == "`narrowgate toy train` (all cached)"
    assert rows[-1][2] == "measured by the lead"


def test_gpu_main_skips_without_cuda_and_runs_on_cpu_when_asked(tmp_path):
    gpu = load_script("gpu")
    path = tmp_path / "results.md"
    if not torch.cuda.is_available():
        assert gpu.main(["--results", str(path)]) == 0
        assert table_rows(path.read_text(), "gpu")[0][0] == "no GPU: skipped"
    small = ["--hidden", "32", "--intermediate", "64", "--head-dim", "16", "--vocab", "200", "--image-size", "32",
             "--patch", "8"]
    assert gpu.main(["--device", "cpu", *small, "--depths", "1", "2", "--repeats", "1", "--batch-size", "1",
                     "--results", str(path)]) == 0
    rows = table_rows(path.read_text(), "gpu")
    assert [row[0] for row in rows] == ["`forward`", "`hidden_states`", "`collect_residual`", "`knockout`"]
    assert rows[2][5].endswith("`hidden_states`") and rows[3][5].endswith("`forward`")
    assert gpu.layer_parameters(gpu.benchlib.MidsizeSpec(hidden=4096, intermediate=11008)) == 202_375_168


def test_overlap_memory_main_runs_fresh_processes_and_judges_growth(tmp_path):
    path = tmp_path / "results.md"
    argv = [*TINY, "--intermediate", "64", "--sizes", "4", "8", "--batch-size", "2", "--results", str(path)]
    assert load_script("overlap_memory").main(argv) == 0
    rows = table_rows(path.read_text(), "overlap_memory")
    assert [row[0] for row in rows] == ["4", "8"]
    assert "≤ 1.1×: met" in path.read_text()


def test_fused_main_checks_and_times_every_path(tmp_path):
    path = tmp_path / "results.md"
    argv = ["--hidden", "32", "--layers", "2", "--image-size", "32", "--patch", "8", "--head-dim", "16",
            "--repeats", "1", "--adp-sizes", "200", "400", "--adp-dims", "32", "--results", str(path)]
    assert load_script("fused").main(argv) == 0
    text = path.read_text()
    rows = table_rows(text, "fused")[:4]  # the first table: the model paths
    assert [row[0] for row in rows] == ["`collect_residual`", "`fused_knockout`", "`fused_knockout_pre`",
                                        "`eager_knockout`"]
    assert "≤ 1.1×" in rows[0][-1] and "≤ 1.3×" in rows[1][-1]
    assert "min for 33 layers" in text and "same neighbours" in text
    assert torch.cuda.is_available() or "no GPU: skipped" in text
