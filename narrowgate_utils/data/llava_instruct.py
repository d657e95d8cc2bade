"""LLaVA-Instruct-150K: the instruction half of the masked fine-tuning mix (with VQAv2 train).

Expected layout (``llava_instruct_150k.json`` from the ``liuhaotian/LLaVA-Instruct-150K``
dataset card; images are COCO 2017 train images from cocodataset.org)::

    data_dir/
        llava_instruct_150k.json     # [{"id", "image": "000000033471.jpg",
                                     #   "conversations": [{"from": "human", "value": "<image>\\nWhat ...?"},
                                     #                     {"from": "gpt", "value": "The bus ..."}, ...]}]
        train2017/000000033471.jpg

Each conversation becomes one :class:`Sample` whose ``instructions`` are its (human, gpt) turn
pairs with the ``<image>`` placeholder removed; the image goes first, so the prompt is the
instruction text alone (the adapter places the image).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..datasets import malformed, open_rgb, read_json, seeded_subset
from .sample import Sample

INSTRUCT_FILE = "llava_instruct_150k.json"
IMAGE_FOLDER = "train2017"
IMAGE_PLACEHOLDER = "<image>"
_HOW_JSON = f"download {INSTRUCT_FILE} from the liuhaotian/LLaVA-Instruct-150K dataset on the Hugging Face Hub"
_HOW_IMAGES = "COCO 2017 train images from cocodataset.org, unzipped into data_dir/train2017"


def _turn_pairs(entry: dict[str, Any], position: int, path: Path) -> tuple[tuple[str, str], ...]:
    """(instruction, response) pairs of one conversation: human turns followed by gpt turns."""
    try:
        turns = [(str(turn["from"]), str(turn["value"])) for turn in entry["conversations"]]
    except (KeyError, TypeError) as error:
        raise malformed(path, "LLaVA-Instruct file", f'entry {position} lacks "conversations"[i]["from"/"value"] '
                        f"({error!r})", _HOW_JSON) from error
    if not turns or len(turns) % 2 or any(who != expected for (who, _), expected
                                           in zip(turns, ("human", "gpt") * len(turns))):
        raise malformed(path, "LLaVA-Instruct file", f"entry {position} does not alternate human/gpt turns "
                        f"(got {[who for who, _ in turns]})", _HOW_JSON)
    pairs = []
    for (_, instruction), (_, response) in zip(turns[0::2], turns[1::2]):
        instruction = instruction.replace(IMAGE_PLACEHOLDER, "").strip()
        if not instruction or not response.strip():
            raise malformed(path, "LLaVA-Instruct file", f"entry {position} has an empty turn", _HOW_JSON)
        pairs.append((instruction, response.strip()))
    return tuple(pairs)


def load_llava_instruct(root: Path, split: str = "train", n: int | None = None, seed: int = 42) -> list[Sample]:
    """``n`` seeded conversations of LLaVA-Instruct-150K (in file order), each with its COCO image."""
    root = Path(root)
    if split != "train":
        raise ValueError(f"LLaVA-Instruct-150K has only a 'train' split, not {split!r}.")
    path = root / INSTRUCT_FILE
    entries = read_json(path, "LLaVA-Instruct file", _HOW_JSON)
    if not isinstance(entries, list) or not entries:
        raise malformed(path, "LLaVA-Instruct file", "expected a non-empty list of conversations", _HOW_JSON)
    samples = []
    for index in seeded_subset(len(entries), n, seed, "llava_instruct train"):
        entry = entries[index]
        if not isinstance(entry, dict) or "image" not in entry:
            raise malformed(path, "LLaVA-Instruct file", f'entry {index} lacks "image"', _HOW_JSON)
        image_path = root / IMAGE_FOLDER / str(entry["image"])
        samples.append(Sample(
            uid=str(entry.get("id", Path(str(entry["image"])).stem)), image=open_rgb(image_path, _HOW_IMAGES),
            label=-1, class_name="", instructions=_turn_pairs(entry, int(index), path),
            meta={"dataset": "llava_instruct", "split": split, "path": str(image_path)},
        ))
    return samples
