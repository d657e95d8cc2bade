"""Flickr30k: 31,014 images with five captions each (paper Sec. 4.1, Supp. Sec. 8.1, Table 1).

Expected layout::

    data_dir/
        flickr30k-images/1000092795.jpg
        dataset_flickr30k.json       # Karpathy splits (preferred): train 29,000 / val 1,014 / test 1,000
          or results_20130124.token  # the original caption file: "1000092795.jpg#0<TAB>caption" (no splits)

Splits follow Karpathy ("train", "val", "test", or "all" for every image). The captioning
benchmark uses "test"; the modality-gap analysis draws from all images (``split="all"``).
Images come from the Flickr30k request form (shannon.cs.illinois.edu/DenotationGraph);
``dataset_flickr30k.json`` from Karpathy's ``caption_datasets.zip`` (cs.stanford.edu/people/karpathy/deepimagesent).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..datasets import malformed, require_dir
from .coco import caption_samples, karpathy_split, read_karpathy
from .sample import Sample

_HOW_JSON = "dataset_flickr30k.json from Karpathy's caption_datasets.zip, cs.stanford.edu/people/karpathy/deepimagesent"
_HOW_IMAGES = "flickr30k-images.tar.gz via the Flickr30k form at shannon.cs.illinois.edu/DenotationGraph"
_HOW_TOKEN = "results_20130124.token is in flickr30k.tar.gz from the Flickr30k form at shannon.cs.illinois.edu/DenotationGraph"


def read_token_file(path: Path) -> list[dict[str, Any]]:
    """Records from ``results_20130124.token`` (``<file>.jpg#<k>\\t<caption>``), in first-seen order."""
    captions: dict[str, list[str]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        filename, hash_, k = key.partition("#")
        if not (tab and hash_ and k.isdigit() and filename):
            raise malformed(path, "Flickr30k caption file", f"line {number} is {line[:80]!r}, expected '1000092795.jpg#0<TAB>caption'", _HOW_TOKEN)
        captions.setdefault(filename, []).append(caption.strip())
    return [{"filepath": "", "filename": name, "captions": tuple(caps), "id": Path(name).stem} for name, caps in captions.items()]


def load_flickr30k(root: Path, split: str = "test", n: int | None = None, seed: int = 42) -> list[Sample]:
    """Flickr30k images of one Karpathy split with their captions."""
    root = Path(root)
    split = karpathy_split(split)
    karpathy, token = root / "dataset_flickr30k.json", root / "results_20130124.token"
    if karpathy.is_file():
        records = read_karpathy(karpathy, split, _HOW_JSON)
    elif token.is_file():
        if split != "all":
            raise ValueError(f"{token} has no train/val/test splits: pass split='all', or add {karpathy} ({_HOW_JSON}).")
        records = read_token_file(token)
    else:
        raise ValueError(f"Missing Flickr30k captions: expected {karpathy} ({_HOW_JSON}) or {token} ({_HOW_TOKEN}).")
    images = require_dir(root / "flickr30k-images", "Flickr30k image folder", _HOW_IMAGES)
    return caption_samples(records, images, n, seed, "flickr30k", split, _HOW_IMAGES)
