"""Datasets as lists of family-agnostic :class:`Sample` objects (toy world and real loaders)."""
from __future__ import annotations

from .sample import N_VQA_ANSWERS, Sample, VQAItem
from .toy import (
    CAPTION_PROMPT,
    CLASS_PROMPT,
    TOY_CLASSES,
    TOY_PATCHING_PAIRS,
    TOY_SPLITS,
    VQA_PROMPT,
    toy_dataset,
)

__all__ = [
    "CAPTION_PROMPT",
    "CLASS_PROMPT",
    "N_VQA_ANSWERS",
    "Sample",
    "TOY_CLASSES",
    "TOY_PATCHING_PAIRS",
    "TOY_SPLITS",
    "VQAItem",
    "VQA_PROMPT",
    "toy_dataset",
]
