"""Token layouts: where the image, its boundary tokens and the text sit in one sequence.

A :class:`TokenLayout` is produced by a model-family adapter (the only code that knows a
family's special tokens) and consumed by everything else through *named positions*, so
analysis code never does index arithmetic.

All indices are positions in the (possibly left-padded) batch row. The named position
``abs:N`` is the paper's way of counting ("the 32nd token" of Chameleon-7B, "the 1025th" of
Pixtral-12B): sequence position ``N`` of the unpadded prompt, counted from its first token
(BOS = 0), i.e. row index ``N + pad_offset``, so it names the same token in every row of a
left-padded batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

#: Names understood by :meth:`TokenLayout.resolve`.
POSITION_NAMES = (
    "eoi",            # the end-of-image token (or the family's documented conventional position)
    "soi",            # the start-of-image token, where the family has one
    "last_image",     # last image *content* token (row separators excluded)
    "first_image",    # first image content token
    "image",          # all image content tokens
    "internal_image", # image content tokens except the first and last one
    "row_separators", # end-of-line / row-break tokens inside the image
    "image_span",     # every position from the first image token to [EOI] inclusive
    "text",           # every text token after [EOI] (the queries of A_img->text)
    "text_last",      # the last token of the sequence (where the next token is predicted)
    "prompt_text",    # text tokens before the image (text-then-image prompts)
    "random_image:K", # K image content tokens drawn with the caller's RNG
    "image_index:N",  # the N-th image content token (1-based; separators and [SOI] not counted)
    "abs:N",          # sequence position N of the unpadded prompt (BOS = 0): row index N + pad_offset
)


class PositionOutOfRange(ValueError):
    """A numbered position (``image_index:N``, ``abs:N``) that this sequence does not have,
    e.g. because its image is shorter; callers may skip such a position instead of failing."""


def _position_number(name: str) -> int:
    """The ``N`` of ``"prefix:N"``, with a clear error for anything but a non-negative integer."""
    text = name.split(":", 1)[1]
    if not text.isdigit():
        raise ValueError(f"Position '{name}' needs a non-negative integer after ':', got '{text}'.")
    return int(text)


@dataclass(frozen=True)
class TokenLayout:
    """Positions of the image and text parts of one tokenised sequence.

    ``image_positions`` holds the image *content* tokens (VQ codes or vision-tower
    embeddings), excluding boundary tokens and row separators. ``eoi`` is the end-of-image
    token; ``eoi_is_conventional`` marks families without one (e.g. LLaVA-1.5), where the
    adapter documents which position plays that role.
    """

    seq_len: int
    image_positions: tuple[int, ...]
    eoi: int
    soi: int | None = None
    row_separators: tuple[int, ...] = ()
    text_positions: tuple[int, ...] = ()
    prompt_text_positions: tuple[int, ...] = ()
    pad_offset: int = 0
    eoi_is_conventional: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.image_positions:
            raise ValueError("TokenLayout needs at least one image token; none was found in the sequence.")
        if not 0 <= self.eoi < self.seq_len:
            raise ValueError(f"[EOI] index {self.eoi} lies outside the sequence of length {self.seq_len}.")

    # ------------------------------------------------------------------ spans
    @property
    def first_image(self) -> int:
        return self.image_positions[0]

    @property
    def last_image(self) -> int:
        return self.image_positions[-1]

    @property
    def image_span(self) -> tuple[int, ...]:
        """Every position from the first image token up to and including [EOI]."""
        start = self.soi + 1 if self.soi is not None else self.first_image
        return tuple(range(start, self.eoi + 1))

    @property
    def text_last(self) -> int:
        return self.seq_len - 1

    # -------------------------------------------------------------- resolving
    def resolve(self, name: str, rng: np.random.Generator | None = None) -> list[int]:
        """Turn a named position (see :data:`POSITION_NAMES`) into row indices of the batch.

        ``image_index:N`` counts image content tokens (1-based); ``abs:N`` counts sequence
        positions from the first non-pad token (0-based, BOS = 0, as the authors index the
        "32nd" Chameleon and "1025th" Pixtral tokens) and returns ``N + pad_offset``. Both
        raise :class:`PositionOutOfRange` when this sequence is too short.
        """
        if name.startswith("random_image:"):
            k = _position_number(name)
            if rng is None:
                raise ValueError(f"Position '{name}' needs a numpy Generator: pass rng=np.random.default_rng(seed).")
            if k > len(self.image_positions):
                raise ValueError(f"Position '{name}' asks for {k} image tokens but the image has {len(self.image_positions)}.")
            return sorted(int(i) for i in rng.choice(self.image_positions, size=k, replace=False))
        if name.startswith("image_index:"):
            n = _position_number(name)
            if not 1 <= n <= len(self.image_positions):
                raise PositionOutOfRange(f"Position '{name}' is out of range: the image has "
                                         f"{len(self.image_positions)} content tokens (1-based).")
            return [self.image_positions[n - 1]]
        if name.startswith("abs:"):
            n = _position_number(name)
            length = self.seq_len - self.pad_offset
            if n >= length:
                raise PositionOutOfRange(f"Position '{name}' is out of range: the unpadded prompt has {length} "
                                         f"tokens (positions 0..{length - 1}, BOS = 0).")
            return [n + self.pad_offset]
        table: dict[str, tuple[int, ...]] = {
            "eoi": (self.eoi,),
            "soi": (self.soi,) if self.soi is not None else (),
            "last_image": (self.last_image,),
            "first_image": (self.first_image,),
            "image": self.image_positions,
            "internal_image": self.image_positions[1:-1],
            "row_separators": self.row_separators,
            "image_span": self.image_span,
            "text": self.text_positions,
            "text_last": (self.text_last,),
            "prompt_text": self.prompt_text_positions,
        }
        if name not in table:
            raise ValueError(f"Unknown position name '{name}'. Known names: {', '.join(POSITION_NAMES)}.")
        positions = table[name]
        if not positions:
            raise ValueError(f"Position '{name}' does not exist in this sequence (family or prompt order has none).")
        return list(positions)


@dataclass
class Batch:
    """Model inputs for one forward pass plus one :class:`TokenLayout` per row."""

    inputs: dict[str, torch.Tensor]
    layouts: list[TokenLayout]
    order: str = "image_first"

    def __len__(self) -> int:
        return len(self.layouts)

    @property
    def input_ids(self) -> torch.Tensor:
        return self.inputs["input_ids"]

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> "Batch":
        """Move tensors to ``device``; floating tensors (pixels) are cast to ``dtype`` if given."""
        moved = {}
        for key, value in self.inputs.items():
            if isinstance(value, torch.Tensor):
                value = value.to(device)
                if dtype is not None and value.is_floating_point():
                    value = value.to(dtype)
            moved[key] = value
        return Batch(moved, self.layouts, self.order)

    def positions(self, name: str, rng: np.random.Generator | None = None) -> list[list[int]]:
        """Resolve a named position in every row."""
        return [layout.resolve(name, rng) for layout in self.layouts]
