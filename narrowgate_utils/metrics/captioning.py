"""Captioning metric: CIDEr-D via pycocoevalcap, without Java (paper Supp. Sec. 8.3, Table 1).

pycocoevalcap's ``Cider`` scorer implements CIDEr-D (clipped term frequencies, Gaussian
length penalty with sigma=6, x10 scale), which is what COCO-style evaluations report. Its
usual PTB tokenizer needs Java; :func:`caption_tokenize` is a small Python stand-in
(lower-case, punctuation removed, hyphenated words and apostrophes kept inside words, so
"dog's" stays one token where PTB would split it). Like pycocoevalcap, no stemming is done.
"""
from __future__ import annotations

import re
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")


def caption_tokenize(text: str) -> str:
    """Lower-case ``text``, drop punctuation and return the tokens joined by single spaces."""
    if not isinstance(text, str):
        raise ValueError(f"captions must be strings, got {type(text).__name__}.")
    return " ".join(_WORD.findall(text.lower()))


def _as_items(predictions: Mapping[Hashable, str] | Sequence[str],
              references: Mapping[Hashable, Sequence[str]] | Sequence[Sequence[str]]
              ) -> tuple[list[Hashable], dict[Hashable, list[str]], dict[Hashable, list[str]]]:
    if isinstance(predictions, Mapping) != isinstance(references, Mapping):
        raise ValueError("predictions and references must both be dicts keyed by item id, or both be lists in the same order.")
    if isinstance(predictions, Mapping):
        if set(predictions) != set(references):
            missing = set(predictions) ^ set(references)
            raise ValueError(f"predictions and references have different ids (e.g. {sorted(map(str, missing))[:5]}).")
        ids = list(predictions)
        preds, refs = predictions, references
    else:
        if isinstance(predictions, str) or len(predictions) != len(references):
            raise ValueError(
                f"give one prediction per reference list: got {len(predictions)} predictions and {len(references)} lists."
            )
        ids = list(range(len(predictions)))
        preds, refs = dict(enumerate(predictions)), dict(enumerate(references))
    if len(ids) < 2:
        raise ValueError("CIDEr needs a corpus of at least 2 items: its IDF weights are all zero for a single item.")
    res = {i: [caption_tokenize(preds[i])] for i in ids}
    gts: dict[Hashable, list[str]] = {}
    for i in ids:
        if isinstance(refs[i], str) or len(refs[i]) == 0:
            raise ValueError(f"item {i!r}: references must be a non-empty list of caption strings.")
        gts[i] = [caption_tokenize(r) for r in refs[i]]
    return ids, res, gts


def cider_scores(predictions: Mapping[Hashable, str] | Sequence[str],
                 references: Mapping[Hashable, Sequence[str]] | Sequence[Sequence[str]]) -> np.ndarray:
    """Per-item CIDEr-D, in the order of ``predictions`` (IDF is computed over this corpus)."""
    from pycocoevalcap.cider.cider import Cider

    ids, res, gts = _as_items(predictions, references)
    _, scores = Cider().compute_score({i: gts[i] for i in ids}, {i: res[i] for i in ids})
    return np.asarray(scores, dtype=np.float64)


def cider(predictions: Mapping[Hashable, str] | Sequence[str],
          references: Mapping[Hashable, Sequence[str]] | Sequence[Sequence[str]]) -> float:
    """Corpus CIDEr-D: mean of :func:`cider_scores` (pycocoevalcap scale, 0 to 10)."""
    return float(cider_scores(predictions, references).mean())
