"""Activation-patching metrics (paper eq. 4, Fig. 6 and Fig. A2)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ._arrays import as_float_array, as_int_vector


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def _as_distribution(x: Any, name: str, from_logits: bool, atol: float) -> np.ndarray:
    array = as_float_array(x, name, (1, 2))
    if from_logits:
        return _softmax(array)
    if array.min() < 0:
        raise ValueError(f"{name} has negative entries; pass probabilities, or logits with from_logits=True.")
    sums = array.sum(axis=-1)
    if np.any(np.abs(sums - 1.0) > atol):
        raise ValueError(
            f"{name} rows must sum to 1 (got sums in [{sums.min():.4g}, {sums.max():.4g}]); "
            "pass probabilities, or logits with from_logits=True."
        )
    return array


def patching_similarity(q: Any, p: Any, *, from_logits: bool = False, atol: float = 1e-3) -> float | np.ndarray:
    """Similarity(q, p) = sum_i min(q_i, p_i) (paper eq. 4): 1 for identical, 0 for disjoint.

    ``q`` (base after patching) and ``p`` (target) are ``[vocab]`` (returns a float) or
    ``[n, vocab]`` (returns one value per row), probabilities or, with ``from_logits=True``,
    logits (softmax taken in float64). Probability rows must sum to 1 within ``atol``.
    """
    q_dist = _as_distribution(q, "q", from_logits, atol)
    p_dist = _as_distribution(p, "p", from_logits, atol)
    if q_dist.shape != p_dist.shape:
        raise ValueError(f"q and p must have the same shape, got {q_dist.shape} and {p_dist.shape}.")
    similarity = np.minimum(q_dist, p_dist).sum(axis=-1)
    return float(similarity) if similarity.ndim == 0 else similarity


def _as_ids(x: Any, name: str) -> np.ndarray:
    return as_int_vector(x, name, "class / token ids")


def switch_rate(pred_patched: Any, base_class_ids: Any, target_class_ids: Any) -> float:
    """Fraction of patched base inputs whose prediction became the target class (Fig. A2).

    All three are 1-D integer arrays, one entry per base/target pair (e.g. the first token id
    of each class name). Pairs with identical base and target classes are rejected.
    """
    pred = _as_ids(pred_patched, "pred_patched")
    base = _as_ids(base_class_ids, "base_class_ids")
    target = _as_ids(target_class_ids, "target_class_ids")
    if not len(pred) == len(base) == len(target):
        raise ValueError(f"lengths differ: pred_patched {len(pred)}, base_class_ids {len(base)}, target_class_ids {len(target)}.")
    if np.any(base == target):
        raise ValueError(f"{int(np.sum(base == target))} pairs have the same base and target class; a switch is undefined there.")
    return float(np.mean(pred == target))
