"""Captioning metric: CIDEr-D via pycocoevalcap, without Java (paper Supp. Sec. 8.3, Table 1).

pycocoevalcap's ``Cider`` scorer implements CIDEr-D (clipped term frequencies, Gaussian
length penalty with sigma=6, x10 scale), which is what COCO-style evaluations report. It
splits each caption on whitespace. Two ways to prepare the captions (``tokenize``):

- ``"simple"`` (default): :func:`caption_tokenize`, a small Python stand-in for the usual PTB
  tokenizer, which needs Java (lower-case, punctuation removed, hyphenated words and
  apostrophes kept inside words, so "dog's" stays one token where PTB would split it).
- ``"raw"``: the strings go to the scorer unchanged, as in the authors' evaluation script, so
  case and punctuation count ("Grass." and "grass" are different words).

Like pycocoevalcap, no stemming is done.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Literal

import numpy as np

Tokenize = Literal["simple", "raw"]

_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")


def _raw_caption(text: str) -> str:
    """The caption unchanged (checked to be a string): the scorer splits it on whitespace."""
    if not isinstance(text, str):
        raise ValueError(f"captions must be strings, got {type(text).__name__}.")
    return text


def caption_tokenize(text: str) -> str:
    """Lower-case ``text``, drop punctuation and return the tokens joined by single spaces."""
    return " ".join(_WORD.findall(_raw_caption(text).lower()))


def _preparer(tokenize: Tokenize) -> Callable[[str], str]:
    if tokenize == "simple":
        return caption_tokenize
    if tokenize == "raw":
        return _raw_caption
    raise ValueError(f"tokenize must be 'simple' (lower-case, no punctuation) or 'raw' (strings unchanged), got {tokenize!r}.")


def _as_items(predictions: Mapping[Hashable, str] | Sequence[str],
              references: Mapping[Hashable, Sequence[str]] | Sequence[Sequence[str]],
              prepare: Callable[[str], str],
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
    res = {i: [prepare(preds[i])] for i in ids}
    gts: dict[Hashable, list[str]] = {}
    for i in ids:
        if isinstance(refs[i], str) or len(refs[i]) == 0:
            raise ValueError(f"item {i!r}: references must be a non-empty list of caption strings.")
        gts[i] = [prepare(r) for r in refs[i]]
    return ids, res, gts


def cider_scores(predictions: Mapping[Hashable, str] | Sequence[str],
                 references: Mapping[Hashable, Sequence[str]] | Sequence[Sequence[str]],
                 tokenize: Tokenize = "simple") -> np.ndarray:
    """Per-item CIDEr-D, in the order of ``predictions`` (IDF is computed over this corpus).

    ``tokenize``: ``"simple"`` (:func:`caption_tokenize`) or ``"raw"`` (strings unchanged, as
    the authors scored them); see the module docstring.
    """
    from pycocoevalcap.cider.cider import Cider

    ids, res, gts = _as_items(predictions, references, _preparer(tokenize))
    _, scores = Cider().compute_score({i: gts[i] for i in ids}, {i: res[i] for i in ids})
    return np.asarray(scores, dtype=np.float64)


def cider(predictions: Mapping[Hashable, str] | Sequence[str],
          references: Mapping[Hashable, Sequence[str]] | Sequence[Sequence[str]],
          tokenize: Tokenize = "simple") -> float:
    """Corpus CIDEr-D: mean of :func:`cider_scores` (pycocoevalcap scale, 0 to 10)."""
    return float(cider_scores(predictions, references, tokenize).mean())
