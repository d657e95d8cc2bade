"""LLaVA-1.5, LLaVA-NeXT and LLaVA-OneVision (text-only-output, "non-native" VLMs).

Sequence layout: ``<s> [text] <image>×N [text]``: the ``<image>`` placeholders are replaced by
projected vision-tower features inside the model.

**[EOI] convention.** These families have no end-of-image token. Where the tokenizer
defines an explicit ``<eoi>`` marker (the toy-world LLaVA-architecture models do, written
right after the image), that token is [EOI]. Otherwise the conventional [EOI] is the first
position after the last image token, i.e. the first token that can attend to the whole image
(``TokenLayout.eoi_is_conventional`` is then True, and that token is not counted as text).

**LLaVA-NeXT / OneVision row separators.** These models write one ``image_newline`` feature
at the end of every row of the high-resolution (unpadded) grid, after the features of the
base image. In ``input_ids`` those positions hold the same ``<image>`` id as every other image
feature, and the grid depends on the original image size. :meth:`AnyResLlavaAdapter.layouts_of`
reads that size from the processor's ``image_sizes`` and finds the newline offsets by running
the model's own ``pack_image_features`` on marker features (no vision tower): the newlines are
``layout.row_separators``, not image content, so ``last_image`` is the last content feature
and the conventional [EOI] stays the first position after the whole image block. ``locate``
called on ids alone (no image size) cannot tell them apart and counts them as image tokens.

**Prompts.** LLaVA-1.5's chat format (the ``llava-hf/llava-1.5-*-hf`` chat template):
``USER: <image>\n{text} ASSISTANT:``. LLaVA-OneVision's (``llava-hf/llava-onevision-qwen2-*-hf``):
``<|im_start|>user <image>\n{text}<|im_end|><|im_start|>assistant\n``. LLaVA-NeXT checkpoints
differ in their language model (Vicuna, Mistral, Llama-3…), so their processor's own chat
template is used when it has one, LLaVA-1.5's format otherwise.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from ..layout import TokenLayout
from .base import Adapter, ImageLike, layout_from_ids

IMAGE_PLACEHOLDER = "<image>"
#: optional explicit end-of-image marker (toy-world LLaVA-architecture models)
EXPLICIT_EOI = "<eoi>"


class LlavaAdapter(Adapter):
    family = "llava"
    model_types = ("llava",)
    eoi_convention = ("the explicit <eoi> marker when the tokenizer has one (toy models); otherwise the "
                      "first position after the image (conventional)")
    chat_template = "USER: {body} ASSISTANT:"
    chat_separator = "\n"
    turn_markers = ("USER:", "ASSISTANT:")

    @classmethod
    def model_class(cls) -> type:
        from transformers import LlavaForConditionalGeneration

        return LlavaForConditionalGeneration

    @property
    def layers(self) -> Sequence[torch.nn.Module]:
        return self.model.model.language_model.layers

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    @cached_property
    def explicit_eoi_id(self) -> int | None:
        """Id of the explicit ``<eoi>`` marker, None when the tokenizer has none (looked up once)."""
        token_id = self.tokenizer.convert_tokens_to_ids(EXPLICIT_EOI)
        return None if token_id is None or token_id == self.tokenizer.unk_token_id else int(token_id)

    @property
    def image_prompt(self) -> str:
        return IMAGE_PLACEHOLDER + (EXPLICIT_EOI if self.explicit_eoi_id is not None else "")

    def encode(self, images: Sequence[ImageLike], prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        if any(prompt.count(IMAGE_PLACEHOLDER) != 1 for prompt in prompts):
            raise ValueError(f"Every {self.family} prompt needs exactly one '{IMAGE_PLACEHOLDER}' placeholder.")
        return dict(self.processor(images=list(images), text=list(prompts), padding=True, padding_side="left",
                                   return_tensors="pt"))

    def locate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TokenLayout:
        if self.explicit_eoi_id is not None:
            return layout_from_ids(input_ids, attention_mask, image_ids={self.image_token_id},
                                   eoi_id=self.explicit_eoi_id, family=self.family)
        return conventional_eoi_layout(input_ids, attention_mask, {self.image_token_id}, self.family)


def conventional_eoi_layout(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, image_ids: set[int],
                            family: str) -> TokenLayout:
    """Layout for a family without [EOI]: the first position after the image plays its role.

    When the image ends the sequence (text-then-image prompts) there is no such position and
    the last image token is used instead; ``eoi_is_conventional`` is True in both cases.
    """
    ids = input_ids.tolist()
    offset = Adapter.pad_offset(attention_mask)
    image_positions = [i for i, t in enumerate(ids) if t in image_ids and i >= offset]
    if not image_positions:
        raise ValueError(f"Image span not found. No image tokens found in the {family} prompt: the prompt needs an "
                         "image placeholder and an image.")
    last = image_positions[-1]
    eoi = last + 1 if last + 1 < len(ids) else last
    return TokenLayout(
        seq_len=len(ids),
        image_positions=tuple(image_positions),
        eoi=eoi,
        text_positions=tuple(range(eoi + 1, len(ids))),
        prompt_text_positions=tuple(range(offset, image_positions[0])),
        pad_offset=offset,
        eoi_is_conventional=True,
    )


class AnyResLlavaAdapter(LlavaAdapter):
    """Shared by LLaVA-NeXT and LLaVA-OneVision: any-resolution grids with ``image_newline`` features."""

    def __init__(self, model: torch.nn.Module, processor: Any, model_id: str | Path = "",
                 checkpoint_dir: str | Path | None = None, remote: bool | str = False) -> None:
        super().__init__(model, processor, model_id, checkpoint_dir, remote)
        self._newlines: dict[tuple[int, int], tuple[tuple[int, ...], int]] = {}

    def layouts_of(self, inputs: dict[str, torch.Tensor]) -> list[TokenLayout]:
        sizes = inputs.get("image_sizes")
        if sizes is None:
            return super().layouts_of(inputs)
        mask = inputs.get("attention_mask")
        return [self.locate(ids, None if mask is None else mask[row], image_size=(int(sizes[row][0]), int(sizes[row][1])))
                for row, ids in enumerate(inputs["input_ids"])]

    def locate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               image_size: tuple[int, int] | None = None) -> TokenLayout:
        """Layout of one row; with the image's original ``image_size`` (height, width) the newline
        features are moved from ``image_positions`` to ``row_separators``."""
        layout = super().locate(input_ids, attention_mask)
        if image_size is None:
            return layout
        block = layout.image_positions
        offsets, length = self.newline_offsets(image_size)
        if len(block) != length or block != tuple(range(block[0], block[0] + length)):
            raise ValueError(f"{self.family}: the prompt holds {len(block)} image features, but one {image_size[0]}x"
                             f"{image_size[1]} image packs into {length} contiguous ones (one image per prompt).")
        newlines = tuple(block[k] for k in offsets)
        content = tuple(position for position in block if position not in set(newlines))
        return replace(layout, image_positions=content, row_separators=newlines)

    def newline_offsets(self, image_size: tuple[int, int]) -> tuple[tuple[int, ...], int]:
        """Offsets of the ``image_newline`` features in the packed features of one image of original
        size ``image_size`` (height, width), and the number of packed features (cached per size)."""
        if image_size not in self._newlines:
            from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

            config = self.model.config
            vision = config.vision_config
            side = vision.image_size // vision.patch_size
            n_patches = image_size_to_num_patches(list(image_size), config.image_grid_pinpoints, vision.image_size)
            with torch.no_grad():
                packed = self.pack_markers(torch.zeros(n_patches, side * side, 1), torch.tensor([image_size]))
            flags = packed[:, 0]
            self._newlines[image_size] = tuple(int(k) for k in torch.nonzero(flags).flatten()), len(flags)
        return self._newlines[image_size]

    def pack_markers(self, features: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
        """The model's packing of one image's features [patches, tokens, 1] with a newline marker of 1."""
        config = self.model.config
        packed, _ = self.model.model.pack_image_features(
            [features], image_sizes, vision_feature_select_strategy=config.vision_feature_select_strategy,
            image_newline=torch.ones(1))
        return packed[0]


class LlavaNextAdapter(AnyResLlavaAdapter):
    family = "llava_next"
    model_types = ("llava_next",)

    @classmethod
    def model_class(cls) -> type:
        from transformers import LlavaNextForConditionalGeneration

        return LlavaNextForConditionalGeneration

    def chat_prompt(self, text: str, order: str) -> str:
        """The processor's chat template (it depends on the checkpoint's language model), else LLaVA-1.5's format."""
        if getattr(self.processor, "chat_template", None) is None:
            return super().chat_prompt(text, order)
        content = [{"type": "image"}, {"type": "text", "text": text}]
        turn = [{"role": "user", "content": content if order == "image_first" else content[::-1]}]
        return self.processor.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)


