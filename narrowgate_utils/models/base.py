"""The adapter interface: one subclass per VLM family.

An adapter is the only code that knows a family's prompt format, special tokens and module
paths. Everything else (tracing, interventions, metrics, notebooks) talks to a model through
an :class:`Adapter` and the :class:`~narrowgate_utils.layout.TokenLayout` it produces.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from ..layout import Batch, TokenLayout

ImageLike = Image.Image | np.ndarray

PROMPT_ORDERS = ("image_first", "text_first")


def as_pil(image: ImageLike) -> Image.Image:
    """Accept a PIL image or an HxWx3 uint8 array and return an RGB PIL image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"Expected an HxWx3 RGB image array, got shape {array.shape}.")
    return Image.fromarray(array.astype(np.uint8), mode="RGB")


class Adapter(ABC):
    """Family-specific knowledge about one loaded VLM.

    Subclasses set :attr:`family`, :attr:`model_types` (``config.model_type`` values they
    handle) and implement :meth:`format_prompt`, :meth:`encode` and :meth:`locate`.
    """

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    #: whether a decoder layer's forward returns a tuple (hidden states are ``output[0]``)
    layer_returns_tuple: ClassVar[bool] = False
    #: one-line description of how [EOI] is defined for this family
    eoi_convention: ClassVar[str] = "the family's end-of-image token"

    def __init__(self, model: torch.nn.Module, processor: Any, model_id: str | Path = "",
                 checkpoint_dir: str | Path | None = None, remote: bool | str = False) -> None:
        self.model = model
        self.processor = processor
        self.model_id = str(model_id)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None and Path(checkpoint_dir).exists() else None
        #: nnsight execution of traces: False (here), True / a host URL (NDIF; ``model`` holds no
        #: weights, only its structure on the meta device) or "local" (nnsight's serialising
        #: simulation of a remote run, on the local weights)
        self.remote = remote

    @property
    def has_weights(self) -> bool:
        """False for a remote adapter whose model lives on the meta device (weights on the server)."""
        return not any(p.is_meta for p in self.model.parameters())

    def require_weights(self, what: str) -> None:
        """Raise a clear error when ``what`` needs local weights that a remote adapter lacks."""
        if not self.has_weights:
            raise ValueError(f"{what} runs the model locally, but {self.model_id or self.family} was loaded with "
                             f"remote={self.remote!r} (no local weights). Only nnsight traces (residual and attention "
                             "extraction, activation patching) run remotely; load with remote=False for this step.")

    @classmethod
    @abstractmethod
    def model_class(cls) -> type:
        """The transformers ``*ForConditionalGeneration`` class of this family."""

    # ------------------------------------------------------------ structure
    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    @abstractmethod
    def layers(self) -> Sequence[torch.nn.Module]:
        """The decoder layers of the language model, in order."""

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def attention(self, layer: int) -> torch.nn.Module:
        """The self-attention module of decoder layer ``layer``."""
        return self.layers[self.check_layer(layer)].self_attn

    def input_layernorm(self, layer: int) -> torch.nn.Module:
        """The layernorm whose output is the attention-block input x_in (paper Sec. 3.1)."""
        return self.layers[self.check_layer(layer)].input_layernorm

    @property
    def text_config(self) -> Any:
        config = self.model.config
        return config.get_text_config() if hasattr(config, "get_text_config") else config

    def check_layer(self, layer: int) -> int:
        """Validate a layer index (negative indices count from the end)."""
        n = self.num_layers
        if not -n <= layer < n:
            raise ValueError(f"Layer {layer} is out of range: {self.model_id or self.family} has {n} decoder layers (0..{n - 1}).")
        return layer % n

    def check_layers(self, layers: Sequence[int] | range | None) -> list[int]:
        """Validate a list of layers; ``None`` means all layers."""
        if layers is None:
            return list(range(self.num_layers))
        return [self.check_layer(int(layer)) for layer in layers]

    # -------------------------------------------------------------- prompts
    @property
    def image_prompt(self) -> str:
        """What stands for the image in a prompt string (the processor expands it)."""
        return "<image>"

    def format_prompt(self, text: str, order: str = "image_first") -> str:
        """Prompt string with the image (:attr:`image_prompt`) before or after ``text``."""
        return f"{self.image_prompt}{text}" if order == "image_first" else f"{text}{self.image_prompt}"

    @abstractmethod
    def encode(self, images: Sequence[ImageLike], prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise prompts (with placeholders) and images into model inputs (left padded)."""

    @abstractmethod
    def locate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TokenLayout:
        """Find the image span, [SOI], [EOI], row separators and text in one row of ids."""

    def build_batch(self, images: Sequence[ImageLike], texts: Sequence[str], order: str = "image_first") -> Batch:
        """Build model inputs and token layouts for image+text prompts in either order."""
        if order not in PROMPT_ORDERS:
            raise ValueError(f"Unknown prompt order '{order}'; use one of {PROMPT_ORDERS}.")
        if len(images) != len(texts):
            raise ValueError(f"Got {len(images)} images but {len(texts)} texts; pass one text per image.")
        if len(images) == 0:
            raise ValueError("build_batch needs at least one image+text pair; the input is empty.")
        if not self.has_image_pipeline():
            raise ValueError(
                f"The processor of {self.model_id or self.family} cannot encode images (it is a bare tokenizer, "
                "e.g. because AutoProcessor did not recognise the checkpoint's processor): pass the family's full "
                "*Processor to the adapter."
            )
        prompts = [self.format_prompt(text, order) for text in texts]
        inputs = self.encode([as_pil(image) for image in images], prompts)
        self.check_context(inputs["input_ids"])
        mask = inputs.get("attention_mask")
        layouts = [self.locate(inputs["input_ids"][row], None if mask is None else mask[row]) for row in range(len(prompts))]
        return Batch(inputs=dict(inputs), layouts=layouts, order=order)

    def check_context(self, input_ids: torch.Tensor) -> None:
        """Fail clearly if a prompt is longer than the model's context window."""
        limit = getattr(self.text_config, "max_position_embeddings", None)
        if limit is not None and input_ids.shape[-1] > limit:
            raise ValueError(
                f"Prompt of {input_ids.shape[-1]} tokens exceeds the context window of {limit} tokens of "
                f"{self.model_id or self.family}; use smaller images or shorter text."
            )

    def has_image_pipeline(self) -> bool:
        """Whether the processor can turn images into model inputs (a bare tokenizer cannot)."""
        return hasattr(self.processor, "image_processor")

    # ------------------------------------------------------------ helpers
    def token_id(self, token: str) -> int:
        """Id of a special token, with a clear error when the tokenizer lacks it."""
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == getattr(self.tokenizer, "unk_token_id", -1):
            raise ValueError(f"The tokenizer of {self.model_id or self.family} has no token '{token}'.")
        return int(token_id)

    @staticmethod
    def pad_offset(attention_mask: torch.Tensor | None) -> int:
        """Number of left-padding positions in one row."""
        if attention_mask is None:
            return 0
        nonzero = torch.nonzero(attention_mask, as_tuple=False)
        return int(nonzero[0, 0]) if len(nonzero) else 0

    def decode(self, token_ids: torch.Tensor) -> list[str]:
        """Decode generated ids (one row per sample) to text, skipping special tokens."""
        return self.tokenizer.batch_decode(token_ids, skip_special_tokens=True)

    @torch.no_grad()
    def generate(self, batch: Batch, max_new_tokens: int = 20, **kwargs: Any) -> list[str]:
        """Greedy generation of the continuation of every prompt in ``batch``."""
        self.require_weights("Generation")
        device = next(self.model.parameters()).device
        inputs = batch.to(device, self.model.dtype).inputs
        kwargs.setdefault("do_sample", False)
        kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, **kwargs)
        return [text.strip() for text in self.decode(output[:, inputs["input_ids"].shape[1]:])]


