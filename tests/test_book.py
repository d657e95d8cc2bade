"""Checks of the book infrastructure: table of contents, notebook execution helper, built HTML."""
from __future__ import annotations

import importlib.util
import json
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
#: myst-nb's class for a stderr stream output (warnings, progress bars)
STDERR_CLASS = re.compile(r'class="output stderr\b')
#: what gives away a machine path in committed outputs and pages
PATH_MARKERS = (f"{REPO}/", "/home/", "/root/", "/work/", "site-packages")
DATA_URI = re.compile(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]+")
FIGURE = re.compile(r'<figure class="narrowgate-figure"[^>]*>\s*<img\b[^>]*>\s*<figcaption>([^<]*)</figcaption>')
#: a chapter page, HTML plus the images it shows (theme assets and MathJax are shared and not counted)
MAX_PAGE_BYTES = 1_000_000
#: flags a page copy in the build folder as the DOM attribute data-overflowing-code: how many code
#: cell inputs are wider than their box (a horizontal scroll bar) at the probe's window width
OVERFLOW_PROBE = ("<script>window.addEventListener('load', () => document.body.setAttribute('data-overflowing-code', "
                  "[...document.querySelectorAll('div.cell_input pre')].filter(p => p.scrollWidth > p.clientWidth + 1)"
                  ".length));</script>")


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


def _nb(cells: list) -> nbformat.NotebookNode:
    return nbformat.v4.new_notebook(cells=cells, metadata={"papermill": {
        "input_path": str(REPO / "notebooks" / "x.ipynb"), "output_path": str(REPO / "notebooks" / ".x.tmp.ipynb")}})


def test_strip_stderr_keeps_everything_else_and_reports_first_lines():
    execute = _load_script("execute_notebooks")
    cell = nbformat.v4.new_code_cell("run()", outputs=[
        nbformat.v4.new_output("stream", name="stderr", text="\rbar:  50%|#####     | 1/2\rbar: 100%|##########| 2/2\n"),
        nbformat.v4.new_output("stream", name="stdout", text="40 samples\n"),
        nbformat.v4.new_output("stream", name="stderr", text="\n/x/site-packages/tqdm/auto.py:21: TqdmWarning: IProgress\n"),
        nbformat.v4.new_output("display_data", data={"text/plain": "table"}),
    ])
    nb = _nb([cell, nbformat.v4.new_markdown_cell("text")])
    assert execute.strip_stderr(nb) == ["bar:  50%|#####     | 1/2", "/x/site-packages/tqdm/auto.py:21: TqdmWarning: IProgress"]
    assert [(o.output_type, o.get("name")) for o in nb.cells[0].outputs] == [("stream", "stdout"), ("display_data", None)]
    assert execute.strip_stderr(nb) == []


def test_relative_text_rewrites_whole_paths_only(tmp_path):
    execute = _load_script("execute_notebooks")
    root = tmp_path / "repo"
    text = f"models cached in {root}/.cache/narrowgate/gate_factors; root {root}. Other: {root}2/x, /mnt{root}/y"
    assert execute.relative_text(text, root) == (
        f"models cached in .cache/narrowgate/gate_factors; root .. Other: {root}2/x, /mnt{root}/y")
    assert execute.relative_text(f"{Path.home()}/data/imagenet") == "~/data/imagenet"


def test_relativize_paths_fixes_text_outputs_and_papermill_metadata():
    execute = _load_script("execute_notebooks")
    png = "iVBORw0KGgo="
    cell = nbformat.v4.new_code_cell("x", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text=f"results are written to {REPO}/results/01\n"),
        nbformat.v4.new_output("display_data", data={"text/plain": f"'{REPO}/a.csv'", "text/html": f"<b>{REPO}/a.csv</b>",
                                                     "image/png": png}),
        nbformat.v4.new_output("stream", name="stdout", text="nothing to fix\n"),
    ])
    nb = _nb([cell])
    assert execute.relativize_paths(nb, REPO / "notebooks" / "x.ipynb") == 2
    outputs = nb.cells[0].outputs
    assert outputs[0].text == "results are written to results/01\n"
    assert outputs[1].data == {"text/plain": "'a.csv'", "text/html": "<b>a.csv</b>", "image/png": png}
    assert nb.metadata.papermill == {"input_path": "notebooks/x.ipynb", "output_path": "notebooks/x.ipynb"}


def test_progress_bars_obey_tqdm_disable_and_paths_display_relative(monkeypatch):
    from narrowgate_utils import console

    def disabled(**kwargs) -> bool:
        with open(os.devnull, "w") as sink, console.progress_bar(range(3), "x", file=sink, **kwargs) as bar:
            return bar.disable

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert not disabled() and disabled(show=False)
    monkeypatch.setenv("TQDM_DISABLE", "1")  # what scripts/execute_notebooks.py sets for the kernels
    assert disabled()
    label = f"knockout · {REPO}/.cache/narrowgate/gate_factors/vq-s0"
    assert console.relative_paths(label) == "knockout · .cache/narrowgate/gate_factors/vq-s0"
    assert console.display_path(REPO / ".cache" / "narrowgate") == ".cache/narrowgate"
    assert console.display_path(REPO) == "."
    assert console.display_path(Path.home() / "data") == "~/data" or Path.home() == REPO
    assert console.display_path("facebook/chameleon-7b") == "facebook/chameleon-7b"


