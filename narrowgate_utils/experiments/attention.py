"""Sec. 4.2 / Fig. 3: how text→image attention is shared among the image-span positions.

With one fixed prompt ("<image> This shape is a") and images of one size (the authors resize to
512x512) all sequences have the same layout, and the per-position attention shares f_j^l
(paper eq. 2) are averaged over samples position by position. Variable-resolution images
(Pixtral, Emu3, Qwen2-VL, LLaVA-NeXT at natural size) give spans of different lengths: the
positions are then matched by name (``[EOI]``, ``image N``, ``row separator N``; see
:func:`~narrowgate_utils.metrics.span_token_names`) and a position a sample lacks counts as
zero attention for it. For equal spans both readings are the same number. Positions whose
mean share exceeds a threshold are shown by name, the rest are pooled into "internal image"
and "row separators".
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..data.sample import Sample
from ..metrics import aggregate_attention_shares, span_token_names
from ..models.base import Adapter, model_fingerprint
from ..tracing import cross_modal_attention_profile
from .common import activation_store, batched


class NamedSums:
    """Raw text→image attention summed over samples per span-position name, ``{name: [n_layers]}``,
    names kept in span order (a name first seen in a longer span goes after its predecessor)."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.groups: dict[str, str] = {}
        self.count = 0

    def add(self, names: Sequence[str], groups: Sequence[str], raw: np.ndarray, count: int) -> None:
        """Add ``raw`` (``[n_layers, len(names)]``, already summed over ``count`` samples)."""
        order = list(self.sums)
        previous = None
        for j, (name, group) in enumerate(zip(names, groups)):
            if name not in self.sums:
                order.insert(order.index(previous) + 1 if previous is not None else 0, name)
                self.sums[name] = np.zeros(raw.shape[0])
                self.groups[name] = group
            self.sums[name] = self.sums[name] + raw[:, j]
            previous = name
        self.sums = {name: self.sums[name] for name in order}
        self.count += count

    def profile(self) -> tuple[np.ndarray, list[str], list[str]]:
        """f_j^l (eq. 2) of the sample-averaged raw attention, ``[n_layers, n_names]``, with names and groups."""
        if not self.count:
            raise ValueError("No samples were added: the attention profile is empty.")
        mean = np.stack(list(self.sums.values()), axis=1) / self.count
        return mean / mean.sum(axis=1, keepdims=True), list(self.sums), [self.groups[n] for n in self.sums]


def attention_batch(adapter: Adapter, chunk: Sequence[Sample], prompt: str,
                    layers: Sequence[int] | None) -> dict[str, np.ndarray]:
    """Raw (unnormalised) text→image attention of one batch summed over its rows, per position
    name: ``raw`` ``[n_layers, n_names]``, ``names``, ``groups`` and the row ``count``."""
    batch = adapter.build_batch([s.image for s in chunk], [prompt] * len(chunk))
    profile = cross_modal_attention_profile(adapter, batch, layers=layers, normalize=False)  # [L, B, n_span]
    sums = NamedSums()
    for row, layout in enumerate(batch.layouts):
        names, groups = span_token_names(layout)
        sums.add(names, groups, profile[:, row, :len(names)], 1)
    return {"raw": np.stack(list(sums.sums.values()), axis=1), "names": np.array(list(sums.sums)),
            "groups": np.array([sums.groups[n] for n in sums.sums]), "count": np.array(sums.count)}


def mean_attention_profile(adapter: Adapter, samples: Sequence[Sample], prompt: str, layers: Sequence[int] | None = None,
                           batch_size: int = 16) -> tuple[np.ndarray, list[str], list[str]]:
    """f_j^l (eq. 2) of the sample-averaged attention, [n_layers, n_span], with the span's position
    names and groups. Raw attention is averaged over samples first and normalised at the end."""
    return attention_profile(adapter, samples, prompt, layers, batch_size, cache=False)


def attention_shares(mean_profile: np.ndarray, names: list[str], groups: list[str], layers: Sequence[int],
                     threshold: float = 0.01) -> pd.DataFrame:
    """Tidy (layer, token, share) table in the style of Fig. 3."""
    shares = aggregate_attention_shares(mean_profile, names, groups, threshold=threshold)
    shares["layer"] = np.asarray(list(layers))[shares["layer"].to_numpy()]
    return shares


def attention_profile(adapter: Adapter, samples: Sequence[Sample], prompt: str, layers: Sequence[int] | None,
                      batch_size: int = 16, cache_dir: str | None = None, *,
                      cache: bool = True) -> tuple[np.ndarray, list[str], list[str]]:
    """:func:`mean_attention_profile`, each batch's per-name sums stored in the activation cache as
    soon as it is computed (a killed run resumes at the first missing batch; ``cache=False``
    keeps nothing on disk). Memory is flat in the number of samples."""
    store = activation_store(cache_dir)
    params = {"what": "cross_modal_attention", "model": model_fingerprint(adapter), "batch_size": batch_size,
              "layers": list(layers or []), "prompt": prompt}
    sums = NamedSums()
    for i, chunk in enumerate(batched(samples, batch_size, desc=f"attention · {adapter.model_id}")):
        if cache:
            part = store.get_or_compute({**params, "part": i, "samples": [s.uid for s in chunk]},
                                        lambda: attention_batch(adapter, chunk, prompt, layers))
        else:
            part = attention_batch(adapter, chunk, prompt, layers)
        sums.add([str(n) for n in part["names"]], [str(g) for g in part["groups"]], part["raw"], int(part["count"]))
    return sums.profile()


def attention_shares(mean_profile: np.ndarray, names: list[str], groups: list[str], layers: Sequence[int],
                     threshold: float = 0.01) -> pd.DataFrame:
    """Tidy (layer, token, share) table in the style of Fig. 3."""
    shares = aggregate_attention_shares(mean_profile, names, groups, threshold=threshold)
    shares["layer"] = np.asarray(list(layers))[shares["layer"].to_numpy()]
    return shares
