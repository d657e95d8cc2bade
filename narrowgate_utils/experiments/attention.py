"""Sec. 4.2 / Fig. 3: how text→image attention is shared among the image-span positions.

With one fixed prompt ("<image> This shape is a") all sequences have the same layout, so the
per-position attention shares f_j^l (paper eq. 2) can be averaged over samples position by
position. Positions whose mean share exceeds a threshold are shown by name, the rest are
pooled into "internal image" and "row separators".
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..data.sample import Sample
from ..metrics import RunningMean, aggregate_attention_shares, span_token_names
from ..models.base import Adapter
from ..tracing import cross_modal_attention_profile
from .common import batched, cached_batches


def attention_batch(adapter: Adapter, chunk: Sequence[Sample], prompt: str, layers: Sequence[int] | None,
                    names: Sequence[str] | None = None) -> tuple[np.ndarray, list[str], list[str]]:
    """Raw (unnormalised) text→image attention of one batch, [batch, n_layers, n_span], with the
    span's position names and groups; ``names`` (if given) must match the batch's span."""
    batch = adapter.build_batch([s.image for s in chunk], [prompt] * len(chunk))
    profile = cross_modal_attention_profile(adapter, batch, layers=layers, normalize=False)  # [L, B, n_span]
    chunk_names, chunk_groups = span_token_names(batch.layouts[0])
    if names is not None and list(chunk_names) != list(names):
        raise ValueError("Image spans differ between samples; use images of one size so the layout is fixed.")
    return np.transpose(profile, (1, 0, 2)), chunk_names, chunk_groups


def mean_attention_profile(adapter: Adapter, samples: Sequence[Sample], prompt: str, layers: Sequence[int] | None = None,
                           batch_size: int = 16) -> tuple[np.ndarray, list[str], list[str]]:
    """f_j^l (eq. 2) of the sample-averaged attention, [n_layers, n_span], with the span's position
    names and groups. Raw attention is averaged over samples first and normalised at the end."""
    running = RunningMean()
    names: list[str] | None = None
    groups: list[str] = []
    for chunk in batched(samples, batch_size, desc=f"attention · {adapter.model_id}"):
        profile, names, groups = attention_batch(adapter, chunk, prompt, layers, names)
        running.update(profile, batch=True)
    mean = running.mean  # raw attention averaged over samples, then normalised (the authors' order)
    return mean / mean.sum(axis=1, keepdims=True), names, groups


def attention_shares(mean_profile: np.ndarray, names: list[str], groups: list[str], layers: Sequence[int],
                     threshold: float = 0.01) -> pd.DataFrame:
    """Tidy (layer, token, share) table in the style of Fig. 3."""
    shares = aggregate_attention_shares(mean_profile, names, groups, threshold=threshold)
    shares["layer"] = np.asarray(list(layers))[shares["layer"].to_numpy()]
    return shares


def attention_profile(adapter: Adapter, samples: Sequence[Sample], prompt: str, layers: Sequence[int],
                      batch_size: int = 16, cache_dir: str | None = None) -> tuple[np.ndarray, list[str], list[str]]:
    """:func:`mean_attention_profile` with the per-sample raw attention streamed through the activation cache."""
    names, groups = span_token_names(adapter.build_batch([samples[0].image], [prompt]).layouts[0]) if samples else ([], [])
    arrays = cached_batches(adapter, samples, "cross_modal_attention", {"layers": list(layers), "prompt": prompt},
                            lambda i, chunk: {"raw": attention_batch(adapter, chunk, prompt, layers, names)[0]},
                            batch_size, axis=0, cache_dir=cache_dir)
    mean = arrays["raw"].astype(np.float64).mean(axis=0)
    return mean / mean.sum(axis=1, keepdims=True), list(names), list(groups)
