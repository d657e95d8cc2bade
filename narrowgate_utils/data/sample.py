"""Family-agnostic samples: one image with its label, reference captions and VQA items.

The toy world and every real-dataset loader produce the same :class:`Sample`, so analysis
code never knows where an image came from.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

#: VQAv2 gives every question ten human answers (min(1, #matches/3) accuracy).
N_VQA_ANSWERS = 10


@dataclass(frozen=True)
class VQAItem:
    """One question with its ten annotator answers (VQAv2 format)."""

    question: str
    answers: tuple[str, ...]
    answer_type: str

    def __post_init__(self) -> None:
        if len(self.answers) != N_VQA_ANSWERS:
            raise ValueError(
                f"A VQA item needs {N_VQA_ANSWERS} answers (VQAv2 format), got {len(self.answers)} for {self.question!r}."
            )

    @property
    def majority_answer(self) -> str:
        """Most frequent answer; ties go to the answer given first."""
        counts: dict[str, int] = {}
        for answer in self.answers:
            counts[answer] = counts.get(answer, 0) + 1
        return max(counts, key=lambda a: (counts[a], -self.answers.index(a)))


@dataclass(frozen=True)
class Sample:
    """An RGB image with a class label, reference captions, VQA items and instruction turns.

    ``instructions`` holds (instruction, response) pairs of an image-grounded conversation
    (LLaVA-Instruct); datasets without one leave it empty.
    """

    uid: str
    image: Image.Image
    label: int
    class_name: str
    captions: tuple[str, ...] = ()
    vqa: tuple[VQAItem, ...] = ()
    instructions: tuple[tuple[str, str], ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.image, Image.Image) or self.image.mode != "RGB":
            raise ValueError(f"Sample {self.uid}: image must be an RGB PIL.Image (use image.convert('RGB')).")
