"""The paper's ImageNet subset: 100 animal classes x 100 images (Supp. Sec. 8.2).

Expected layout (the standard ImageNet class-folder layout; recipe: data/imagenet.md)::

    data_dir/
        train/n01440764/*.JPEG        # one folder per WordNet id (wnid); `split` names the folder
        val/n01440764/*.JPEG          # (the flat official val folder must first be sorted into wnid folders)
        LOC_synset_mapping.txt        # optional: "n01440764 tench, Tinca tinca" (Kaggle ILSVRC archive)
          or class_index.json         # optional: {"n01440764": "tench", ...} (or Keras' {"0": ["n01440764", "tench"]})

Only the class folders of the classes used are needed: the wnid of every class of both class
sets ships in ``narrowgate_utils/resources/imagenet_wnids.tsv`` (from the ILSVRC-2012 synset
list), so the official train archive extracted into wnid folders is enough (the devkit is not
read), and so is the Kaggle archive's ``ILSVRC/Data/CLS-LOC`` folder as data_dir.

When data_dir holds a mapping file, it is used instead (e.g. for a re-indexed copy). The paper
names classes by WordNet synset (``staffordshire_bullterrier.n.01``); through a mapping file a
synset is matched to a wnid by its lemma: the part before ``.n.NN`` must equal the *first* name
of the wnid's mapping entry, lowercased with spaces turned into underscores ("Staffordshire
bullterrier, Staffordshire bull terrier" -> ``staffordshire_bullterrier``). The sense number is
not checked (the mapping files do not carry it); a lemma shared by two wnids is an error.
Prompts show the lemma with spaces ("staffordshire bullterrier").
"""
from __future__ import annotations

import os
import warnings
import zlib
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from ..datasets import malformed, open_rgb, read_json, seeded_subset
from .sample import Sample

#: images drawn per class (paper Supp. Sec. 8.2: 100 classes x 100 images = 10,000)
PAPER_IMAGES_PER_CLASS = 100
CLASS_SETS = ("paper", "patching")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
#: package resource: WordNet name<TAB>wnid<TAB>ILSVRC-2012 entry, for every class of both class sets
WNID_RESOURCE = "imagenet_wnids.tsv"
_HOW = ("ImageNet ILSVRC-2012 from image-net.org or the Kaggle 'imagenet-object-localization-challenge' archive, "
        "which ships LOC_synset_mapping.txt")


