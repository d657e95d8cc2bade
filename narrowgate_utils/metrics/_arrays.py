"""Input checks shared by the metric functions (numpy or torch in, float64 numpy out)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def as_float_array(x: Any, name: str, ndim: int | tuple[int, ...]) -> np.ndarray:
    """Return ``x`` (numpy array, torch tensor or nested list) as a finite float64 array.

    Raises ValueError naming ``name`` when the rank is wrong, the array is empty or holds
    NaN / inf values.
    """
    if hasattr(x, "detach"):  # torch tensor, any dtype (bf16 included) or device
        x = x.detach().cpu().double().numpy()
    array = np.asarray(x, dtype=np.float64)
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if array.ndim not in allowed:
        want = " or ".join(str(n) for n in allowed)
        raise ValueError(f"{name} must be a {want}-D array, got shape {array.shape}.")
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape}); pass at least one value.")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or inf values; remove or fix those entries first.")
    return array


def as_label_array(labels: Any, name: str, n: int) -> np.ndarray:
    """Return ``labels`` as a 1-D array of length ``n`` (any hashable dtype, no NaN)."""
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per row), got shape {array.shape}.")
    if len(array) != n:
        raise ValueError(f"{name} has {len(array)} entries but there are {n} vectors; give one label per vector.")
    if array.dtype.kind == "f" and np.isnan(array).any():
        raise ValueError(f"{name} contains NaN; every vector needs a label.")
    return array


def as_int_vector(x: Any, name: str, what: str) -> np.ndarray:
    """Return a non-empty 1-D integer array (numpy or torch input); ``what`` names its entries."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    array = np.asarray(x)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D list of {what}, got shape {array.shape}.")
    if array.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer {what}, got dtype {array.dtype}.")
    return array


def as_index_array(idx: Sequence[int] | np.ndarray, name: str, size: int) -> np.ndarray:
    """Return a 1-D int array of distinct positions, each in ``[0, size)``."""
    array = as_int_vector(idx, name, "positions")
    if array.min() < 0 or array.max() >= size:
        raise ValueError(f"{name} has positions outside [0, {size}): min {array.min()}, max {array.max()}.")
    if len(np.unique(array)) != len(array):
        raise ValueError(f"{name} lists a position more than once; positions must be distinct.")
    return array.astype(np.int64)
