"""Presets: the paper's values, precedence of explicit parameters, and the notebooks' use of them."""
import json
from pathlib import Path

import pytest

from narrowgate_utils import presets

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_paper_values_match_the_paper():
    p01 = presets.preset_values("01", "paper")
    assert (p01["dataset"], p01["split"], p01["n_samples"], p01["min_cluster_size"]) == ("flickr30k", "all", 10_000, 50)
    p02 = presets.preset_values("02", "paper")
    assert (p02["dataset"], p02["n_samples"], p02["threshold"], p02["image_size"]) == ("imagenet", 10_000, 0.01, 512)
    p03 = presets.preset_values("03", "paper")
    assert p03["internal"] == "pooled" and p03["extra_positions"] == ["abs:32"] and p03["k"] == 30
    p04 = presets.preset_values("04", "paper")
    assert (p04["n_samples"], p04["n_random"], p04["random_repeats"], p04["window_step"]) == (2_000, 10, 10, 4)
    assert p04["image_size"] == 256 and p04["cider_tokenize"] == "raw"
    p05 = presets.preset_values("05", "paper")
    assert (p05["classes"], p05["per_pair"], p05["n_samples"], p05["layer_step"]) == ("patching", 100, 2_000, 4)
    assert p05["sites"][0] == "resid_in" and p05["image_size"] == 512
    p06 = presets.preset_values("06", "paper")
    assert (p06["finetune"], p06["n_train"], p06["train_dataset"]) == ("paper", 7_500, "llava_instruct+vqav2")


def test_toy_and_paper_share_parameter_names():
    for chapter in presets.CHAPTERS:
        assert presets.preset_values(chapter, "toy").keys() == presets.preset_values(chapter, "paper").keys()


def test_explicit_values_win_and_none_is_filled():
    namespace = {"n_samples": 40, "dataset": None, "unrelated": 1}
    resolved = presets.apply("04", "paper", namespace)
    assert namespace["n_samples"] == 40 and namespace["dataset"] == "vqav2" and namespace["n_random"] == 10
    assert resolved["n_samples"] == 40 and "unrelated" not in resolved
    assert "n_samples=40" in presets.describe("04", "paper", resolved)


def test_values_are_copies():
    presets.preset_values("03", "paper")["extra_positions"].append("eoi")
    assert presets.preset_values("03", "paper")["extra_positions"] == ["abs:32"]


@pytest.mark.parametrize("chapter, preset", [("09", "toy"), ("01", "large")])
def test_unknown_chapter_or_preset(chapter, preset):
    with pytest.raises(ValueError, match="Unknown"):
        presets.preset_values(chapter, preset)


def test_table_lists_both_presets():
    table = presets.preset_table()
    row = table[(table.chapter == "02") & (table.parameter == "threshold")].iloc[0]
    assert (row.toy, row.paper) == ("0.1", "0.01")


@pytest.mark.parametrize("chapter", presets.CHAPTERS)
def test_notebook_takes_a_preset(chapter):
    """Every chapter notebook has preset="toy" and leaves each preset parameter to the preset (None)."""
    notebook = next(NOTEBOOKS.glob(f"{chapter}_*.ipynb"))
    cells = json.loads(notebook.read_text())["cells"]
    source = next("".join(c["source"]) for c in cells if "parameters" in c["metadata"].get("tags", []))
    assigned = {line.split("=", 1)[0].strip(): line.split("=", 1)[1].split("#")[0].strip()
                for line in source.splitlines() if "=" in line and not line.startswith(("#", " "))}
    assert assigned.get("preset") == '"toy"'
    for name in presets.preset_values(chapter, "toy"):
        assert assigned.get(name) == "None", f"{notebook.name}: {name} should default to None (from the preset)"
    body = "".join("".join(c["source"]) for c in cells)
    assert f'presets.apply("{chapter}", preset, globals())' in body


def test_methods_page_table_is_generated_from_presets():
    root = NOTEBOOKS.parent
    assert (root / "book" / "preset_table.md").read_text() == presets.preset_markdown(), \
        "book/preset_table.md is stale: run `python -m narrowgate_utils.presets`"
    assert "preset_table.md" in (root / "book" / "methods.md").read_text()