def test_save_figure_with_caption_shows_one_captioned_figure(tmp_path, monkeypatch):
    import IPython.display
    import matplotlib.pyplot as plt

    from narrowgate_utils import plotting

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda bundle, raw: shown.append(bundle))
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    png = plotting.save_figure(fig, tmp_path, "fig2_gap", caption="Median |cos| per layer <toy>; mirrors Fig. 2.")
    assert png.is_file() and (tmp_path / "fig2_gap.svg").is_file()
    assert not plt.fignum_exists(fig.number), "the captioned figure must be closed (no second inline copy)"
    [bundle] = shown
    match = FIGURE.search(bundle["text/html"])
    assert match and match.group(1) == "Median |cos| per layer &lt;toy&gt;; mirrors Fig. 2."
    assert 'id="figure-fig2_gap"' in bundle["text/html"] and bundle["text/plain"].startswith("Figure: Median")
    fig2, _ = plt.subplots()
    plotting.save_figure(fig2, tmp_path, "plain")  # no caption: nothing displayed here, the inline backend shows it
    assert len(shown) == 1 and plt.fignum_exists(fig2.number)
    plt.close(fig2)


def _chapter_notebooks() -> list[Path]:
    return sorted(p for p in (REPO / "notebooks").glob("*.ipynb") if not p.name.startswith("."))


def _output_texts(nb: nbformat.NotebookNode) -> list[str]:
    texts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", ""))
            texts.extend(v for m, v in output.get("data", {}).items() if m.startswith("text/") and isinstance(v, str))
    return texts


@pytest.mark.parametrize("path", _chapter_notebooks(), ids=lambda p: p.stem)
def test_committed_notebook_outputs_are_clean(path):
    """No stderr (warnings, progress bars) and no machine paths in what is committed; run
    scripts/execute_notebooks.py (make book), which executes quietly and cleans the outputs."""
    nb = nbformat.read(path, as_version=4)
    stderr = [o for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
    assert not stderr, f"{len(stderr)} stderr output(s), first: {stderr[0].text[:200]!r}" if stderr else ""
    texts = _output_texts(nb) + [json.dumps(nb.metadata)]
    found = sorted({m for text in texts for m in PATH_MARKERS if m in DATA_URI.sub("", text)})
    assert not found, f"absolute paths in the outputs or metadata: {found}"
    assert not [t for t in texts if "\r" in t], "an output holds carriage returns (a progress bar)"


@pytest.mark.parametrize("path", _chapter_notebooks(), ids=lambda p: p.stem)
def test_committed_figures_have_captions(path):
    """Every figure is shown by plotting.save_figure(..., caption=...): no bare image outputs."""
    nb = nbformat.read(path, as_version=4)
    bare = sum(1 for c in nb.cells for o in c.get("outputs", []) if any(m.startswith("image/") for m in o.get("data", {})))
    assert not bare, f"{bare} figure(s) without a caption: pass caption= to plotting.save_figure"
    captions = [m.group(1) for text in _output_texts(nb) for m in FIGURE.finditer(text)]
    assert all(c.strip() for c in captions), "an empty figure caption"


# --------------------------------------------------------------------------- built HTML

def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def _dump_dom(chromium: str, html: Path, profile: Path) -> str:
    """Rendered DOM of a page at a 1280 px wide window; the virtual-time budget lets MathJax finish typesetting."""
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000",
           "--window-size=1280,2000", "--dump-dom", html.as_uri()]
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
        assert not STDERR_CLASS.search(raw), \
            f"{entry}: {len(STDERR_CLASS.findall(raw))} stderr block(s) (re-run scripts/execute_notebooks.py)"
        visible = DATA_URI.sub("", raw)
        assert not [m for m in PATH_MARKERS if m in visible], f"{entry}: the page shows absolute machine paths"
        probe = page.with_name(f"{page.stem}.probe.html")
        probe.write_text(raw.replace("</body>", f"{OVERFLOW_PROBE}</body>"))
        dom = _dump_dom(chromium, probe, tmp_path / f"profile{i}")
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
                captions = FIGURE.findall(article)
                assert captions, f"{entry}: notebook chapter has no captioned figure"
                assert article.count("<img") == len(captions), f"{entry}: a figure without a caption"
            assert 'data-overflowing-code="0"' in dom, f"{entry}: a code cell scrolls sideways (narrowgate.css wraps them)"
            images = sum((page.parent / src).stat().st_size for src in re.findall(r'<img[^>]*\bsrc="(?!data:)([^"]+)"', raw))
            weight = len(raw.encode()) + images
            assert weight < MAX_PAGE_BYTES, f"{entry}: {weight / 1e6:.2f} MB, over {MAX_PAGE_BYTES / 1e6:.1f} MB"
            assert not PARAMETER_CELL.search(article), \
                f"{entry}: a parameters cell is visible (run scripts/execute_notebooks.py, it tags them remove-cell)"
