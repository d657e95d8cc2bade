"""Planted routes: train a toy model whose text reads the image only through [EOI] (gated) or
never reads [EOI] (distributed).

During training the text after [EOI] sees the forbidden keys through a pre-softmax mask (from
``recipe.mask_start`` on), and a penalty on the attention mass plain causal attention would put
on them is ramped in, so the route holds at test time with ordinary attention and no mask.

The attention here is a registered eager attention of its own, beside the evaluation knockout
of :mod:`narrowgate_utils.interventions`: the penalty needs the *unmasked* softmax mass on the
forbidden keys, which the knockout neither computes nor exposes, and the knockout resolves its
blocked pairs through an :class:`~narrowgate_utils.models.base.Adapter` and a named-position
batch, which a model under construction does not have. Its masking is the knockout's
``pre_softmax`` mode (the most negative float added before the softmax).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .recipes import ToyRecipe

#: name under which the planting attention (and its eager-style mask) is registered in transformers
PLANT_ATTENTION = "narrowgate_plant"


@dataclass
class PlantState:
    """What the planting attention sees: the forbidden (query, key) pairs, whether to mask them,
    and the recorded attention masses."""

    forbidden: torch.Tensor | None = None  # [B, 1, Q, K], 1.0 where a query may not see a key
    hard: bool = True
    masses: list[torch.Tensor] = field(default_factory=list)


_PLANT = PlantState()


def _plant_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                     **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention that records the plain-causal probability mass on forbidden keys and,
    when ``hard``, computes the output with those keys masked out (pre-softmax)."""
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if _PLANT.forbidden is not None:
        _PLANT.masses.append((probs * _PLANT.forbidden).sum(-1))
        if _PLANT.hard:
            blocked = scores.masked_fill(_PLANT.forbidden.bool(), torch.finfo(scores.dtype).min)
            probs = torch.softmax(blocked, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def register_plant_attention() -> None:
    """Register :data:`PLANT_ATTENTION` (with transformers' eager mask) in transformers."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import eager_mask

    AttentionInterface.register(PLANT_ATTENTION, _plant_attention)
    AttentionMaskInterface.register(PLANT_ATTENTION, eager_mask)


@contextlib.contextmanager
def planted(forbidden: torch.Tensor | None, hard: bool = True) -> Iterator[PlantState]:
    """Within the block, models using the ``narrowgate_plant`` attention see ``forbidden``."""
    _PLANT.forbidden, _PLANT.hard, _PLANT.masses = forbidden, hard, []
    try:
        yield _PLANT
    finally:
        _PLANT.forbidden, _PLANT.masses = None, []


def plant_masks(plant: str, shape: tuple[int, int] | torch.Size,
                texts: Mapping[int, tuple[int, int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(forbidden [B, 1, T, T] float, query rows [B, T] bool) of a batch of ``shape`` [B, T].

    ``texts`` maps each row with an image-first sequence to (position of [SOI], position of
    [EOI], sequence length): its text after [EOI] may not see the image codes (``"gated"``) or
    [EOI] itself (``"distributed"``).
    """
    b, t = shape
    forbidden = torch.zeros(b, 1, t, t)
    query_rows = torch.zeros(b, t, dtype=torch.bool)
    for r, (soi_pos, eoi_pos, length) in texts.items():
        query_rows[r, eoi_pos + 1:length] = True
        if plant == "gated":
            forbidden[r, 0, eoi_pos + 1:length, soi_pos + 1:eoi_pos] = 1.0
        else:
            forbidden[r, 0, eoi_pos + 1:length, eoi_pos] = 1.0
    return forbidden, query_rows


def forbidden_mass(masses: Sequence[torch.Tensor], query_rows: torch.Tensor) -> torch.Tensor:
    """Mean attention mass on forbidden keys over layers, heads and the restricted query rows."""
    rows = query_rows[:, None, :].to(masses[0].dtype)  # [B, 1, Q]
    total = torch.stack([(m * rows).sum() for m in masses]).mean()
    return total / (rows.sum() * masses[0].shape[1]).clamp(min=1)


def penalty_weight(recipe: ToyRecipe, step: int) -> float:
    """Weight of the forbidden-mass penalty at ``step``: 0, then a linear ramp to ``penalty_weight``."""
    start = recipe.penalty_start * recipe.steps
    ramp = max(1.0, recipe.penalty_ramp * recipe.steps)
    return recipe.penalty_weight * float(np.clip((step - start) / ramp, 0.0, 1.0))


def masking(recipe: ToyRecipe, step: int) -> bool:
    """Whether the forbidden keys are masked (not only penalised) at ``step``."""
    return step >= recipe.mask_start * recipe.steps
