"""Qwen2-VL and Qwen2.5-VL (Qwen/Qwen2-VL-7B-Instruct, Qwen/Qwen2.5-VL-7B-Instruct).

Sequence layout (the chat template writes the three tokens, ``Qwen2VLProcessor`` expands the
pad token to one per merged 2×2 patch group)::

    [text] <|vision_start|> <|image_pad|>×N <|vision_end|> [text]

[SOI] is ``<|vision_start|>``, [EOI] is ``<|vision_end|>``; there are no row separators.

**Note for interventions (4D attention masks).** These models use multimodal rotary
positions (M-RoPE). A forward that receives a 2D mask computes ``position_ids`` itself via
``model.model.get_rope_index(input_ids, mm_token_type_ids, image_grid_thw, attention_mask)``;
with a *4D* mask that call fails (it indexes the mask as 2D: ``IndexError`` in transformers
5.23). Compute ``position_ids`` from the 2D mask first and pass them together with the 4D
mask (:meth:`Qwen2VLAdapter.rope_position_ids`); ``generate`` needs the same care.

``Qwen2VLProcessor`` needs a (torchvision-only) video processor in transformers 5.23; without
torchvision the adapter uses :class:`~narrowgate_utils.models.processors.Qwen2VLImageOnlyProcessor`.

**Prompts.** The Qwen2-VL / Qwen2.5-VL chat template with its default system message:
``<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n``
``<|vision_start|><|image_pad|><|vision_end|>{text}<|im_end|>\n<|im_start|>assistant\n``.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..layout import TokenLayout
from .base import Adapter, ImageLike, layout_from_ids
from .processors import Qwen2VLImageOnlyProcessor, complete_processor

IMAGE_PLACEHOLDER = "<|image_pad|>"
SOI_TOKEN = "<|vision_start|>"
EOI_TOKEN = "<|vision_end|>"
IMAGE_BLOCK = f"{SOI_TOKEN}{IMAGE_PLACEHOLDER}{EOI_TOKEN}"


class Qwen2VLAdapter(Adapter):
    family = "qwen2_vl"
    model_types = ("qwen2_vl", "qwen2_5_vl")
    eoi_convention = "the <|vision_end|> token that closes every image"
    chat_template = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{body}<|im_end|>\n"
                     "<|im_start|>assistant\n")
    turn_markers = ("<|im_start|>", "<|im_end|>")

    def __init__(self, model: torch.nn.Module, processor: Any, model_id: str | Path = "",
                 checkpoint_dir: str | Path | None = None, remote: bool | str = False) -> None:
        super().__init__(model, processor, model_id, checkpoint_dir, remote)
        self.processor = complete_processor(processor, checkpoint_dir or model_id, Qwen2VLImageOnlyProcessor)

    @classmethod
    def model_class(cls) -> type:
        """``AutoModelForImageTextToText`` resolves to the Qwen2-VL or Qwen2.5-VL class from the config."""
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText

    @property
    def layers(self) -> Sequence[torch.nn.Module]:
        return self.model.model.language_model.layers

    @property
    def image_prompt(self) -> str:
        return IMAGE_BLOCK

    def encode(self, images: Sequence[ImageLike], prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        if any(prompt.count(IMAGE_BLOCK) != 1 for prompt in prompts):
            raise ValueError(f"Every Qwen2-VL prompt needs exactly one '{IMAGE_BLOCK}' image block.")
        return dict(self.processor(images=list(images), text=list(prompts), padding=True, padding_side="left",
                                   return_tensors="pt"))

    def locate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TokenLayout:
        return layout_from_ids(
            input_ids, attention_mask,
            image_ids={int(self.model.config.image_token_id)},
            soi_id=int(self.model.config.vision_start_token_id),
            eoi_id=int(self.model.config.vision_end_token_id),
            family=self.family,
        )

    def rope_position_ids(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """M-RoPE ``position_ids`` [3, batch, seq] for ``inputs`` built by :meth:`encode` (2D mask).

        Pass them to ``forward`` together with a 4D attention mask, which makes the model skip
        computing them itself.
        """
        if inputs["attention_mask"].ndim != 2:
            raise ValueError("rope_position_ids needs the processor's 2D attention_mask, not a 4D mask.")
        position_ids, _ = self.model.model.get_rope_index(
            inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs.get("image_grid_thw"), attention_mask=inputs["attention_mask"])
        return position_ids
