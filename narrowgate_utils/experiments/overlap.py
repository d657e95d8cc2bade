"""Sec. 4.2 / Fig. 4: where the image's class lives — neighbourhood overlap per token position.

For the class prompt we collect residual vectors at [EOI], the last image token, any other
strongly attended positions (found in the attention chapter) and a set of internal image
positions, then compute χ^{l,gt} (paper eq. 3) against the class labels at every layer.
For internal image tokens χ is computed per position and averaged (as the paper averages
over token positions).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..data.sample import Sample
from ..layout import TokenLayout
from ..metrics import neighborhood_overlap
from ..models.base import Adapter
from ..tracing import collect_residual
from .common import Cache, per_batch


def overlap_positions(layout: TokenLayout, extra: Sequence[str] = (), max_internal: int = 64,
                      seed: int = 0) -> dict[str, list[int]]:
    """Named groups of positions to probe: [EOI], last image, extras, and internal image tokens.

    Internal image tokens exclude the last one and any extra position; at most
    ``max_internal`` of them (a fixed seeded subset, identical for every sample).
    """
    groups = {"[EOI]": layout.resolve("eoi"), "last image": layout.resolve("last_image")}
    for name in extra:
        groups[name] = layout.resolve(name)
    taken = {p for positions in groups.values() for p in positions}
    internal = [p for p in layout.image_positions if p not in taken]
    if len(internal) > max_internal:
        internal = sorted(np.random.default_rng(seed).choice(internal, size=max_internal, replace=False).tolist())
    groups["internal image (mean)"] = internal
    return groups


def overlap_batch(adapter: Adapter, chunk: Sequence[Sample], prompt: str, layers: Sequence[int] | None = None,
                  extra: Sequence[str] = (), max_internal: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """Residual vectors of one batch per group: {group: [n_layers, batch, n_positions, d]}."""
    batch = adapter.build_batch([s.image for s in chunk], [prompt] * len(chunk))
    row_groups = [overlap_positions(layout, extra, max_internal, seed) for layout in batch.layouts]
    names = list(row_groups[0])
    flat = [[p for name in names for p in groups[name]] for groups in row_groups]
    vectors = collect_residual(adapter, batch, flat, layers=layers).numpy()  # [L, B, P, d]
    out, start = {}, 0
    for name in names:
        width = len(row_groups[0][name])
        out[name] = vectors[:, :, start:start + width]
        start += width
    return out


def _overlap_arrays(adapter: Adapter, samples: Sequence[Sample], prompt: str, layers: Sequence[int] | None,
                    extra: Sequence[str], max_internal: int, batch_size: int, seed: int,
                    cache: Cache) -> dict[str, np.ndarray]:
    params = {"layers": list(layers or []), "prompt": prompt, "extra": list(extra), "max_internal": max_internal,
              "seed": seed}
    return per_batch(adapter, samples, "overlap", params,
                     lambda i, chunk: overlap_batch(adapter, chunk, prompt, layers, extra, max_internal, seed),
                     batch_size, cache, desc=f"overlap · {adapter.model_id}", axis=1)


def collect_overlap_vectors(adapter: Adapter, samples: Sequence[Sample], prompt: str, layers: Sequence[int] | None = None,
                            extra: Sequence[str] = (), max_internal: int = 64, batch_size: int = 16,
                            seed: int = 0) -> dict[str, np.ndarray]:
    """Residual vectors per group: {group: [n_layers, n, n_positions, d]} (left padding handled per row)."""
    return _overlap_arrays(adapter, samples, prompt, layers, extra, max_internal, batch_size, seed, cache=False)


def overlap_profile(vectors: dict[str, np.ndarray], labels: Sequence[int], layers: Sequence[int],
                    k: int = 30) -> pd.DataFrame:
    """χ^{l,gt} per layer and group (eq. 3); a group of several positions averages χ over them."""
    rows = []
    labels = np.asarray(labels)
    for name, array in vectors.items():
        for index, layer in enumerate(layers):
            chis = [neighborhood_overlap(array[index, :, j], labels, k=k) for j in range(array.shape[2])]
            rows.append({"layer": layer, "token": name, "chi": float(np.mean(chis))})
    return pd.DataFrame(rows)


def overlap_vectors(adapter: Adapter, samples: Sequence[Sample], prompt: str, layers: Sequence[int],
                    extra: Sequence[str] = (), max_internal: int = 64, batch_size: int = 16, seed: int = 0,
                    cache_dir: str | None = None) -> dict[str, np.ndarray]:
    """:func:`collect_overlap_vectors` streamed through the activation cache."""
    return _overlap_arrays(adapter, samples, prompt, layers, extra, max_internal, batch_size, seed,
                           cache=cache_dir or True)
