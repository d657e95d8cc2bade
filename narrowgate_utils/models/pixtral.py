"""Pixtral (mistral-community/pixtral-12b): LLaVA architecture with a Pixtral vision tower.

Sequence layout written by ``PixtralProcessor`` (transformers 5.23), one row of ``w`` patches
at a time::

    <s> [text] ([IMG]×w [IMG_BREAK])×(h-1) [IMG]×w [IMG_END] [text]

Only ``[IMG]`` placeholders are replaced by vision features; ``[IMG_BREAK]`` (the paper's
[EOL]) and ``[IMG_END]`` stay text-embedding tokens. There is no start-of-image token.

* [EOI] is ``[IMG_END]``, which closes the last row.
* Row separators are the ``[IMG_BREAK]`` tokens (``h - 1`` of them: the last row ends with
  [EOI] instead). The authors' code looked the row separator up under a wrong token name;
  here the names come from the processor (``image_break_token``), defaulting to ``[IMG_BREAK]``.
* ``image_index:N`` counts ``[IMG]`` content tokens only (separators excluded).

transformers 5.23's ``PixtralProcessor`` cannot be imported without torchvision; without it
the adapter uses :class:`~narrowgate_utils.models.processors.PixtralImageOnlyProcessor`
(same expansion rule, PIL image processor).

**Prompts.** Pixtral's tokenizer does not add a BOS token (the HF conversion has no template
post-processor); every prompt therefore starts with ``<s>`` (:attr:`prompt_prefix`), as in the
authors' prompts and the checkpoint's chat template. The chat format is
``<s>[INST][IMG]{text}[/INST]``; VQA asks the question with the authors' instruction block
(:data:`~narrowgate_utils.models.base.VQA_INSTRUCTIONS`).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..layout import TokenLayout
from .base import VQA_INSTRUCTIONS, ImageLike, layout_from_ids
from .llava import LlavaAdapter
from .processors import PixtralImageOnlyProcessor, complete_processor

IMAGE_PLACEHOLDER = "[IMG]"
ROW_SEPARATOR_TOKEN = "[IMG_BREAK]"
EOI_TOKEN = "[IMG_END]"


class PixtralAdapter(LlavaAdapter):
    family = "pixtral"
    model_types = ("llava",)
    eoi_convention = "the [IMG_END] token that closes every image"
    vqa_template = "{question}\n" + VQA_INSTRUCTIONS
    chat_template = "[INST]{body}[/INST]"
    chat_separator = ""
    turn_markers = ("[INST]", "[/INST]")

    def __init__(self, model: torch.nn.Module, processor: Any, model_id: str | Path = "",
                 checkpoint_dir: str | Path | None = None, remote: bool | str = False) -> None:
        super().__init__(model, processor, model_id, checkpoint_dir, remote)
        self.processor = complete_processor(
            processor, checkpoint_dir or model_id,
            lambda image_processor, tokenizer: PixtralImageOnlyProcessor(
                image_processor, tokenizer, patch_size=int(model.config.vision_config.patch_size)))

    @property
    def image_placeholder(self) -> str:
        return getattr(self.processor, "image_token", IMAGE_PLACEHOLDER)

    @property
    def row_separator_token(self) -> str:
        return getattr(self.processor, "image_break_token", ROW_SEPARATOR_TOKEN)

    @property
    def eoi_token(self) -> str:
        return getattr(self.processor, "image_end_token", EOI_TOKEN)

    @property
    def image_prompt(self) -> str:
        return self.image_placeholder

    @property
    def prompt_prefix(self) -> str:
        return "" if self.toy else self.missing_bos

    def encode(self, images: Sequence[ImageLike], prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        if any(prompt.count(self.image_placeholder) != 1 for prompt in prompts):
            raise ValueError(f"Every Pixtral prompt needs exactly one '{self.image_placeholder}' placeholder.")
        return dict(self.processor(images=list(images), text=list(prompts), padding=True, padding_side="left",
                                   return_tensors="pt"))

    def locate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TokenLayout:
        return layout_from_ids(
            input_ids, attention_mask,
            image_ids={self.image_token_id},
            eoi_id=self.token_id(self.eoi_token),
            row_separator_id=self.token_id(self.row_separator_token),
            family=self.family,
        )
