"""Sec. 4.2 / Fig. 4: where the image's class lives — neighbourhood overlap per token position.

For the class prompt we collect residual vectors at [EOI], the last image token, any other
strongly attended positions (``extra`` named positions, e.g. the 32nd token) and the
internal image tokens, then compute χ^{l,gt} (paper eq. 3) against the class labels at
every layer.

The internal image tokens are the image content tokens of the layout (no [SOI]/[EOI], no
row separators) minus every position probed as its own group (the last image token and the
extras). By default (``internal="pooled"``, the authors' procedure) each group of several
positions is mean-pooled inside the forward pass — one vector per image and layer — and χ is
computed on that vector (Fig. 4 caption: "averaging over all internal image tokens excluding
the 32nd token"; an extra such as "row_separators" gives the [EOL] curve the same way).
``internal="per_token"`` keeps the positions (internal: a seeded subset of at most
``max_internal``) and :func:`overlap_profile` averages their per-position χ.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch

from ..data.sample import Sample
from ..layout import Batch, TokenLayout
from ..metrics import neighborhood_overlap
from ..models.base import Adapter
from ..tracing import collect_residual, envoy_of, hidden_of, model_inputs, resolve_positions, trace
from .common import Cache, per_batch

Internal = Literal["pooled", "per_token"]
#: the name of the internal-image group in the vectors and in :func:`overlap_profile`
INTERNAL_GROUP = "internal image (mean)"
#: how :func:`overlap_vectors` stores the vectors: half the disk and page cache of float32
#: (≈ 11 GB instead of 22 GB at 10,000 images, 33 layers × 4096 wide, 4 groups)
CACHE_DTYPE = "float16"


def _check_internal(internal: str) -> None:
    if internal not in ("pooled", "per_token"):
        raise ValueError(f"internal must be 'pooled' (one mean vector per image) or 'per_token', got {internal!r}.")


def overlap_positions(layout: TokenLayout, extra: Sequence[str] = (), max_internal: int = 64,
                      seed: int = 0, internal: Internal = "pooled") -> dict[str, list[int]]:
    """Named groups of positions to probe: [EOI], last image, extras, and internal image tokens.

    Internal image tokens are the layout's image content tokens except the last one and any
    extra position. With ``internal="pooled"`` all of them are kept (they are averaged); with
    ``"per_token"`` at most ``max_internal`` (a fixed seeded subset, identical for every sample).
    """
    _check_internal(internal)
    groups = {"[EOI]": layout.resolve("eoi"), "last image": layout.resolve("last_image")}
    for name in extra:
        groups[name] = layout.resolve(name)
    taken = {p for positions in groups.values() for p in positions}
    positions = [p for p in layout.image_positions if p not in taken]
    if not positions:
        raise ValueError("No internal image token is left once [EOI], the last image token and the extras are removed.")
    if internal == "per_token" and len(positions) > max_internal:
        positions = sorted(np.random.default_rng(seed).choice(positions, size=max_internal, replace=False).tolist())
    groups[INTERNAL_GROUP] = positions
    return groups


@torch.no_grad()
def pooled_residual(adapter: Adapter, batch: Batch, groups: Sequence[Sequence[Sequence[int]]],
                    layers: Sequence[int] | None = None) -> torch.Tensor:
    """Mean residual x^l over each group of positions, per row: float32 ``[n_layers, n_groups, batch, d]``.

    ``groups[g][row]`` lists the absolute positions of group g in that row (rows may differ in
    count). The mean is taken inside the forward pass, so only one vector per group, row and
    layer leaves it (a paper-scale image has ~1,000 tokens).
    """
    selected = sorted(set(adapter.check_layers(layers)))
    inputs = model_inputs(adapter, batch)
    weights = torch.zeros(len(groups), len(batch), inputs["input_ids"].shape[1])
    for g, rows in enumerate(groups):
        for row, positions in enumerate(resolve_positions(batch, rows)):
            weights[g, row, positions] = 1.0 / len(set(positions))
    envoys = [envoy_of(adapter, adapter.layers[l]) for l in selected]
    pooled: list[torch.Tensor] = []
    with trace(adapter, inputs) as tracer:
        for envoy in envoys:
            hidden = hidden_of(envoy.output)
            mean = torch.einsum("gbs,bsd->gbd", weights.to(hidden.device), hidden.to(torch.float32))
            pooled.append(mean.detach().cpu())
        tracer.stop()
    return torch.stack(pooled)


def overlap_batch(adapter: Adapter, chunk: Sequence[Sample], prompt: str, layers: Sequence[int] | None = None,
                  extra: Sequence[str] = (), max_internal: int = 64, seed: int = 0,
                  internal: Internal = "pooled") -> dict[str, np.ndarray]:
    """Residual vectors of one batch per group: {group: [n_layers, batch, n_positions, d]}
    (``n_positions`` = 1 for every group with ``internal="pooled"``: the group's mean)."""
    batch = adapter.build_batch([s.image for s in chunk], [prompt] * len(chunk))
    row_groups = [overlap_positions(layout, extra, max_internal, seed, internal) for layout in batch.layouts]
    names = list(row_groups[0])
    if internal == "pooled":
        pooled = pooled_residual(adapter, batch, [[groups[name] for groups in row_groups] for name in names], layers)
        return {name: pooled[:, g, :, None].numpy() for g, name in enumerate(names)}
    flat = [[p for name in names for p in groups[name]] for groups in row_groups]
    vectors = collect_residual(adapter, batch, flat, layers=layers).numpy()  # [L, B, P, d]
    out, start = {}, 0
    for name in names:
        width = len(row_groups[0][name])
        out[name] = vectors[:, :, start:start + width]
        start += width
    return out


def _overlap_arrays(adapter: Adapter, samples: Sequence[Sample], prompt: str, layers: Sequence[int] | None,
                    extra: Sequence[str], max_internal: int, batch_size: int, seed: int, internal: Internal,
                    cache: Cache) -> dict[str, np.ndarray]:
    """The vectors of every batch, joined; with ``cache`` stored as :data:`CACHE_DTYPE` and memory-mapped."""
    _check_internal(internal)
    params = {"layers": list(layers or []), "prompt": prompt, "extra": list(extra), "internal": internal,
              "max_internal": max_internal if internal == "per_token" else None, "seed": seed}
    return per_batch(adapter, samples, "overlap", params,
                     lambda i, chunk: overlap_batch(adapter, chunk, prompt, layers, extra, max_internal, seed, internal),
                     batch_size, cache, desc=f"overlap · {adapter.model_id}", axis=1, cache_dtype=CACHE_DTYPE)


def collect_overlap_vectors(adapter: Adapter, samples: Sequence[Sample], prompt: str, layers: Sequence[int] | None = None,
                            extra: Sequence[str] = (), max_internal: int = 64, batch_size: int = 16,
                            seed: int = 0, *, internal: Internal = "pooled") -> dict[str, np.ndarray]:
    """Residual vectors per group: {group: [n_layers, n, n_positions, d]} (left padding handled per row);
    ``internal`` as in the module docstring."""
    return _overlap_arrays(adapter, samples, prompt, layers, extra, max_internal, batch_size, seed, internal,
                           cache=False)


def overlap_profile(vectors: dict[str, np.ndarray], labels: Sequence[int], layers: Sequence[int],
                    k: int = 30) -> pd.DataFrame:
    """χ^{l,gt} per layer and group (eq. 3); a group of several positions (``internal="per_token"``)
    averages χ over them, a pooled group has one vector per image.

    χ is computed one ``[n, d]`` slice (layer, position) at a time, read as float32, so memory-mapped
    vectors (:func:`overlap_vectors`) are never loaded whole."""
    rows = []
    labels = np.asarray(labels)
    for name, array in vectors.items():
        for index, layer in enumerate(layers):
            chis = [neighborhood_overlap(np.asarray(array[index, :, j], dtype=np.float32), labels, k=k)
                    for j in range(array.shape[2])]
            rows.append({"layer": layer, "token": name, "chi": float(np.mean(chis))})
    return pd.DataFrame(rows)


def overlap_vectors(adapter: Adapter, samples: Sequence[Sample], prompt: str, layers: Sequence[int],
                    extra: Sequence[str] = (), max_internal: int = 64, batch_size: int = 16, seed: int = 0,
                    cache_dir: str | None = None, *, internal: Internal = "pooled") -> dict[str, np.ndarray]:
    """:func:`collect_overlap_vectors` streamed through the activation cache: stored as float16
    (:data:`CACHE_DTYPE`) and returned memory-mapped, so host memory stays flat in ``len(samples)``."""
    return _overlap_arrays(adapter, samples, prompt, layers, extra, max_internal, batch_size, seed, internal,
                           cache=cache_dir or True)
