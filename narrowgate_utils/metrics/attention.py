"""Cross-modal attention shares f_j^l (paper eq. 2, Fig. 3 and Fig. A1)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..layout import TokenLayout
from ._arrays import as_float_array, as_index_array

IndexSpec = Sequence[int] | Sequence[Sequence[int]] | np.ndarray


def _select(attn: Any, queries: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """attn[:, queries][:, :, keys] as float64 numpy, without copying the full matrix."""
    if hasattr(attn, "detach"):
        import torch

        q = torch.as_tensor(queries, device=attn.device)
        k = torch.as_tensor(keys, device=attn.device)
        return attn.detach()[:, q][:, :, k].cpu().double().numpy()
    return np.asarray(attn)[:, queries][:, :, keys].astype(np.float64)


def _one_sample(attn: Any, span: Any, queries: Any, normalize: bool) -> np.ndarray:
    n_queries, n_keys = attn.shape[-2], attn.shape[-1]
    span = as_index_array(span, "image_span_idx", n_keys)
    queries = as_index_array(queries, "text_query_idx", n_queries)
    if queries.min() <= span.max():
        raise ValueError(
            f"text queries must all come after the image span (eq. 2 sums over i > N_EOI): first query "
            f"{queries.min()} <= last span position {span.max()}. Pass layout.text_positions as text_query_idx."
        )
    sub = _select(attn, queries, span)
    if not np.all(np.isfinite(sub)) or sub.min() < 0:
        raise ValueError("attention holds NaN, inf or negative values; pass post-softmax probabilities (eager attention).")
    share = sub.mean(axis=(0, 1))
    if not normalize:
        return share
    total = share.sum()
    if total <= 0:
        raise ValueError("text queries put zero attention on the image span; f_j cannot be normalised.")
    return share / total


def _is_flat(idx: Any) -> bool:
    """True for one list of positions, False for one list per sample."""
    if hasattr(idx, "ndim"):
        return idx.ndim == 1
    return len(idx) == 0 or isinstance(idx[0], (int, np.integer))


def cross_modal_attention(attn: Any, image_span_idx: IndexSpec, text_query_idx: IndexSpec,
                          *, normalize: bool = True) -> np.ndarray:
    """Relative cross-modal attention f_j of one layer (paper eq. 2).

    ``attn`` is post-softmax attention, ``[heads, q, k]`` for one sample or
    ``[batch, heads, q, k]`` for a batch (numpy or torch). ``image_span_idx`` are the key
    positions of the image span *including* [EOI] (``layout.image_span``) and
    ``text_query_idx`` the text queries after [EOI] (``layout.text_positions``); for a batch
    give one list per sample, or one flat list shared by all samples.

    Attention is averaged over heads and text queries and restricted to the span; with
    ``normalize=True`` it is rescaled so that sum_j f_j = 1. Returns ``[n_span]`` or
    ``[batch, n_span]`` (all samples must have spans of equal length).
    To average raw attention over samples before normalising (the authors' order), use
    ``normalize=False`` with :class:`RunningMean` and divide the final mean by its sum.
    """
    if not hasattr(attn, "shape"):
        attn = np.asarray(attn, dtype=np.float64)
    ndim = attn.ndim
    if ndim == 3:
        if not (_is_flat(image_span_idx) and _is_flat(text_query_idx)):
            raise ValueError(
                "for a single sample [heads, q, k], image_span_idx and text_query_idx must be flat lists of positions."
            )
        return _one_sample(attn, image_span_idx, text_query_idx, normalize)
    if ndim != 4:
        raise ValueError(f"attn must be [heads, q, k] or [batch, heads, q, k], got {ndim} dimensions.")
    batch = attn.shape[0]
    spans = [image_span_idx] * batch if _is_flat(image_span_idx) else list(image_span_idx)
    queries = [text_query_idx] * batch if _is_flat(text_query_idx) else list(text_query_idx)
    if len(spans) != batch or len(queries) != batch:
        raise ValueError(
            f"give one index list per sample: batch is {batch}, got {len(spans)} spans and {len(queries)} query lists."
        )
    lengths = {len(s) for s in spans}
    if len(lengths) != 1:
        raise ValueError(f"image spans differ in length across the batch ({sorted(lengths)}); f_j needs aligned positions.")
    return np.stack([_one_sample(attn[b], spans[b], queries[b], normalize) for b in range(batch)])


class RunningMean:
    """Streaming mean over samples (memory independent of the number of samples)."""

    def __init__(self) -> None:
        self._sum: np.ndarray | None = None
        self.count = 0

    def update(self, values: Any, *, batch: bool = False) -> None:
        """Add one sample, or a batch whose first axis indexes samples (``batch=True``)."""
        x = as_float_array(values, "values", tuple(range(0, 8)))
        if batch:
            if x.ndim == 0:
                raise ValueError("batch=True needs an array whose first axis indexes samples.")
            n, x = x.shape[0], x.sum(axis=0)
        else:
            n = 1
        if self._sum is None:
            self._sum = np.zeros_like(x)
        elif x.shape != self._sum.shape:
            raise ValueError(f"sample shape {x.shape} differs from earlier samples {self._sum.shape}.")
        self._sum += x
        self.count += n

    @property
    def mean(self) -> np.ndarray:
        """The mean of all samples added so far."""
        if self._sum is None:
            raise ValueError("RunningMean is empty: call update() with at least one sample first.")
        return self._sum / self.count


def span_token_names(layout: TokenLayout) -> tuple[list[str], list[str]]:
    """Display name and aggregation group for each position of ``layout.image_span``.

    Names: ``"[EOI]"``, ``"image N"`` (1-based content-token index, as "the 32nd image
    token"), ``"last image"``, ``"row separator N"``. Groups: ``"internal image"``,
    ``"row separators"``, ``"[EOI]"``, or ``"other span tokens"`` for anything else.
    """
    image_rank = {p: n for n, p in enumerate(layout.image_positions, start=1)}
    separator_rank = {p: n for n, p in enumerate(layout.row_separators, start=1)}
    names, groups = [], []
    for p in layout.image_span:
        if p == layout.eoi:
            name, group = "[EOI]", "[EOI]"
        elif p in separator_rank:
            name, group = f"row separator {separator_rank[p]}", "row separators"
        elif p == layout.last_image:
            name, group = "last image", "internal image"
        elif p in image_rank:
            name, group = f"image {image_rank[p]}", "internal image"
        else:
            name, group = f"position {p}", "other span tokens"
        names.append(name)
        groups.append(group)
    return names, groups


def aggregate_attention_shares(f: Any, names_per_position: Sequence[str],
                               groups_per_position: Sequence[str] | None = None,
                               threshold: float = 0.01) -> pd.DataFrame:
    """Tidy per-layer attention shares with small positions pooled (paper Fig. 3 / A1).

    ``f`` is ``[L, n_span]`` (e.g. a :class:`RunningMean` of :func:`cross_modal_attention`).
    Positions whose share averaged over layers exceeds ``threshold`` are kept under their
    name; the others are summed per group (default: all ``"internal image"``; see
    :func:`span_token_names`). Returns DataFrame(layer, token, share), kept positions in
    span order followed by the groups.
    """
    f = as_float_array(f, "f", 2)
    n_span = f.shape[1]
    groups = ["internal image"] * n_span if groups_per_position is None else list(groups_per_position)
    names = list(names_per_position)
    if len(names) != n_span or len(groups) != n_span:
        raise ValueError(f"f has {n_span} positions but got {len(names)} names and {len(groups)} groups; give one per position.")
    keep = f.mean(axis=0) > threshold
    kept_names = [n for n, k in zip(names, keep) if k]
    if len(set(kept_names)) != len(kept_names):
        raise ValueError("names_per_position must be distinct for positions shown individually.")
    pooled = list(dict.fromkeys(g for g, k in zip(groups, keep) if not k))
    columns = {name: f[:, j] for j, name in enumerate(names) if keep[j]}
    for group in pooled:
        if group in columns:
            raise ValueError(f"group name {group!r} collides with a position name; rename one of them.")
        members = [j for j in range(n_span) if not keep[j] and groups[j] == group]
        columns[group] = f[:, members].sum(axis=1)
    frames = [pd.DataFrame({"layer": np.arange(f.shape[0]), "token": token, "share": share})
              for token, share in columns.items()]
    return pd.concat(frames, ignore_index=True).sort_values(["layer"], kind="stable").reset_index(drop=True)
