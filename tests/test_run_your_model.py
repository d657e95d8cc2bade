"""The "Run it on your model" page: its Python runs, its commands name real parameters, its tables
are current (the generated parameter table, the supported-families table of page and README)."""
from __future__ import annotations

import os
import re
import shlex
import tempfile
from itertools import takewhile
from pathlib import Path

import pytest
import torch
import yaml

from narrowgate_utils.models.registry import SUPPORTED_FAMILIES
from narrowgate_utils.parameters import Parameter, chapter_parameters, parameters_markdown

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "book" / "run_your_model.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.S | re.M)


def blocks(language: str) -> list[str]:
    """The fenced code blocks of the page in ``language``, in page order."""
    return [body for lang, body in FENCE.findall(PAGE.read_text()) if lang == language]


def families_table(text: str) -> list[str]:
    """The body rows of the supported-families table in ``text``."""
    lines = text[text.index("| family | model types |"):].splitlines()[2:]
    return list(takewhile(lambda line: line.startswith("|"), lines))


def test_page_code_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every ```python block, in order, in one namespace, from the repository root (as a reader would)."""
    code = blocks("python")
    assert len(code) >= 3, "the page lost its worked example"
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    namespace: dict = {}
    for number, source in enumerate(code, start=1):
        exec(compile(source, f"{PAGE.name}:python block {number}", "exec"), namespace)
    assert namespace["adapter"].family == "idefics3"


def test_page_commands_use_real_parameters() -> None:
    """Each papermill command runs an existing chapter with parameters its ``parameters`` cell defines."""
    commands = [line for block in blocks("bash") for line in block.replace("\\\n", " ").splitlines()
                if line.startswith("papermill ")]
    assert commands, "the page shows no papermill command"
    for command in commands:
        words = shlex.split(command)
        notebook = REPO / words[1]
        assert notebook.is_file(), f"{words[1]} does not exist"
        known = {parameter.name for parameter in chapter_parameters(notebook)}
        given = {words[i + 1] for i, word in enumerate(words) if word == "-p"}
        assert given and given <= known, f"{notebook.name} takes no parameter {sorted(given - known)}"


def test_parameter_table_is_generated_from_the_notebooks() -> None:
    assert (REPO / "book" / "chapter_parameters.md").read_text() == parameters_markdown(), \
        "book/chapter_parameters.md is stale: run `python -m narrowgate_utils.parameters`"
    assert "{include} chapter_parameters.md" in PAGE.read_text()


def test_chapter_parameters_reads_names_defaults_and_comments(tmp_path: Path) -> None:
    import json

    cell = {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "outputs": [], "execution_count": None,
            "source": ['preset = "toy"  # "toy" or "paper"\n', "layers = [0, 1]\n", "# a note\n",
                       "sites = (  # where to patch\n", '    "resid",\n', ")  # after the value\n"]}
    notebook = tmp_path / "01_x.ipynb"
    notebook.write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    assert chapter_parameters(notebook) == [Parameter("preset", '"toy"', '"toy" or "paper"'),
                                            Parameter("layers", "[0, 1]", ""),
                                            Parameter("sites", '(  # where to patch\n    "resid",\n)',
                                                      "after the value")]
    cell["metadata"]["tags"] = []
    notebook.write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    with pytest.raises(ValueError, match="no cell tagged 'parameters'"):
        chapter_parameters(notebook)


def test_page_is_in_the_toc_after_the_methods() -> None:
    chapters = [entry["file"] for entry in yaml.safe_load((REPO / "_toc.yml").read_text())["chapters"]]
    assert chapters.index("book/run_your_model") == chapters.index("book/methods") + 1
    prose = FENCE.sub("", PAGE.read_text())
    assert len(re.findall(r"^# ", prose, re.M)) == 1, "one top-level heading per page"


def test_supported_families_tables_list_every_family() -> None:
    page, readme = families_table(PAGE.read_text()), families_table((REPO / "README.md").read_text())
    assert page == readme, "the supported-families tables of the page and the README differ"
    assert [row.split("`")[1] for row in page] == list(SUPPORTED_FAMILIES)
    assert "## Run it on your model" in (REPO / "README.md").read_text()
