"""Classification from free-form completions: the first class name the model writes."""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np


def _pattern(name: str) -> re.Pattern[str]:
    words = name.strip().lower().split()
    if not words:
        raise ValueError("class names must be non-empty strings.")
    return re.compile(r"(?<!\w)" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)")


def first_class_mention(text: str, class_names: Sequence[str]) -> str | None:
    """The class name occurring first in ``text`` (case-insensitive, whole words), or None.

    When several names start at the same place the longest wins ("sea lion" over "sea").
    """
    lowered = text.lower()
    best: tuple[int, int, str] | None = None
    for name in class_names:
        match = _pattern(name).search(lowered)
        if match is not None:
            key = (match.start(), -(match.end() - match.start()), name)
            best = key if best is None or key < best else best
    return None if best is None else best[2]


def classification_accuracy(generated_texts: Sequence[str], true_classes: Sequence[str],
                            class_names: Sequence[str]) -> float:
    """Fraction of completions whose first mentioned class (see :func:`first_class_mention`)
    equals the true class (compared case-insensitively). No mention counts as wrong."""
    if len(generated_texts) == 0:
        raise ValueError("generated_texts is empty; pass at least one completion.")
    if len(generated_texts) != len(true_classes):
        raise ValueError(f"{len(generated_texts)} completions but {len(true_classes)} true classes.")
    if len(class_names) == 0:
        raise ValueError("class_names is empty.")
    known = {c.strip().lower() for c in class_names}
    unknown = {t for t in true_classes if t.strip().lower() not in known}
    if unknown:
        raise ValueError(f"true classes not in class_names: {sorted(unknown)[:5]}.")
    hits = [
        (first_class_mention(text, class_names) or "").strip().lower() == truth.strip().lower()
        for text, truth in zip(generated_texts, true_classes)
    ]
    return float(np.mean(hits))
