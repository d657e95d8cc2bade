"""Family x chapter tier: every chapter notebook runs on every family's stand-in at the paper's settings.

Each chapter is executed ONCE with papermill under ``-p preset paper``, with every stand-in
checkpoint (:mod:`narrowgate_utils.standin`) in one comma-separated ``model_id``, on dataset
folders in the official layouts with natural images of mixed sizes (:mod:`standin_fixtures`),
a few samples and small batches. The assertions read the CSVs the chapter saved: one complete
group of rows per family, every metric finite.

The stand-ins' weights are random, so only the code paths, token layouts and shapes are
tested, not the findings. Chapter 07 trains its own toy models (no checkpoint parameter) and
chapter 08 needs a native model with the toy world's image codebook
(``image_tokenizer.safetensors``) to turn generated codes back into pixels; no real
checkpoint ships one (:func:`test_chapter_08_needs_the_toy_codebook`).

Parameters beyond the preset are the sample counts and what those force: ``k`` below the
number of samples (03, 04, 06), ``min_cluster_size`` below it (01), one random draw (04), short
generations (04, 06), a one-step LoRA run on two samples per training dataset (06). Chapter 05
draws 4 of the 20 patching images, which holds exactly one (base, target) couple.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import pandas as pd
import papermill
import pytest

import standin_fixtures
from narrowgate_utils.standin import STANDIN_NAMES, write_standin

ROOT = Path(__file__).resolve().parents[1]
KERNEL = "narrowgate"
#: what every chapter gets: the paper preset, a few samples, small batches, CPU in float32
COMMON = {"preset": "paper", "n_samples": 4, "batch_size": 2, "device": "cpu", "dtype": "float32"}
GENERATION = {"max_new_tokens_vqa": 2, "max_new_tokens_caption": 2, "max_new_tokens_class": 2}
#: chapter notebook -> (dataset folders it reads, extra parameters,
#:                     {csv: (columns that identify a row within a model, metric columns that must be finite)})
CHAPTERS: dict[str, tuple[dict[str, str], dict, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]]] = {
    "01_modality_gap": ({"data_dir": "flickr30k"}, {"n_samples": 9, "min_cluster_size": 2},
                        {"modality_gap.csv": (("layer",), ("median", "q1", "q3")),
                         "homogeneity.csv": (("layer",), ("homogeneity",))}),
    # the span's token groups differ by family (row separators, Emu3's size prefix): only layers must match
    "02_cross_modal_attention": ({"data_dir": "imagenet"}, {}, {"attention_shares.csv": (("layer",), ("share",))}),
    "03_neighborhood_overlap": ({"data_dir": "imagenet"}, {"k": 2},
                                {"neighborhood_overlap.csv": (("layer", "token"), ("chi",))}),
    "04_knockout": ({"data_dir": "vqav2"}, {"k": 2, "random_repeats": 1, **GENERATION},
                    {"knockout_table.csv": (("ablation", "mode"), ("vqa_accuracy",))}),
    "05_steering": ({"data_dir": "imagenet"}, {},
                    {"steering.csv": (("site", "position", "layer"), ("similarity", "baseline", "switch_rate"))}),
    "06_masked_finetuning": ({"data_dir": "vqav2", "train_data_dir": "llava_instruct+vqav2"},
                             {"n_train": 2, "max_steps": 1, "n_samples": 2, "k": 1, **GENERATION},
                             {"before_after.csv": (("ablation", "mode", "variant"), ("vqa_accuracy",)),
                              "training_curves.csv": (("variant", "step"), ("loss",))}),
}
#: chapters whose notebook reads another chapter's saved results (04 ablates 02's strongly attended tokens)
NEEDS = {"04_knockout": "02_cross_modal_attention"}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


class Tier:
    """The stand-ins, the dataset folders and one shared output folder; runs each chapter once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.models = ",".join(str(write_standin(name, root / "models" / name)) for name in STANDIN_NAMES)
        self.data = root / "data"
        for dataset in ("imagenet", "flickr30k", "vqav2", "llava_instruct"):
            getattr(standin_fixtures, dataset)(self.data / dataset)
        self.output = root / "results"
        self.seconds: dict[str, float] = {}

    def folder(self, value: str) -> str:
        """A "+"-joined list of fixture dataset names as their folders."""
        return "+".join(str(self.data / name) for name in value.split("+"))

    def run(self, chapter: str) -> Path:
        """Execute ``chapter`` (and the chapter it reads first), once; return its results folder."""
        if chapter in NEEDS:
            self.run(NEEDS[chapter])
        if chapter not in self.seconds:
            folders, extra, _ = CHAPTERS[chapter]
            parameters = {**COMMON, "model_id": self.models, "output_dir": str(self.output),
                          **{name: self.folder(value) for name, value in folders.items()}, **extra}
            start = time.perf_counter()
            papermill.execute_notebook(str(ROOT / "notebooks" / f"{chapter}.ipynb"), str(self.root / f"{chapter}.ipynb"),
                                       parameters=parameters, kernel_name=KERNEL, cwd=str(ROOT), progress_bar=False)
            self.seconds[chapter] = time.perf_counter() - start
        return self.output / chapter


@pytest.fixture(scope="module")
def tier(tmp_path_factory) -> Tier:
    """Stand-ins and fixtures written once; the activation and toy caches point into the temporary folder."""
    root = tmp_path_factory.mktemp("family_chapters")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NARROWGATE_CACHE", str(root / "cache"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("MPLBACKEND", "Agg")
        built = Tier(root)
        yield built
    print("\nchapter runtimes: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in built.seconds.items()))


@pytest.mark.parametrize("chapter", list(CHAPTERS))
def test_chapter_runs_on_every_family(tier, chapter):
    results = tier.run(chapter)
    for csv, (keys, metrics) in CHAPTERS[chapter][2].items():
        table = pd.read_csv(results / csv)
        groups = {model: set(map(tuple, part[list(keys)].to_numpy().tolist())) for model, part in table.groupby("model")}
        assert sorted(groups) == sorted(STANDIN_NAMES), f"{csv}: one group of rows per stand-in"
        expected = groups[STANDIN_NAMES[0]]
        incomplete = {model: sorted(expected ^ rows) for model, rows in groups.items() if rows != expected}
        assert not incomplete, f"{csv}: rows {keys} differ from {STANDIN_NAMES[0]}'s: {incomplete}"
        for metric in metrics:
            bad = table.loc[~table[metric].astype(float).map(math.isfinite), "model"].unique()
            assert len(bad) == 0, f"{csv}: non-finite {metric} for {list(bad)}"


@pytest.mark.parametrize("name", ["chameleon", "emu3"])
def test_chapter_08_needs_the_toy_codebook(tmp_path, name):
    """The native families' stand-ins (like their real checkpoints) hold no toy image codebook,
    which chapter 08 decodes generated codes with: it is toy-world only and refuses them clearly."""
    from narrowgate_utils.toy.image_tokenizer import load_image_tokenizer

    directory = write_standin(name, tmp_path / name)
    with pytest.raises(ValueError, match="not a toy native model directory"):
        load_image_tokenizer(directory)