def _resource_lines(name: str) -> list[str]:
    text = resources.files("narrowgate_utils").joinpath("resources", name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


@lru_cache(maxsize=1)
def imagenet_patching_pairs() -> tuple[tuple[str, str], ...]:
    """The ten (base, target) WordNet-name pairs of the patching experiment (paper Sec. 4.4)."""
    pairs = []
    for line in _resource_lines("imagenet_patching_pairs.txt"):
        base, target = line.split("\t")
        pairs.append((base, target))
    return tuple(pairs)


@lru_cache(maxsize=2)
def imagenet_classes(classes: str | None = None) -> tuple[str, ...]:
    """WordNet names in label order: the 100 animal classes ("paper", default) or the 20
    patching classes ("patching", in pair order: base 1, target 1, base 2, ...)."""
    if classes is None or classes == "paper":
        return tuple(_resource_lines("imagenet_animal_classes.txt"))
    if classes == "patching":
        return tuple(name for pair in imagenet_patching_pairs() for name in pair)
    raise ValueError(f"Unknown ImageNet class set {classes!r}; use one of {CLASS_SETS} (or None for 'paper').")


@lru_cache(maxsize=1)
def shipped_wnids() -> dict[str, str]:
    """WordNet name -> wnid of every class of both class sets (``resources/imagenet_wnids.tsv``)."""
    wnids = {}
    for line in _resource_lines(WNID_RESOURCE):
        name, wnid, _entry = line.split("\t")
        wnids[name] = wnid
    return wnids


def lemma(wordnet_name: str) -> str:
    """``staffordshire_bullterrier.n.01`` -> ``staffordshire_bullterrier``."""
    parts = wordnet_name.rsplit(".", 2)
    if len(parts) != 3 or parts[1] != "n" or not parts[2].isdigit():
        raise ValueError(f"{wordnet_name!r} is not a WordNet noun synset name like 'tench.n.01'.")
    return parts[0]


def display_name(wordnet_name: str) -> str:
    """The class name shown in prompts: ``staffordshire_bullterrier.n.01`` -> "staffordshire bullterrier"."""
    return lemma(wordnet_name).replace("_", " ")


def _normalise(name: str) -> str:
    return name.strip().lower().replace(" ", "_")


def read_wnid_names(root: Path) -> dict[str, str]:
    """wnid -> normalised first name, from ``LOC_synset_mapping.txt`` or ``class_index.json`` in ``root``."""
    mapping_txt, index_json = root / "LOC_synset_mapping.txt", root / "class_index.json"
    names: dict[str, str] = {}
    if mapping_txt.is_file():
        for number, line in enumerate(mapping_txt.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            wnid, _, rest = line.strip().partition(" ")
            if not (wnid.startswith("n") and wnid[1:].isdigit() and rest.strip()):
                raise malformed(mapping_txt, "wnid mapping", f"line {number} is {line!r}, expected 'n01440764 tench, Tinca tinca'", _HOW)
            names[wnid] = _normalise(rest.split(",")[0])
        return names
    if not index_json.is_file():
        raise ValueError(f"Missing wnid -> class-name mapping: expected {mapping_txt} or {index_json} ({_HOW}).")
    data = read_json(index_json, "ImageNet class index", _HOW)
    if not isinstance(data, dict) or not data:
        raise malformed(index_json, "ImageNet class index", 'expected a non-empty object {"n01440764": "tench", ...}', _HOW)
    for key, value in data.items():
        if isinstance(value, str):  # {wnid: name}
            wnid, name = key, value
        elif isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):  # {index: [wnid, name]}
            wnid, name = value
        else:
            raise malformed(index_json, "ImageNet class index", f"entry {key!r}: {value!r} is neither a name nor [wnid, name]", _HOW)
        names[wnid] = _normalise(name)
    return names


def resolve_wnids(wordnet_names: tuple[str, ...], wnid_names: dict[str, str], source: Path) -> list[str]:
    """The wnid of each WordNet name, matched by lemma (see the module docstring)."""
    by_lemma: dict[str, list[str]] = {}
    for wnid, name in wnid_names.items():
        by_lemma.setdefault(name, []).append(wnid)
    missing = [name for name in wordnet_names if lemma(name) not in by_lemma]
    if missing:
        raise ValueError(f"{len(missing)} class(es) not found in the wnid mapping under {source}: {missing[:5]} "
                         f"(the mapping must list all 1000 ILSVRC-2012 classes; {_HOW}).")
    ambiguous = {name: by_lemma[lemma(name)] for name in wordnet_names if len(by_lemma[lemma(name)]) > 1}
    if ambiguous:
        raise ValueError(f"Class names matching several wnids in the mapping under {source}: {ambiguous}.")
    return [by_lemma[lemma(name)][0] for name in wordnet_names]


def class_wnids(wordnet_names: tuple[str, ...], root: Path) -> list[str]:
    """The wnid of each class: from a mapping file in ``root`` when there is one, else shipped."""
    if (root / "LOC_synset_mapping.txt").is_file() or (root / "class_index.json").is_file():
        return resolve_wnids(wordnet_names, read_wnid_names(root), root)
    shipped = shipped_wnids()
    return [shipped[name] for name in wordnet_names]


def _class_files(folder: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(folder)
                  if entry.is_file() and entry.name.lower().endswith(IMAGE_SUFFIXES))


def load_imagenet(root: Path, split: str = "train", n: int | None = None, seed: int = 42, classes: str | None = None,
                  per_class: int = PAPER_IMAGES_PER_CLASS) -> list[Sample]:
    """``per_class`` images of each class (seeded per class, so a class gets the same images in
    every class set), then ``n`` of those; labels index :func:`imagenet_classes`."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}.")
    root = Path(root)
    wordnet_names = imagenet_classes(classes)
    wnids = class_wnids(wordnet_names, root)
    split_dir = root / split
    if not split_dir.is_dir():
        available = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise ValueError(f"Missing ImageNet split folder: expected {split_dir} with one sub-folder per wnid "
                         f"(found folders {available}; pass split=<one of them>). The wnids come from "
                         f"narrowgate_utils/resources/{WNID_RESOURCE}, or from a LOC_synset_mapping.txt or "
                         f"class_index.json in {root} when present ({_HOW}; data/fetch_imagenet.sh extracts them).")
    missing = [wnid for wnid in wnids if not (split_dir / wnid).is_dir()]
    if missing:
        raise ValueError(f"{len(missing)} class folder(s) missing under {split_dir}, e.g. {split_dir / missing[0]} "
                         f"(needed wnids: {missing[:5]}; data/fetch_imagenet.sh extracts exactly the needed ones; {_HOW}).")
    items: list[tuple[int, str, str]] = []  # (label, wnid, file name)
    short: dict[str, int] = {}
    for label, (name, wnid) in enumerate(zip(wordnet_names, wnids)):
        files = _class_files(split_dir / wnid)
        if not files:
            raise ValueError(f"No images (*.JPEG/*.jpg/*.png) in {split_dir / wnid} for class {name} ({_HOW}).")
        if len(files) < per_class:
            short[name] = len(files)
            chosen = range(len(files))
        else:
            rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
            chosen = np.sort(rng.choice(len(files), size=per_class, replace=False))
        items.extend((label, wnid, files[i]) for i in chosen)
    if short:
        warnings.warn(f"{len(short)} ImageNet class(es) in {split_dir} have fewer than {per_class} images; using all of "
                      f"them: {dict(list(short.items())[:5])}.", stacklevel=2)
    samples = []
    for index in seeded_subset(len(items), n, seed, f"ImageNet {split}"):
        label, wnid, file_name = items[index]
        path = split_dir / wnid / file_name
        samples.append(Sample(
            uid=f"{wnid}/{Path(file_name).stem}", image=open_rgb(path, _HOW), label=label,
            class_name=display_name(wordnet_names[label]),
            meta={"dataset": "imagenet", "split": split, "wnid": wnid, "wordnet_name": wordnet_names[label], "path": str(path)},
        ))
    return samples
