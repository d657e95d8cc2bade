"""Checks of the book infrastructure: table of contents, notebook execution helper, built HTML."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
MATHJAX = REPO / "book" / "_static" / "mathjax" / "tex-svg.js"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
ERROR_CLASS = re.compile(r'class="[^"]*\b(output_error|traceback)\b')
PARAMETER_CELL = re.compile(r'class="[^"]*\btag_(injected-)?parameters\b')


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def toc_entries(toc: dict) -> list[str]:
    """All document entries of a jupyter-book 1.x ``_toc.yml`` (root first), without suffix."""
    entries = [toc["root"]]

    def walk(items: list[dict]) -> None:
        for item in items or []:
            if "file" in item:
                entries.append(item["file"])
            walk(item.get("sections", []))
            for part in item.get("parts", []):
                walk(part.get("chapters", []))

    walk(toc.get("chapters", []))
    for part in toc.get("parts", []):
        walk(part.get("chapters", []))
    return entries


def resolve_entry(root: Path, entry: str) -> Path | None:
    """The source file a toc entry refers to (``.md`` or ``.ipynb``), or None."""
    for candidate in (root / entry, root / f"{entry}.md", root / f"{entry}.ipynb"):
        if candidate.is_file():
            return candidate
    return None


def _read_toc(root: Path = REPO) -> list[str]:
    return toc_entries(yaml.safe_load((root / "_toc.yml").read_text()))


# --------------------------------------------------------------------------- fast checks

def test_toc_entries_parse_nested_structure():
    toc = {"root": "a", "chapters": [{"file": "b", "sections": [{"file": "c"}]}, {"file": "d"}],
           "parts": [{"chapters": [{"file": "e"}]}]}
    assert toc_entries(toc) == ["a", "b", "c", "d", "e"]


def test_toc_entries_all_exist():
    entries = _read_toc()
    missing = [e for e in entries if resolve_entry(REPO, e) is None]
    assert not missing, f"_toc.yml lists files that do not exist: {missing}"
    assert len(entries) == len(set(entries)), "_toc.yml lists a file twice"
    assert entries[0] == "book/intro" and entries[-1] == "notebooks/09_reproduction_status"


def test_every_notebook_is_in_toc():
    listed = {e.removesuffix(".ipynb") for e in _read_toc()}
    notebooks = sorted(p.relative_to(REPO).with_suffix("").as_posix() for p in (REPO / "notebooks").glob("*.ipynb")
                       if not p.name.startswith("."))
    unlisted = [nb for nb in notebooks if nb not in listed]
    assert not unlisted, f"add these notebooks to _toc.yml (one '- file:' line each): {unlisted}"


def test_config_keeps_execution_off_and_mathjax_local():
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"
    assert config["only_build_toc_files"] is True
    sphinx = config["sphinx"]["config"]
    assert "book/_static" in sphinx["html_static_path"]
    assert "://" not in sphinx["mathjax_path"]


def test_hide_parameter_cells_tags_exactly_the_parameter_cells():
    execute = _load_script("execute_notebooks")
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("n_samples = 400", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("n_samples = 40", metadata={"tags": ["injected-parameters"]}),
        nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["hide-input"]}),
        nbformat.v4.new_markdown_cell("text"),
    ])
    assert execute.hide_parameter_cells(nb) == 2
    assert [c.metadata.get("tags", []) for c in nb.cells] == [
        ["parameters", "remove-cell"], ["injected-parameters", "remove-cell"], ["hide-input"], []]
    assert execute.hide_parameter_cells(nb) == 0  # idempotent


def test_parse_parameters_types_values_like_papermill_and_rejects_bad_names():
    execute = _load_script("execute_notebooks")
    params = execute.parse_parameters([["n_samples", "40"], ["device", "cuda"], ["lr", "1e-3"],
                                       ["full", "True"], ["seed", "None"], ["model_id", "facebook/chameleon-7b"]])
    assert params == {"n_samples": 40, "device": "cuda", "lr": 1e-3, "full": True, "seed": None,
                      "model_id": "facebook/chameleon-7b"}
    assert isinstance(params["n_samples"], int)
    with pytest.raises(ValueError, match="identifier"):
        execute.parse_parameters([["n-samples", "40"]])


# --------------------------------------------------------------------------- built HTML

def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def _dump_dom(chromium: str, html: Path, profile: Path) -> str:
    """Rendered DOM of a page; the virtual-time budget lets MathJax finish typesetting."""
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000",
           "--dump-dom", html.as_uri()]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, f"chromium failed on {html}: {result.stderr[-2000:]}"
    return result.stdout


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_book_builds_and_renders_without_errors(tmp_path):
    chromium = _chromium()
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed but CI is set: install it (Debian: apt-get install -y chromium)")
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium); the rendered-HTML check needs it")
    if not MATHJAX.is_file():
        fetch = subprocess.run([str(REPO / "scripts" / "fetch_mathjax.sh")], capture_output=True, text=True,
                               timeout=120)
        assert fetch.returncode == 0, f"could not bundle MathJax: {fetch.stderr}"

    # Build a copy of the committed sources (notebooks already executed; nothing is re-run).
    src = tmp_path / "src"
    src.mkdir()
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__")
    shutil.copytree(REPO / "book", src / "book", ignore=ignore)
    if (REPO / "notebooks").is_dir():
        shutil.copytree(REPO / "notebooks", src / "notebooks", ignore=ignore)
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    build = subprocess.run([str(jupyter_book), "build", str(src), "-W", "-n", "--keep-going"],
                           capture_output=True, text=True, timeout=300, cwd=src)
    assert build.returncode == 0, f"jupyter-book build failed:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}"
    html_root = src / "_build" / "html"
    assert (html_root / "_static" / "mathjax" / "tex-svg.js").is_file()

    entries = toc_entries(yaml.safe_load((src / "_toc.yml").read_text()))
    for i, entry in enumerate(entries):
        page = html_root / f"{entry.removesuffix('.ipynb')}.html"
        assert page.is_file(), f"no HTML page for toc entry {entry}"
        raw = page.read_text()
        assert "cdn.jsdelivr.net" not in raw, f"{page.name} loads MathJax from the CDN"
        if entry == "book/methods":  # Sphinx adds MathJax only to pages with math
            assert 'src="../_static/mathjax/tex-svg.js' in raw, "methods page does not load the bundled MathJax"
        dom = _dump_dom(chromium, page, tmp_path / f"profile{i}")
        assert "</html>" in dom, f"empty DOM for {entry}"
        assert not ERROR_CLASS.search(dom), f"{entry}: the page shows an error output"
        assert "Traceback" not in dom, f"{entry}: the page shows a Python traceback"
        assert "<mjx-merror" not in dom, f"{entry}: MathJax could not typeset a formula"
        if entry == "book/methods":
            assert dom.count("<mjx-container") >= 10, "MathJax did not render the equations of the methods page"
        if resolve_entry(src, entry).suffix == ".ipynb":
            article = dom[dom.find("<article"):dom.rfind("</article>")]
            if entry.endswith("reproduction_status"):  # a computed table, no figure
                assert "<table" in article and "Toy world" in article, f"{entry}: the status table is missing"
            else:
                assert "<img" in article, f"{entry}: notebook chapter has no figure"
            assert not PARAMETER_CELL.search(article), \
                f"{entry}: a parameters cell is visible (run scripts/execute_notebooks.py, it tags them remove-cell)"
