"""Janus (deepseek-community/Janus-Pro-1B/-7B, HF port): a VLM with separate understanding
(SigLIP tower + aligner) and generation (VQ) image paths, producing text and images.

Sequence layout written by ``JanusProcessor`` (transformers 5.23)::

    <s> [text] <begin_of_image> <image_placeholder>×N <end_of_image> [text]

The placeholders are replaced by the aligned vision features (N = 576 for 384 px images).
[SOI] is ``<begin_of_image>``, [EOI] is ``<end_of_image>``; there are no row separators.
Token names are read from the tokenizer (``image_token``, ``boi_token``, ``eoi_token``).

**Prompts.** The chat format of the HF Janus(-Pro) checkpoints' chat template:
``<|User|>: <image_placeholder>\n{text}\n\n<|Assistant|>:``. The real checkpoints'
``JanusProcessor`` (``use_default_system_prompt``) prepends its system prompt itself.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..layout import TokenLayout
from .base import Adapter, ImageLike, layout_from_ids

IMAGE_PLACEHOLDER = "<image_placeholder>"
SOI_TOKEN = "<begin_of_image>"
EOI_TOKEN = "<end_of_image>"


class JanusAdapter(Adapter):
    family = "janus"
    model_types = ("janus",)
    eoi_convention = "the <end_of_image> token that closes every image"
    chat_template = "<|User|>: {body}\n\n<|Assistant|>:"
    chat_separator = "\n"
    turn_markers = ("<|User|>", "<|Assistant|>")

    @classmethod
    def model_class(cls) -> type:
        from transformers import JanusForConditionalGeneration

        return JanusForConditionalGeneration

    @property
    def layers(self) -> Sequence[torch.nn.Module]:
        return self.model.model.language_model.layers

    @property
    def image_placeholder(self) -> str:
        return getattr(self.tokenizer, "image_token", None) or IMAGE_PLACEHOLDER

    @property
    def image_prompt(self) -> str:
        return self.image_placeholder

    def encode(self, images: Sequence[ImageLike], prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        if any(prompt.count(self.image_placeholder) != 1 for prompt in prompts):
            raise ValueError(f"Every Janus prompt needs exactly one '{self.image_placeholder}' placeholder.")
        return dict(self.processor(images=list(images), text=list(prompts), padding=True, padding_side="left",
                                   return_tensors="pt"))

    def locate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TokenLayout:
        return layout_from_ids(
            input_ids, attention_mask,
            image_ids={int(self.model.config.image_token_id)},
            soi_id=self.token_id(getattr(self.tokenizer, "boi_token", None) or SOI_TOKEN),
            eoi_id=self.token_id(getattr(self.tokenizer, "eoi_token", None) or EOI_TOKEN),
            family=self.family,
        )
