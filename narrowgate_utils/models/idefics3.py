"""Idefics3 and SmolVLM (HuggingFaceM4/Idefics3-8B-Llama3, HuggingFaceTB/SmolVLM-Instruct, SmolVLM2).

Non-native VLMs: a SigLIP tower whose features are pixel-shuffled and projected into a Llama /
SmolLM2 language model. ``model_type`` is ``idefics3`` (Idefics3, SmolVLM-Instruct) or
``smolvlm`` (SmolVLM2); both load through ``AutoModelForImageTextToText`` and expand an image
the same way. The language model layers are ``model.model.text_model.layers`` (a layer returns
a Tensor).

**Token layout.** With image splitting (the checkpoints' default) the processor resizes the
image to its ``size["longest_edge"]``, cuts it into ``rows × cols`` tiles of
``max_image_size["longest_edge"]`` pixels and adds a downscaled global view; each tile and the
global view become ``image_seq_len`` ``<image>`` features. ``<image>`` in a prompt expands to::

    <fake_token_around_image><row_1_col_1><image>×n <fake_token_around_image><row_1_col_2><image>×n \\n
    …
    <fake_token_around_image><row_R_col_C><image>×n \\n\\n
    <fake_token_around_image><global-img><image>×n <fake_token_around_image>

(``do_image_splitting=False`` gives the last line only). Every image is scaled to the longest edge
first, so all square images (the chapters' ``image_size``) share one layout: 4×4 tiles + the global
view = 17 × 81 features for SmolVLM-Instruct (1536 px, 384 px tiles).
This adapter reads that block as follows:

* [SOI] is the first ``<fake_token_around_image>``, which opens the first tile (or the global view).
* Image content (``image_positions``) is every ``<image>`` feature, of the tiles and of the
  global view, in sequence order.
* Row separators are the newline tokens that end each row of tiles: ``\\n`` after rows
  1…R-1 and ``\\n\\n`` (one token in the SmolLM2 and Llama-3 tokenizers) after row R, which also
  precedes the global view. In general: every token inside the block that is neither image
  content nor a tile marker (two after row R with a tokenizer that splits ``\\n\\n``).
* Tile markers (``layout.extra["tile_markers"]``) are the ``<fake_token_around_image>`` that opens
  each tile and the global view, and the tag after it (``<row_r_col_c>`` or ``<global-img>``);
  ``layout.extra["grid"]`` is ``(R, C)``, ``(0, 0)`` without splitting.
* [EOI] is, by this package's convention, the last ``<fake_token_around_image>``: the token
  that closes the global view and with it the whole image.

**Prompts.** The checkpoints' chat format: ``User:<image>{text}<end_of_utterance>\\nAssistant:``
(``User: `` with a space when the turn opens with text). SmolVLM's template starts with
``<|im_start|>``, its BOS token, which its tokenizer does not add: as for Pixtral, every prompt
starts with the BOS when the tokenizer lacks it (:attr:`Adapter.missing_bos`); Idefics3's
Llama-3 tokenizer adds ``<|begin_of_text|>`` itself.

In transformers 5.23 ``SmolVLMProcessor`` needs a torchvision video processor and the
``num2words`` package; without them the adapter uses ``Idefics3Processor`` around the
checkpoint's image processor, which expands images identically.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..layout import TokenLayout
from .base import Adapter, ImageLike
from .processors import complete_processor

IMAGE_PLACEHOLDER = "<image>"
BOUNDARY_TOKEN = "<fake_token_around_image>"
GLOBAL_IMAGE_TOKEN = "<global-img>"
END_OF_UTTERANCE = "<end_of_utterance>"


def tile_tag(row: int, col: int) -> str:
    """The marker of tile (``row``, ``col``), 1-based, written after the tile's boundary token."""
    return f"<row_{row}_col_{col}>"


class Idefics3Adapter(Adapter):
    family = "idefics3"
    model_types = ("idefics3", "smolvlm")
    eoi_convention = "the <fake_token_around_image> that closes the global view, the last token of the image block"
    chat_template = "User:{body}" + END_OF_UTTERANCE + "\nAssistant:"
    turn_markers = (END_OF_UTTERANCE, "User:", "Assistant:")

    def __init__(self, model: torch.nn.Module, processor: Any, model_id: str | Path = "",
                 checkpoint_dir: str | Path | None = None, remote: bool | str = False) -> None:
        from transformers import Idefics3Processor

        super().__init__(model, processor, model_id, checkpoint_dir, remote)
        config = model.config
        vision = config.vision_config
        seq_len = (vision.image_size // vision.patch_size) ** 2 // config.scale_factor ** 2
        self.processor = complete_processor(
            processor, checkpoint_dir or model_id,
            lambda image_processor, tokenizer: Idefics3Processor(image_processor, tokenizer, image_seq_len=seq_len))

    @classmethod
    def model_class(cls) -> type:
        """``AutoModelForImageTextToText`` resolves to the Idefics3 or SmolVLM class from the config."""
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText

    @property
    def layers(self) -> Sequence[torch.nn.Module]:
        return self.model.model.text_model.layers

    @property
    def prompt_prefix(self) -> str:
        return "" if self.toy else self.missing_bos

    def chat_prompt(self, text: str, order: str) -> str:
        """The user turn; a turn that opens with text starts ``User: `` (the template's space)."""
        body = self.join(text, order)
        return self.chat_template.replace("{body}", body if order == "image_first" else " " + body)

    def encode(self, images: Sequence[ImageLike], prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        if any(prompt.count(IMAGE_PLACEHOLDER) != 1 for prompt in prompts):
            raise ValueError(f"Every {self.family} prompt needs exactly one '{IMAGE_PLACEHOLDER}' placeholder.")
        return dict(self.processor(images=[[image] for image in images], text=list(prompts), padding=True,
                                   padding_side="left", return_tensors="pt"))

    def locate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TokenLayout:
        ids = input_ids.tolist()
        offset = self.pad_offset(attention_mask)
        image_id, boundary_id = self.token_id(IMAGE_PLACEHOLDER), self.token_id(BOUNDARY_TOKEN)
        image = [i for i, t in enumerate(ids) if t == image_id and i >= offset]
        if not image:
            raise ValueError(f"Image span not found. No image tokens found in the {self.family} prompt: the prompt "
                             f"needs an '{IMAGE_PLACEHOLDER}' placeholder and an image.")
        soi, eoi = image[0] - 2, image[-1] + 1
        if soi < offset or ids[soi] != boundary_id or eoi >= len(ids) or ids[eoi] != boundary_id:
            raise ValueError(f"{self.family}: the image block is not enclosed by {BOUNDARY_TOKEN} tokens.")
        openers = [i for i in range(soi, eoi) if ids[i] == boundary_id]
        markers = tuple(sorted({*openers, *(i + 1 for i in openers)}))
        content = set(image)
        separators = tuple(i for i in range(soi, eoi) if i not in content and i not in markers)
        # a row of tiles ends where separators precede the next opener (a tile row or the global view)
        rows = sum(ids[i - 1] != image_id for i in openers[1:])
        grid = (rows, (len(openers) - 1) // rows) if rows else (0, 0)
        return TokenLayout(
            seq_len=len(ids),
            image_positions=tuple(image),
            eoi=eoi,
            soi=soi,
            row_separators=separators,
            text_positions=tuple(range(eoi + 1, len(ids))),
            prompt_text_positions=tuple(range(offset, soi)),
            pad_offset=offset,
            extra={"tile_markers": markers, "grid": grid},
        )
