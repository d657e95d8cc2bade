"""Sec. 4.1 / Fig. 2: the modality gap between image and text residual representations.

For every image with its captions we build two prompts (paper Supp. 8.1): image followed by
the concatenated captions, and the captions followed by the image. From the first we keep
the residual stream at one random *text* position, from the second at one random *image*
position, at every layer. Per layer we report the median cosine over the image/text pairs
of *different* samples (the authors' code: pairs (image i, text j) with i < j, see
:func:`~narrowgate_utils.metrics.cosine_values`) with its quartiles, and the homogeneity
w.r.t. modality of ADP clusters of the pooled vectors.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..data.sample import Sample
from ..metrics import adp_homogeneity, modality_gap_profile
from ..metrics.geometry import Pairing
from ..models.base import Adapter
from ..tracing import collect_residual
from .common import Cache, per_batch


def caption_text(sample: Sample) -> str:
    """All reference captions of a sample joined into one text (paper Supp. 8.1)."""
    if not sample.captions:
        raise ValueError(f"Sample {sample.uid} has no captions; the modality-gap experiment needs a captioned dataset.")
    return " ".join(sample.captions)


def modality_batch(adapter: Adapter, chunk: Sequence[Sample], layers: Sequence[int] | None,
                   rng: np.random.Generator) -> dict[str, np.ndarray]:
    """{"image", "text"}: [n_layers, batch, d] residuals at one random image token (text-first
    prompt) and one random text token (image-first prompt) of each sample."""
    images, texts = [s.image for s in chunk], [caption_text(s) for s in chunk]
    image_first = adapter.build_batch(images, texts, order="image_first")
    text_positions = [[int(rng.choice(layout.text_positions))] for layout in image_first.layouts]
    text = collect_residual(adapter, image_first, text_positions, layers=layers)[:, :, 0]
    text_first = adapter.build_batch(images, texts, order="text_first")
    image_positions = [[int(rng.choice(layout.image_positions))] for layout in text_first.layouts]
    image = collect_residual(adapter, text_first, image_positions, layers=layers)[:, :, 0]
    return {"image": image.numpy(), "text": text.numpy()}


def _modality_arrays(adapter: Adapter, samples: Sequence[Sample], layers: Sequence[int] | None, batch_size: int,
                     seed: int, cache: Cache) -> dict[str, np.ndarray]:
    """:func:`modality_batch` over every batch; batch ``i`` draws its positions with
    ``default_rng([seed, i])``, so a resumed extraction draws the same ones."""
    return per_batch(adapter, samples, "modality_gap", {"layers": list(layers or []), "seed": seed},
                     lambda i, chunk: modality_batch(adapter, chunk, layers, np.random.default_rng([seed, i])),
                     batch_size, cache, desc=f"modality gap · {adapter.model_id}", axis=1)


def collect_modality_vectors(adapter: Adapter, samples: Sequence[Sample], layers: Sequence[int] | None = None,
                             batch_size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Residual vectors [n_layers, n, d] at a random text token (image-first prompts) and at a
    random image token (text-first prompts), paired by sample (in memory)."""
    arrays = _modality_arrays(adapter, samples, layers, batch_size, seed, cache=False)
    return arrays["image"], arrays["text"]


def modality_gap(image_vecs: np.ndarray, text_vecs: np.ndarray, layers: Sequence[int], min_cluster_size: int = 50,
                 maxk: int = 128, *, pairing: Pairing = "cross", absolute: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-layer cosine quartiles and ADP homogeneity from :func:`collect_modality_vectors` output.

    ``pairing`` chooses the image/text pairs of the cosine quartiles: ``"cross"`` (default,
    the authors' code: pairs of different samples, each couple once), ``"paired"`` (same-sample
    pairs) or ``"all"``; ``absolute=True`` takes |cos| (default: the signed cosine, see
    :func:`~narrowgate_utils.metrics.cosine_values`). ``maxk`` is capped by the number of
    points; clusters below ``min_cluster_size`` points are dropped before the homogeneity score
    (the paper drops clusters under 50 of 20,000 points).
    """
    if len(layers) != len(image_vecs):
        raise ValueError(f"got {len(layers)} layer numbers but the vectors hold {len(image_vecs)} layers.")
    gap = modality_gap_profile(image_vecs, text_vecs, pairing, absolute=absolute)
    gap["layer"] = list(layers)
    n = image_vecs.shape[1]
    labels = np.r_[np.zeros(n, dtype=int), np.ones(n, dtype=int)]
    scores = []
    for index, layer in enumerate(layers):
        pooled = np.concatenate([image_vecs[index], text_vecs[index]])
        score = adp_homogeneity(pooled, labels, maxk=min(maxk, len(pooled) - 1), min_cluster_size=min_cluster_size)
        scores.append({"layer": layer, "homogeneity": score})
    return gap, pd.DataFrame(scores)


def modality_vectors(adapter: Adapter, samples: Sequence[Sample], layers: Sequence[int], batch_size: int = 16,
                     seed: int = 0, cache_dir: str | None = None) -> dict[str, np.ndarray]:
    """:func:`collect_modality_vectors` streamed through the activation cache: {"image": ..., "text": ...}."""
    return _modality_arrays(adapter, samples, layers, batch_size, seed, cache=cache_dir or True)