def layout_from_ids(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    image_ids: set[int] | torch.Tensor,
    eoi_id: int | None,
    soi_id: int | None = None,
    row_separator_id: int | None = None,
    family: str,
    image_range: tuple[int, int] | None = None,
) -> TokenLayout:
    """Generic layout finder for families whose image is one contiguous block of ids.

    ``image_ids`` are the ids of image content tokens (a set, or ``image_range=(lo, hi)`` for
    a contiguous id range such as VQ codes). The block runs from the first image id to
    [EOI]; separators inside it are row separators. Without an [EOI] id (``eoi_id=None``)
    the caller must handle the convention itself.
    """
    ids = input_ids.tolist()
    offset = Adapter.pad_offset(attention_mask)
    if image_range is not None:
        lo, hi = image_range
        is_image = [lo <= t < hi for t in ids]
    else:
        wanted = set(int(t) for t in image_ids)
        is_image = [t in wanted for t in ids]
    image_positions = [i for i, flag in enumerate(is_image) if flag and i >= offset]
    if not image_positions:
        raise ValueError(
            f"Image span not found. No image tokens found in the {family} prompt: the prompt needs an image "
            f"placeholder and the image must be expanded into image tokens (did you pass an image?)."
        )
    first, last = image_positions[0], image_positions[-1]
    soi = None
    if soi_id is not None:
        soi = first - 1 if first - 1 >= 0 and ids[first - 1] == soi_id else None
        if soi is None:
            raise ValueError(f"{family}: the start-of-image token does not precede the image span.")
    separators = [i for i in range(first, last + 2) if i < len(ids) and row_separator_id is not None and ids[i] == row_separator_id]
    eoi = None
    if eoi_id is not None:
        after = [i for i in range(last + 1, len(ids)) if ids[i] == eoi_id]
        if not after or any(not (ids[i] == row_separator_id) for i in range(last + 1, after[0])):
            raise ValueError(f"{family}: the end-of-image token does not close the image span.")
        eoi = after[0]
    if eoi is None:
        raise ValueError(f"{family}: no end-of-image token; this family needs a conventional [EOI] position.")
    text_positions = tuple(range(eoi + 1, len(ids)))
    block_start = soi if soi is not None else first
    prompt_text = tuple(range(offset, block_start))
    return TokenLayout(
        seq_len=len(ids),
        image_positions=tuple(image_positions),
        eoi=eoi,
        soi=soi,
        row_separators=tuple(separators),
        text_positions=text_positions,
        prompt_text_positions=prompt_text,
        pad_offset=offset,
    )
