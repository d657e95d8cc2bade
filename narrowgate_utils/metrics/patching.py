"""Activation-patching metrics: distribution similarity (paper eq. 4, Fig. 6) and switch rates (Fig. A2)."""
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


def _class_ids(base_class_ids: Any, target_class_ids: Any, n: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    base = _as_ids(base_class_ids, "base_class_ids")
    target = _as_ids(target_class_ids, "target_class_ids")
    if not n == len(base) == len(target):
        raise ValueError(f"lengths differ: {what} {n}, base_class_ids {len(base)}, target_class_ids {len(target)}.")
    if np.any(base == target):
        raise ValueError(f"{int(np.sum(base == target))} pairs have the same base and target class; a switch is undefined there.")
    return base, target


def logit_sign_flips(clean_logits: Any, patched_logits: Any, base_class_ids: Any, target_class_ids: Any) -> np.ndarray:
    """Per pair: whether logit[target class] - logit[base class] changes sign under patching (Fig. A2).

    ``clean_logits`` (the unpatched base input) and ``patched_logits`` are ``[n, vocab]``
    logits at the predicted position; the ids (one per pair) are the first token of each
    class name. Pair i flips when sign(d_clean) != sign(d_patched), with
    d = logit[target_class_ids[i]] - logit[base_class_ids[i]]; a zero difference has sign 0,
    as with ``torch.sign`` in the authors' code. Returns a bool array ``[n]``.
    """
    clean = as_float_array(clean_logits, "clean_logits", 2)
    patched = as_float_array(patched_logits, "patched_logits", 2)
    if clean.shape != patched.shape:
        raise ValueError(f"clean_logits and patched_logits must have the same shape, got {clean.shape} and {patched.shape}.")
    base, target = _class_ids(base_class_ids, target_class_ids, len(clean), "logit rows")
    if min(base.min(), target.min()) < 0 or max(base.max(), target.max()) >= clean.shape[1]:
        raise ValueError(f"class ids must lie in [0, vocab) = [0, {clean.shape[1]}).")
    rows = np.arange(len(clean))
    d_clean = clean[rows, target] - clean[rows, base]
    d_patched = patched[rows, target] - patched[rows, base]
    return np.sign(d_clean) != np.sign(d_patched)


def switch_rate(clean_logits: Any, patched_logits: Any, base_class_ids: Any, target_class_ids: Any) -> float:
    """Share of ALL pairs whose target-minus-base logit difference flips sign under patching
    (Fig. A2, the authors' count; see :func:`logit_sign_flips`). Usually the base image
    favours its own class (d_clean < 0) and a flip means the target class now wins."""
    return float(np.mean(logit_sign_flips(clean_logits, patched_logits, base_class_ids, target_class_ids)))


def switch_rate_argmax(pred_patched: Any, base_class_ids: Any, target_class_ids: Any) -> float:
    """Fraction of patched base inputs whose argmax prediction became the target class.

    All three are 1-D integer arrays, one entry per base/target pair (e.g. the first token id
    of each class name). Pairs with identical base and target classes are rejected. This is
    an argmax alternative to :func:`switch_rate` (the paper's logit-sign count).
    """
    pred = _as_ids(pred_patched, "pred_patched")
    _, target = _class_ids(base_class_ids, target_class_ids, len(pred), "pred_patched")
    return float(np.mean(pred == target))
