"""LLaVA-1.5, LLaVA-NeXT and LLaVA-OneVision (text-only-output, "non-native" VLMs).

Sequence layout: ``<s> [text] <image>×N [text]``: the ``<image>`` placeholders are replaced by
projected vision-tower features inside the model.

**[EOI] convention.** These families have no end-of-image token. Where the tokenizer
defines an explicit ``<eoi>`` marker (the toy-world LLaVA-architecture models do, written
right after the image), that token is [EOI]. Otherwise the conventional [EOI] is the first
position after the last image token, i.e. the first token that can attend to the whole image
(``TokenLayout.eoi_is_conventional`` is then True, and that token is not counted as text).

**LLaVA-NeXT / OneVision row separators.** These models write one ``image_newline`` feature
at the end of every row of the high-resolution grid, but in ``input_ids`` those positions
hold the same ``<image>`` id as every other image feature (the newline is inserted inside
the model, and the grid size depends on the original image size, which ``locate`` does not
see). Row separators are therefore *not* located for these families
(``layout.row_separators`` is empty) and the newline features are counted among the image
tokens.
"""
from __future__ import annotations

from collections.abc import Sequence
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

    @property
    def explicit_eoi_id(self) -> int | None:
        vocab = self.tokenizer.get_vocab()
        return vocab.get(EXPLICIT_EOI)

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


class LlavaNextAdapter(LlavaAdapter):
    family = "llava_next"
    model_types = ("llava_next",)

    @classmethod
    def model_class(cls) -> type:
        from transformers import LlavaNextForConditionalGeneration

        return LlavaNextForConditionalGeneration


class LlavaOnevisionAdapter(LlavaAdapter):
    family = "llava_onevision"
    model_types = ("llava_onevision",)

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
