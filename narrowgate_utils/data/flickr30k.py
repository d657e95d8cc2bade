"""Flickr30k: 31,014 images with five captions each (paper Sec. 4.1, Supp. Sec. 8.1, Table 1).

Expected layout (recipe: data/flickr30k.md), with one of three caption files::

    data_dir/
        flickr30k-images/1000092795.jpg
        dataset_flickr30k.json          # Karpathy splits: train 29,000 / val 1,014 / test 1,000
          or flickr_annotations_30k.csv # HF nlphuji/flickr30k (the authors' source): the same 31,014
                                        #   images and Karpathy splits; columns raw, sentids, split, filename, img_id
          or results_20130124.token     # the original caption file: "1000092795.jpg#0<TAB>caption" (no splits)

Splits follow Karpathy ("train", "val", "test", or "all" for every image regardless of split).
The authors read the HF ``nlphuji/flickr30k`` "test" split, which holds all 31,014 images, for
both the modality gap (10,000 pairs) and the captioning benchmark (2,000 items): ``split="all"``
reproduces them; ``split="test"`` is the 1,000-image Karpathy test split. Images come from the
Flickr30k request form (shannon.cs.illinois.edu/DenotationGraph) or the nlphuji/flickr30k dataset
on the Hugging Face Hub; ``dataset_flickr30k.json`` from Karpathy's ``caption_datasets.zip``
(cs.stanford.edu/people/karpathy/deepimagesent).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ..datasets import malformed, require_dir
from .coco import caption_samples, karpathy_split, read_karpathy
from .sample import Sample

_HOW_JSON = "dataset_flickr30k.json from Karpathy's caption_datasets.zip, cs.stanford.edu/people/karpathy/deepimagesent"
_HOW_IMAGES = ("flickr30k-images.zip from the nlphuji/flickr30k dataset on the Hugging Face Hub (data/fetch_flickr30k.sh), "
               "or flickr30k-images.tar.gz via the Flickr30k form at shannon.cs.illinois.edu/DenotationGraph")
_HOW_CSV = "flickr_annotations_30k.csv from the nlphuji/flickr30k dataset on the Hugging Face Hub (data/fetch_flickr30k.sh)"
_CSV_COLUMNS = ("raw", "split", "filename", "img_id")
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


def read_hf_csv(path: Path, split: str) -> list[dict[str, Any]]:
    """Records of split ``split`` ("all": every row) of ``flickr_annotations_30k.csv``, in file order.

    Each row is one image: ``raw`` is a JSON list of its captions, ``split`` its Karpathy split.
    """
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in _CSV_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise malformed(path, "Flickr30k caption CSV", f"no column(s) {missing} (header {reader.fieldnames})", _HOW_CSV)
        records = []
        for number, row in enumerate(reader, start=2):
            if split != "all" and row["split"] != split:
                continue
            try:
                captions = json.loads(row["raw"])
            except (json.JSONDecodeError, TypeError) as error:
                raise malformed(path, "Flickr30k caption CSV", f"line {number}: column raw is not a JSON list ({error})",
                                _HOW_CSV) from error
            if not isinstance(captions, list) or not captions:
                raise malformed(path, "Flickr30k caption CSV", f"line {number}: column raw holds no caption list", _HOW_CSV)
            image_id = row["img_id"]
            records.append({"filepath": "", "filename": row["filename"], "captions": tuple(str(c).strip() for c in captions),
                            "id": int(image_id) if image_id.isdigit() else image_id})
    if not records:
        raise malformed(path, "Flickr30k caption CSV", f"no image has split {split!r}", _HOW_CSV)
    return records


def load_flickr30k(root: Path, split: str = "test", n: int | None = None, seed: int = 42) -> list[Sample]:
    """Flickr30k images of one Karpathy split ("all": every image) with their captions.

    Captions come from the first caption file present, in the order of the module docstring.
    """
    root = Path(root)
    split = karpathy_split(split)
    karpathy, hf_csv, token = root / "dataset_flickr30k.json", root / "flickr_annotations_30k.csv", root / "results_20130124.token"
    if karpathy.is_file():
        records = read_karpathy(karpathy, split, _HOW_JSON)
    elif hf_csv.is_file():
        records = read_hf_csv(hf_csv, split)
    elif token.is_file():
        if split != "all":
            raise ValueError(f"{token} has no train/val/test splits: pass split='all', or add {karpathy} ({_HOW_JSON}).")
        records = read_token_file(token)
    else:
        raise ValueError(f"Missing Flickr30k captions: expected {karpathy} ({_HOW_JSON}), {hf_csv} ({_HOW_CSV}) "
                         f"or {token} ({_HOW_TOKEN}).")
    images = require_dir(root / "flickr30k-images", "Flickr30k image folder", _HOW_IMAGES)
    return caption_samples(records, images, n, seed, "flickr30k", split, _HOW_IMAGES)