class LlavaOnevisionAdapter(AnyResLlavaAdapter):
    family = "llava_onevision"
    model_types = ("llava_onevision",)
    chat_template = "<|im_start|>user {body}<|im_end|><|im_start|>assistant\n"
    turn_markers = ("<|im_start|>", "<|im_end|>")

    def __init__(self, model: torch.nn.Module, processor: Any, model_id: str | Path = "",
                 checkpoint_dir: str | Path | None = None, remote: bool | str = False) -> None:
        """Without torchvision ``AutoProcessor`` returns a bare tokenizer: rebuild an image-only processor."""
        from .processors import LlavaOnevisionImageOnlyProcessor, complete_processor

        super().__init__(model, processor, model_id, checkpoint_dir, remote)
        config, vision = model.config, model.config.vision_config
        self.processor = complete_processor(
            processor, checkpoint_dir or model_id,
            lambda image_processor, tokenizer: LlavaOnevisionImageOnlyProcessor(
                image_processor, tokenizer, num_image_tokens=(vision.image_size // vision.patch_size) ** 2,
                vision_feature_select_strategy=config.vision_feature_select_strategy,
                vision_aspect_ratio=config.vision_aspect_ratio))

    @classmethod
    def model_class(cls) -> type:
        from transformers import LlavaOnevisionForConditionalGeneration

        return LlavaOnevisionForConditionalGeneration

    def pack_markers(self, features: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
        packed, _ = self.model.model.pack_image_features(
            [features], image_sizes, image_newline=torch.ones(1),
            vision_aspect_ratio=self.model.config.vision_aspect_ratio)
        return packed[0]
