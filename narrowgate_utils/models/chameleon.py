"""Chameleon (facebook/chameleon-7b, -30b) and the toy-world native models built on it.

Sequence layout: ``<s> [text] <racm3:break> IMG×1024 <eoss> [text]``. [SOI] is
``<racm3:break>``, [EOI] is ``<eoss>``. Image content tokens are VQ codes, i.e. BPE ids whose
names start with ``IMGIMG`` (or the ``<image>`` placeholder before the model swaps codes in).

**Prompts** (the authors' choices). VQA is asked in Chameleon's chat mode: the question with
the instruction block of :data:`~narrowgate_utils.models.base.VQA_INSTRUCTIONS`, closed by the
tokenizer's separator token ``sep_token`` (``<reserved08706>``; what ``ChameleonProcessor``
appends unless ``return_for_text_completion=True``). The adapter writes that token into the
prompt string itself and always encodes in completion mode, so :meth:`format_prompt` shows the
exact text. Captions and the class prompt are plain completions. Chameleon-34B (48 layers,
hidden size 8192) gets the longer class prompt of Supp. 8.2 in the patching experiment.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import torch

from ..layout import TokenLayout
from .base import VQA_INSTRUCTIONS, Adapter, ImageLike, layout_from_ids

SOI_TOKEN = "<racm3:break>"
EOI_TOKEN = "<eoss>"
IMAGE_PLACEHOLDER = "<image>"
#: file that marks a toy-world checkpoint whose image tokenizer is the repo's own codebook
TOY_IMAGE_TOKENIZER = "image_tokenizer.safetensors"
#: what Chameleon-34B's class prompt starts with in the patching experiment (Supp. 8.2: it
#: refused to complete the plain "This animal is a")
PATCH_PREFIX_34B = "Answer the question using a single word, number, or short phrase. "


class ChameleonAdapter(Adapter):
    family = "chameleon"
    model_types = ("chameleon",)
    layer_returns_tuple = True
    eoi_convention = "the <eoss> token that closes every image"
    vqa_template = "{question}\n" + VQA_INSTRUCTIONS
    chat_tasks = ("vqa",)

    @classmethod
    def model_class(cls) -> type:
        from transformers import ChameleonForConditionalGeneration

        return ChameleonForConditionalGeneration

    @property
    def layers(self) -> Sequence[torch.nn.Module]:
        return self.model.model.layers

    @cached_property
    def image_token_ids(self) -> set[int]:
        mapping = self.model.model.vocabulary_mapping
        return set(mapping.image_tokens) | {int(mapping.image_token_id)}

    @property
    def uses_toy_image_tokenizer(self) -> bool:
        return self.checkpoint_dir is not None and (Path(self.checkpoint_dir) / TOY_IMAGE_TOKENIZER).exists()

    @property
    def is_34b(self) -> bool:
        """Whether this is Chameleon-34B (hub id ``facebook/chameleon-30b``)."""
        config = self.text_config
        return config.num_hidden_layers == 48 and config.hidden_size == 8192

    def class_template(self, task: str, dataset: str) -> str:
        text = super().class_template(task, dataset)
        return PATCH_PREFIX_34B + text if task == "patch" and self.is_34b else text

    def chat_prompt(self, text: str, order: str) -> str:
        """Chat mode: the plain prompt closed by the tokenizer's separator token."""
        separator = getattr(self.tokenizer, "sep_token", None)
        if not separator:
            raise ValueError(f"The tokenizer of {self.model_id or self.family} has no sep_token, which Chameleon's chat "
                             "mode appends to the prompt.")
        return self.join(text, order) + separator

    def has_image_pipeline(self) -> bool:
        return self.uses_toy_image_tokenizer or super().has_image_pipeline()

    def encode(self, images: Sequence[ImageLike], prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        if any(prompt.count(IMAGE_PLACEHOLDER) != 1 for prompt in prompts):
            raise ValueError(f"Every Chameleon prompt needs exactly one '{IMAGE_PLACEHOLDER}' placeholder.")
        if self.uses_toy_image_tokenizer:
            return self._encode_with_toy_codebook(images, prompts)
        return dict(self.processor(images=list(images), text=list(prompts), padding=True, padding_side="left",
                                   return_for_text_completion=True, return_tensors="pt"))

    def _encode_with_toy_codebook(self, images: Sequence[ImageLike], prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Toy models: VQ codes come from the repo's codebook and replace the placeholders,
        exactly where the real processor + VQ-VAE would put them."""
        from ..toy.image_tokenizer import encode_image_tokens

        codes = encode_image_tokens(self.checkpoint_dir, images)  # [n, n_codes] BPE ids
        expanded = [p.replace(IMAGE_PLACEHOLDER, SOI_TOKEN + IMAGE_PLACEHOLDER * codes.shape[1] + EOI_TOKEN) for p in prompts]
        inputs = dict(self.tokenizer(expanded, padding=True, padding_side="left", return_tensors="pt"))
        placeholder = inputs["input_ids"] == self.token_id(IMAGE_PLACEHOLDER)
        if placeholder.sum() != codes.numel():
            raise ValueError("Toy Chameleon prompt: the number of image placeholders does not match the codebook output.")
        inputs["input_ids"] = inputs["input_ids"].masked_scatter(placeholder, codes.to(inputs["input_ids"].dtype))
        return inputs

    def locate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TokenLayout:
        return layout_from_ids(
            input_ids, attention_mask,
            image_ids=self.image_token_ids,
            soi_id=self.token_id(SOI_TOKEN),
            eoi_id=self.token_id(EOI_TOKEN),
            family=self.family,
        )
