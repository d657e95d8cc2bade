"""MS-COCO captions on the Karpathy splits (the paper's COCO captioning benchmark, Table 1).

Expected layout::

    data_dir/
        dataset_coco.json                     # Karpathy splits (caption_datasets.zip)
        val2014/COCO_val2014_000000391895.jpg # images under <filepath>/<filename> of each entry
        train2014/...                         # (the Karpathy test split uses val2014 images only)

``dataset_coco.json`` comes from Karpathy's ``caption_datasets.zip``
(cs.stanford.edu/people/karpathy/deepimagesent); images from cocodataset.org (2014 train/val).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..datasets import malformed, open_rgb, read_json, seeded_subset
from .sample import Sample

#: Karpathy split names (COCO also has "restval"); "all" keeps every image
KARPATHY_SPLITS = ("train", "restval", "val", "test", "all")
_SPLIT_ALIASES = {"validation": "val"}
_HOW_JSON = "dataset_coco.json from Karpathy's caption_datasets.zip, cs.stanford.edu/people/karpathy/deepimagesent"
_HOW_IMAGES = "COCO 2014 train/val images from cocodataset.org, unzipped into data_dir"


def karpathy_split(split: str) -> str:
    """Normalise a split name ('validation' -> 'val') and check it exists in the Karpathy files."""
    split = _SPLIT_ALIASES.get(split, split)
    if split not in KARPATHY_SPLITS:
        raise ValueError(f"Unknown Karpathy split {split!r}; use one of {KARPATHY_SPLITS}.")
    return split


def read_karpathy(path: Path, split: str, how: str) -> list[dict[str, Any]]:
    """Entries of a Karpathy caption JSON in file order: ``{"filepath", "filename", "captions", "id"}``.

    Format: ``{"images": [{"filename", "split", "sentences": [{"raw"}, ...], "filepath"?, "cocoid"?, "imgid"?}]}``.
    """
    split = karpathy_split(split)
    data = read_json(path, "Karpathy caption file", how)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise malformed(path, "Karpathy caption file", 'expected an object with an "images" list', how)
    records = []
    for position, entry in enumerate(images):
        try:
            if split != "all" and entry["split"] != split:
                continue
            captions = tuple(str(sentence["raw"]).strip() for sentence in entry["sentences"])
            filename = str(entry["filename"])
        except (KeyError, TypeError) as error:
            raise malformed(path, "Karpathy caption file",
                            f'images[{position}] lacks "filename", "split" or "sentences"[i]["raw"] ({error!r})', how) from error
        image_id = entry.get("cocoid", entry.get("imgid", position))
        records.append({"filepath": str(entry.get("filepath", "")), "filename": filename, "captions": captions, "id": image_id})
    if not records:
        raise malformed(path, "Karpathy caption file", f"no image has split {split!r}", how)
    return records


def caption_samples(records: list[dict[str, Any]], image_root: Path, n: int | None, seed: int, dataset: str,
                    split: str, how_images: str) -> list[Sample]:
    """A seeded subset of caption records as samples (label -1: captioning data has no class)."""
    samples = []
    for index in seeded_subset(len(records), n, seed, f"{dataset} {split}"):
        record = records[index]
        path = image_root / record["filepath"] / record["filename"]
        samples.append(Sample(
            uid=Path(record["filename"]).stem, image=open_rgb(path, how_images), label=-1, class_name="",
            captions=record["captions"],
            meta={"dataset": dataset, "split": split, "image_id": record["id"], "path": str(path)},
        ))
    return samples


def load_coco_karpathy(root: Path, split: str = "test", n: int | None = None, seed: int = 42) -> list[Sample]:
    """COCO images of one Karpathy split (test: 5000 images, 5+ captions each)."""
    root = Path(root)
    records = read_karpathy(root / "dataset_coco.json", split, _HOW_JSON)
    return caption_samples(records, root, n, seed, "coco_karpathy", karpathy_split(split), _HOW_IMAGES)
