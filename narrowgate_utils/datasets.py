"""One entry point for every dataset the notebooks use: :func:`load_samples`.

Datasets (all return :class:`~narrowgate_utils.data.sample.Sample` lists):

* ``toy`` -- the procedurally rendered toy world (:mod:`narrowgate_utils.data.toy`).
* ``imagenet`` -- the paper's 100 animal classes, 100 images per class (Supp. Sec. 8.2);
  ``classes="patching"`` gives the 20 classes of the ten activation-patching pairs (Sec. 4.4).
* ``flickr30k`` -- Flickr30k with its five captions per image (Karpathy splits; Sec. 4.1, Table 1).
* ``coco_karpathy`` -- MS-COCO Karpathy splits with reference captions (Table 1).
* ``vqav2`` -- VQAv2 validation, one sample per question with ten answers (Table 1).
* ``llava_instruct`` -- LLaVA-Instruct-150K conversations (fine-tuning only, with VQAv2 train).

:func:`load_training_mix` concatenates several datasets ("llava_instruct+vqav2"), the paper's
fine-tuning mix of instruction and VQA samples.

Real datasets are read from local folders (``data_dir``, by default ``data/downloads/<dataset>/``
of the repository or ``$NARROWGATE_DATA/<dataset>/``; ``data/README.md`` has a fetch recipe per
dataset); nothing is downloaded. Subsets are
chosen on metadata first (numpy ``default_rng(seed)``), so only the selected images are opened,
and are returned in dataset order. The paper evaluates on 2000 items drawn with seed 42.
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .data.sample import Sample

#: dataset -> default split (ImageNet: the 100 images per class need the train folder, since
#: the validation set has only 50 per class)
DEFAULT_SPLITS = {"toy": "test", "imagenet": "train", "flickr30k": "test", "coco_karpathy": "test", "vqav2": "val",
                  "llava_instruct": "train"}
DATASETS = tuple(DEFAULT_SPLITS)
#: the number of evaluation items and the seed of the paper's VQAv2 / captioning evaluation
PAPER_N_EVAL, PAPER_SEED = 2000, 42
#: dataset -> module of narrowgate_utils.data whose docstring documents the expected folder layout
_MODULES = {"imagenet": "imagenet", "flickr30k": "flickr30k", "coco_karpathy": "coco", "vqav2": "vqav2",
            "llava_instruct": "llava_instruct"}
#: environment variable naming a folder with one sub-folder per dataset (default: <repo>/data/downloads)
DATA_ENV = "NARROWGATE_DATA"


def load_samples(dataset: str = "toy", split: str | None = None, n: int | None = None, seed: int = PAPER_SEED,
                 data_dir: str | Path | None = None, classes: str | None = None) -> list[Sample]:
    """Load ``n`` samples of ``dataset``/``split`` (all when ``n`` is None), seeded by ``seed``.

    ``split`` defaults to :data:`DEFAULT_SPLITS` (the split the paper uses). ``data_dir``
    defaults to :func:`default_data_dir` (unused for ``toy``). ``classes`` applies to ``imagenet`` only:
    None/"paper" for the 100 animal classes, "patching" for the 20 classes of the patching pairs.
    Images of the selected samples are decoded eagerly (the full 10,000-image ImageNet subset
    takes several GB of RAM; pass ``n`` to bound it).
    """
    _check_dataset(dataset)
    split = DEFAULT_SPLITS[dataset] if split is None else split
    if n is not None and int(n) < 0:
        raise ValueError(f"n must be >= 0 or None (all samples), got {n}.")
    if classes is not None and dataset != "imagenet":
        raise ValueError(f"classes={classes!r} applies only to dataset='imagenet', not {dataset!r}; pass classes=None.")
    if dataset == "toy":
        from .data.toy import toy_dataset
        return toy_dataset(split, n, seed)
    if data_dir is None:
        data_dir = default_data_dir(dataset)
        if not data_dir.is_dir():
            raise ValueError(f"dataset={dataset!r} is read from local files and its default folder {data_dir} does not "
                             f"exist: fetch it there with data/fetch_{dataset}.sh (data/README.md; ${DATA_ENV} moves "
                             f"the download area), or pass data_dir=<folder with the {dataset} files> (layout: the "
                             f"docstring of narrowgate_utils.data.{_MODULES[dataset]}).")
    root = require_dir(Path(data_dir), f"the {dataset} data folder", "pass an existing folder as data_dir")
    if dataset == "imagenet":
        from .data.imagenet import load_imagenet
        return load_imagenet(root, split=split, n=n, seed=seed, classes=classes)
    if dataset == "flickr30k":
        from .data.flickr30k import load_flickr30k
        return load_flickr30k(root, split=split, n=n, seed=seed)
    if dataset == "coco_karpathy":
        from .data.coco import load_coco_karpathy
        return load_coco_karpathy(root, split=split, n=n, seed=seed)
    if dataset == "llava_instruct":
        from .data.llava_instruct import load_llava_instruct
        return load_llava_instruct(root, split=split, n=n, seed=seed)
    from .data.vqav2 import load_vqav2
    return load_vqav2(root, split=split, n=n, seed=seed)


def load_training_mix(datasets: str | Sequence[str], split: str | None = None, n: int | None = None,
                      seed: int = PAPER_SEED, data_dir: str | Path | Sequence | Mapping | None = None) -> list[Sample]:
    """Samples of one or more datasets, concatenated (``n`` and ``split`` apply to each).

    ``datasets`` is a name, a "+"-joined string ("llava_instruct+vqav2", the paper's fine-tuning
    mix) or a list. ``data_dir`` is one folder (one real dataset), a list/"+"-joined
    string in the order of ``datasets``, a {dataset: folder} mapping, or None (each dataset's
    :func:`default_data_dir`). ``split=None`` means ``train`` for every dataset.
    """
    names = [d.strip() for d in (datasets.split("+") if isinstance(datasets, str) else datasets)]
    if not names or any(not name for name in names) or len(set(names)) != len(names):
        raise ValueError(f"datasets={datasets!r}: give distinct dataset names, e.g. 'llava_instruct+vqav2'.")
    for name in names:
        _check_dataset(name)
    real = [name for name in names if name != "toy"]
    if isinstance(data_dir, Mapping):
        missing = [name for name in real if name not in data_dir]
        if missing:
            raise ValueError(f"data_dir has no folder for {missing}; give one entry per dataset, e.g. "
                             f"{{'{missing[0]}': '/data/{missing[0]}'}}.")
        folders = {name: data_dir[name] for name in real}
    else:
        if data_dir is None:
            dirs = [None] * len(real)
        elif isinstance(data_dir, (str, Path)):
            dirs = str(data_dir).split("+") if len(real) > 1 else [data_dir]
        else:
            dirs = list(data_dir)
        if len(dirs) != len(real):
            raise ValueError(f"data_dir gives {len(dirs)} folder(s) for the {len(real)} datasets {real}: pass one each, "
                             "as a list or a '+'-joined string in the same order, or a {dataset: folder} mapping.")
        folders = dict(zip(real, dirs))
    samples: list[Sample] = []
    for name in names:
        samples += load_samples(name, split=split or "train", n=n, seed=seed, data_dir=folders.get(name))
    return samples


def default_data_dir(dataset: str) -> Path:
    """The folder read when ``data_dir`` is None: ``$NARROWGATE_DATA/<dataset>`` if that variable
    is set, else ``data/downloads/<dataset>`` of the repository (where the data/ recipes fetch to)."""
    _check_dataset(dataset)
    if dataset == "toy":
        raise ValueError("The toy world is generated, not read from files: it has no data folder.")
    base = os.environ.get(DATA_ENV)
    return Path(base).expanduser() / dataset if base else Path(__file__).resolve().parents[1] / "data" / "downloads" / dataset


def patching_pairs(dataset: str = "toy") -> list[tuple[str, str]]:
    """The (base, target) class pairs of the activation-patching experiment (paper Sec. 4.4).

    Names are the ``Sample.class_name`` values of that dataset (ImageNet: "american alligator").
    """
    _check_dataset(dataset)
    if dataset == "toy":
        from .data.toy import TOY_PATCHING_PAIRS
        return [tuple(pair) for pair in TOY_PATCHING_PAIRS]
    if dataset == "imagenet":
        from .data.imagenet import display_name, imagenet_patching_pairs
        return [(display_name(base), display_name(target)) for base, target in imagenet_patching_pairs()]
    raise ValueError(f"The patching experiment uses class labels; dataset {dataset!r} has none. Use 'toy' or 'imagenet'.")


def dataset_classes(dataset: str = "toy", classes: str | None = None) -> list[str]:
    """The class names (``Sample.class_name``) in label order, e.g. for classification scoring."""
    _check_dataset(dataset)
    if dataset == "toy":
        if classes is not None:
            raise ValueError(f"classes={classes!r} applies only to dataset='imagenet'; pass classes=None.")
        from .data.toy import TOY_CLASSES
        return list(TOY_CLASSES)
    if dataset == "imagenet":
        from .data.imagenet import display_name, imagenet_classes
        return [display_name(name) for name in imagenet_classes(classes)]
    raise ValueError(f"Dataset {dataset!r} has no class labels; class names exist for 'toy' and 'imagenet'.")



def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"Unknown dataset {dataset!r}; supported datasets: {', '.join(DATASETS)}.")


# ---------------------------------------------------------------- helpers shared by the loaders

def seeded_subset(n_total: int, n: int | None, seed: int, what: str) -> np.ndarray:
    """Sorted indices of ``n`` of ``n_total`` items drawn without replacement with ``default_rng(seed)``.

    ``n=None`` keeps everything; asking for more than ``n_total`` warns and keeps everything.
    """
    if n is None or n >= n_total:
        if n is not None and n > n_total:
            warnings.warn(f"{what}: asked for n={n} but only {n_total} are available; using all {n_total}.", stacklevel=3)
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, size=int(n), replace=False))


def require_file(path: Path, what: str, how: str) -> Path:
    """``path`` if it is a file, else a ValueError naming the expected file and how to obtain it."""
    if not path.is_file():
        raise ValueError(f"Missing {what}: expected {path} ({how}).")
    return path


def require_dir(path: Path, what: str, how: str) -> Path:
    """``path`` if it is a folder, else a ValueError naming the expected folder and how to obtain it."""
    if not path.is_dir():
        raise ValueError(f"Missing {what}: expected a folder {path} ({how}).")
    return path


def read_json(path: Path, what: str, how: str) -> Any:
    """Parse a JSON file, turning a missing or malformed file into a ValueError that says what to fetch."""
    require_file(path, what, how)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"Malformed {what}: {path} is not valid JSON ({error}); re-download it ({how}).") from error


def malformed(path: Path, what: str, problem: str, how: str) -> ValueError:
    """The error for a file that parses but lacks the expected structure."""
    return ValueError(f"Malformed {what} {path}: {problem} ({how}).")


def open_rgb(path: Path, how: str) -> Image.Image:
    """Read one image fully into memory as RGB (the file is closed afterwards)."""
    require_file(path, "image", how)
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"Unreadable image {path} ({error}); re-download it ({how}).") from error
