"""Tiny dataset folders in the official layouts, written by the tests (no downloads)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from PIL import Image

from narrowgate_utils.data.imagenet import shipped_wnids


def write_image(path: Path, color: tuple[int, int, int], mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).convert(mode).save(path)


def write_vqav2(root: Path, n_answers: int = 10, subtype: str = "val2014") -> None:
    """Five questions about three COCO images; question q's answers are "ans{q}-{a}"."""
    image_ids = [262148, 393225, 262148, 458752, 393225]
    questions = [{"image_id": im, "question": f"Question {q}?", "question_id": 1000 + q} for q, im in enumerate(image_ids)]
    annotations = []
    for q, im in enumerate(image_ids):
        answers = [{"answer": f"ans{q}-{a}", "answer_confidence": "yes", "answer_id": a + 1} for a in range(n_answers)]
        annotations.append({"question_id": 1000 + q, "image_id": im, "answers": answers[::-1],  # out of id order
                            "answer_type": "other" if q else "yes/no", "multiple_choice_answer": f"ans{q}-0",
                            "question_type": "what"})
    root.mkdir(parents=True, exist_ok=True)
    (root / f"v2_OpenEnded_mscoco_{subtype}_questions.json").write_text(json.dumps({"questions": questions}))
    (root / f"v2_mscoco_{subtype}_annotations.json").write_text(json.dumps({"annotations": annotations[::-1]}))
    for im in set(image_ids):
        write_image(root / subtype / f"COCO_{subtype}_{im:012d}.jpg", (im % 256, 0, 0))


#: conversations of the LLaVA-Instruct fixture: (id, image, [(human, gpt), ...])
LLAVA_CONVERSATIONS = [
    ("000000000009", "000000000009.jpg", [("<image>\nWhat color is the bus?", "The bus is red."),
                                          ("Is it moving?", "No, it is parked.")]),
    ("000000000025", "000000000025.jpg", [("Describe the image.\n<image>", "A giraffe eats leaves.")]),
    ("000000000030", "000000000030.jpg", [("<image>\nHow many cups are there?", "There are two cups.")]),
    ("000000000009b", "000000000009.jpg", [("<image>\nWhere is the bus?", "On a city street.")]),
]


def write_llava_instruct(root: Path) -> None:
    entries = [{"id": uid, "image": image,
                "conversations": [turn for human, gpt in pairs
                                  for turn in ({"from": "human", "value": human}, {"from": "gpt", "value": gpt})]}
               for uid, image, pairs in LLAVA_CONVERSATIONS]
    root.mkdir(parents=True, exist_ok=True)
    (root / "llava_instruct_150k.json").write_text(json.dumps(entries))
    for k, image in enumerate(sorted({image for _, image, _ in LLAVA_CONVERSATIONS})):
        write_image(root / "train2017" / image, (0, 40 * k, 0))


def write_imagenet_wnid_folders(root: Path, per_class: int = 2) -> None:
    """The official train layout, wnid folders only (no mapping file), for every shipped class.

    Pixel (k, j, 100) marks image j of the k-th class of ``shipped_wnids()``.
    """
    for k, wnid in enumerate(shipped_wnids().values()):
        for j in range(per_class):
            write_image(root / "train" / wnid / f"{wnid}_{j}.JPEG", (k, j, 100))


#: Karpathy split of each image of the Flickr30k CSV fixture (file name 2000+k.jpg)
FLICKR_CSV_SPLITS = ["train", "test", "val", "train", "test"]


def write_flickr30k_csv(root: Path) -> None:
    """The nlphuji/flickr30k layout: ``flickr_annotations_30k.csv`` + ``flickr30k-images/``."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "flickr_annotations_30k.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["raw", "sentids", "split", "filename", "img_id"])
        for k, split in enumerate(FLICKR_CSV_SPLITS):
            captions = [f'Image {k}, caption "{c}".' for c in range(5)]
            writer.writerow([json.dumps(captions), json.dumps(list(range(5 * k, 5 * k + 5))), split, f"{2000 + k}.jpg", k])
    for k in range(len(FLICKR_CSV_SPLITS)):
        write_image(root / "flickr30k-images" / f"{2000 + k}.jpg", (0, 30 * k, 0))


def write_coco_karpathy(root: Path) -> None:
    """``dataset_coco.json`` with three val2014 test images and one restval image (val2014 too)."""
    splits = ["test", "restval", "test", "test"]
    entries = [{"filepath": "val2014", "filename": f"COCO_val2014_{600 + k:012d}.jpg", "cocoid": 600 + k, "split": split,
                "sentences": [{"raw": f"coco caption {c} of {k}"} for c in range(5)]} for k, split in enumerate(splits)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_coco.json").write_text(json.dumps({"images": entries, "dataset": "coco"}))
    for k, entry in enumerate(entries):
        write_image(root / entry["filepath"] / entry["filename"], (0, 0, 50 * k))
