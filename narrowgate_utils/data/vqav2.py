"""VQAv2 (the paper's VQA benchmark, Table 1): one sample per question with its ten answers.

Expected layout (official files from visualqa.org/download.html; images from cocodataset.org)::

    data_dir/
        v2_OpenEnded_mscoco_val2014_questions.json   # {"questions": [{"image_id", "question", "question_id"}]}
        v2_mscoco_val2014_annotations.json           # {"annotations": [{"question_id", "answers": [10 x {"answer",
                                                     #   "answer_id"}], "answer_type", "multiple_choice_answer", ...}]}
        val2014/COCO_val2014_000000262148.jpg        # COCO_val2014_{image_id:012d}.jpg

The paper evaluates on 2000 validation questions drawn with seed 42.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from ..datasets import malformed, open_rgb, read_json, seeded_subset
from .sample import N_VQA_ANSWERS, Sample, VQAItem

#: VQAv2 splits with public answers, and the COCO image folder each uses
VQAV2_SPLITS = {"val": "val2014", "train": "train2014"}
_SPLIT_ALIASES = {"validation": "val"}
_HOW = "download the VQAv2 {what} from visualqa.org/download.html"
_HOW_IMAGES = "COCO 2014 {subtype} images from cocodataset.org, unzipped into data_dir"


def _entries(data: Any, key: str, path: Path, what: str, how: str) -> list[dict[str, Any]]:
    entries = data.get(key) if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise malformed(path, what, f"expected an object with a {key!r} list", how)
    return entries


def _vqa_item(question: dict[str, Any], annotation: dict[str, Any], path: Path, how: str) -> VQAItem:
    try:
        answers = sorted(annotation["answers"], key=lambda a: a["answer_id"])
        item = (str(question["question"]), tuple(str(a["answer"]) for a in answers), str(annotation["answer_type"]))
    except (KeyError, TypeError) as error:
        raise malformed(path, "VQAv2 annotations", f'question {question.get("question_id")} lacks "answers"[i]["answer"/'
                        f'"answer_id"] or "answer_type" ({error!r})', how) from error
    if len(item[1]) != N_VQA_ANSWERS:
        raise malformed(path, "VQAv2 annotations", f"question {question['question_id']} has {len(item[1])} answers, "
                        f"expected {N_VQA_ANSWERS}", how)
    return VQAItem(*item)


def load_vqav2(root: Path, split: str = "val", n: int | None = None, seed: int = 42) -> list[Sample]:
    """``n`` seeded questions of VQAv2 ``split`` (in question-file order), each with its image."""
    root, split = Path(root), _SPLIT_ALIASES.get(split, split)
    if split not in VQAV2_SPLITS:
        raise ValueError(f"Unknown VQAv2 split {split!r}; use one of {tuple(VQAV2_SPLITS)} (the paper uses 'val').")
    subtype = VQAV2_SPLITS[split]
    questions_path = root / f"v2_OpenEnded_mscoco_{subtype}_questions.json"
    annotations_path = root / f"v2_mscoco_{subtype}_annotations.json"
    how_q, how_a = _HOW.format(what=f"{split} questions"), _HOW.format(what=f"{split} annotations")
    how_images = _HOW_IMAGES.format(subtype=subtype)
    questions = _entries(read_json(questions_path, "VQAv2 questions", how_q), "questions", questions_path, "VQAv2 questions", how_q)
    annotations = _entries(read_json(annotations_path, "VQAv2 annotations", how_a), "annotations", annotations_path,
                           "VQAv2 annotations", how_a)
    try:
        by_question = {a["question_id"]: a for a in annotations}
    except (KeyError, TypeError) as error:
        raise malformed(annotations_path, "VQAv2 annotations", f'an annotation lacks "question_id" ({error!r})', how_a) from error
    images: dict[Path, Image.Image] = {}  # questions about one image share it
    samples = []
    for index in seeded_subset(len(questions), n, seed, f"VQAv2 {split}"):
        question = questions[index]
        try:
            question_id, image_id = question["question_id"], int(question["image_id"])
        except (KeyError, TypeError, ValueError) as error:
            raise malformed(questions_path, "VQAv2 questions", f'questions[{index}] lacks "question_id" or "image_id" ({error!r})',
                            how_q) from error
        if question_id not in by_question:
            raise malformed(annotations_path, "VQAv2 annotations", f"no annotation for question {question_id}", how_a)
        annotation = by_question[question_id]
        path = root / subtype / f"COCO_{subtype}_{image_id:012d}.jpg"
        if path not in images:
            images[path] = open_rgb(path, how_images)
        samples.append(Sample(
            uid=str(question_id), image=images[path], label=-1, class_name="",
            vqa=(_vqa_item(question, annotation, annotations_path, how_a),),
            meta={"dataset": "vqav2", "split": split, "question_id": question_id, "image_id": image_id,
                  "question_type": annotation.get("question_type", ""),
                  "multiple_choice_answer": annotation.get("multiple_choice_answer", ""), "path": str(path)},
        ))
    return samples
