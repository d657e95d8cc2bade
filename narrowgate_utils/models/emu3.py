"""Emu3 (BAAI/Emu3-Chat-hf, BAAI/Emu3-Gen-hf): an early-fusion, multimodal-output VLM like Chameleon.

Sequence layout written by ``Emu3Processor`` (transformers 5.23)::

    <s> [text] <|image start|> {h}*{w} <|image token|> (<image>×w <image>)×h <|extra_201|> <|image end|> [text]

``{h}*{w}`` is the code grid, spelled as ordinary text tokens. The ``h·(w+1)`` ``<image>``
placeholders are replaced inside the model by the embeddings of the VQ codes, where the
last placeholder of every row becomes the end-of-line token ``<|extra_200|>``: **row
separators therefore share the placeholder id in ``input_ids``** and are found by their
place in the grid (every (w+1)-th placeholder, the last image row's one included).

* [SOI] is ``<|image start|>``; the size prefix and ``<|image token|>`` between it and the
  first code are listed in ``layout.extra["image_meta"]`` (they are part of ``image_span``).
* [EOI] is ``<|image end|>``, the token that closes every image, the analogue of
  Chameleon's ``<eoss>``. It is preceded by the end-of-frame token ``<|extra_201|>``
  (``layout.extra["eof"]``), which follows the last row separator.

**Prompts.** Emu3-Chat's format: the system sentence of the original Emu3 chat template and
the user/assistant turn of the ``BAAI/Emu3-Chat-hf`` chat template (images first, no
separator), i.e. ``You are a helpful assistant. USER: <image>{text} ASSISTANT:``;
``Emu3Processor`` adds the BOS token itself. **Image size:** the processor resizes every image
into its pixel budget (``min_pixels``..``max_pixels``, 512²..1024² by default); with
``build_batch(image_size=s)`` both are set to s² (the authors: 256² for VQA and captions).
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from ..layout import TokenLayout
from .base import Adapter, ImageLike

SOI_TOKEN = "<|image start|>"
EOI_TOKEN = "<|image end|>"
IMAGE_PLACEHOLDER = "<image>"
IMAGE_WRAPPER_TOKEN = "<|image token|>"
EOF_TOKEN = "<|extra_201|>"
#: embedded in place of the last placeholder of every row (never present in ``input_ids``)
ROW_SEPARATOR_TOKEN = "<|extra_200|>"
_GRID = re.compile(r"(\d+)\s*\*\s*(\d+)")


class Emu3Adapter(Adapter):
    family = "emu3"
    model_types = ("emu3",)
    eoi_convention = "the <|image end|> token that closes every image (after <|extra_201|>)"
    chat_template = "You are a helpful assistant. USER: {body} ASSISTANT:"
    turn_markers = ("USER:", "ASSISTANT:")

    @classmethod
    def model_class(cls) -> type:
        from transformers import Emu3ForConditionalGeneration

        return Emu3ForConditionalGeneration

    @property
    def layers(self) -> Sequence[torch.nn.Module]:
        return self.model.model.text_model.layers

    @contextmanager
    def fixed_image_size(self, image_size: int | None) -> Iterator[None]:
        """Pixel budget min_pixels = max_pixels = ``image_size``² while encoding (then restored)."""
        if image_size is None:
            yield
            return
        image_processor = self.processor.image_processor
        saved = image_processor.min_pixels, image_processor.max_pixels
        image_processor.min_pixels = image_processor.max_pixels = image_size * image_size
        try:
            yield
        finally:
            image_processor.min_pixels, image_processor.max_pixels = saved

    def encode(self, images: Sequence[ImageLike], prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        if any(prompt.count(IMAGE_PLACEHOLDER) != 1 for prompt in prompts):
            raise ValueError(f"Every Emu3 prompt needs exactly one '{IMAGE_PLACEHOLDER}' placeholder.")
        return dict(self.processor(images=list(images), text=list(prompts), padding=True, padding_side="left",
                                   return_tensors="pt"))

    def locate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TokenLayout:
        ids = input_ids.tolist()
        offset = self.pad_offset(attention_mask)
        image_id = self.token_id(IMAGE_PLACEHOLDER)
        placeholders = [i for i, t in enumerate(ids) if t == image_id and i >= offset]
        if not placeholders:
            raise ValueError(f"Image span not found: no '{IMAGE_PLACEHOLDER}' tokens in the emu3 prompt; the prompt "
                             "needs an image placeholder and an image passed to the processor.")
        first, last = placeholders[0], placeholders[-1]
        if placeholders != list(range(first, last + 1)):
            raise ValueError("emu3: the image placeholders are not one contiguous block (one image per prompt).")
        wrapper = first - 1
        if wrapper < 0 or ids[wrapper] != self.token_id(IMAGE_WRAPPER_TOKEN):
            raise ValueError(f"emu3: '{IMAGE_WRAPPER_TOKEN}' does not precede the image codes.")
        soi_id = self.token_id(SOI_TOKEN)
        starts = [i for i in range(offset, wrapper) if ids[i] == soi_id]
        if not starts:
            raise ValueError(f"emu3: the start-of-image token '{SOI_TOKEN}' does not precede the image span.")
        soi = starts[-1]
        grid = _GRID.search(self.tokenizer.decode(ids[soi + 1:wrapper]))
        if grid is None:
            raise ValueError(f"emu3: no '{{h}}*{{w}}' size prefix between '{SOI_TOKEN}' and '{IMAGE_WRAPPER_TOKEN}'.")
        height, width = int(grid.group(1)), int(grid.group(2))
        if height * (width + 1) != len(placeholders):
            raise ValueError(f"emu3: a {height}x{width} grid needs {height * (width + 1)} placeholders (one row "
                             f"separator per row), found {len(placeholders)}.")
        eof, eoi = last + 1, last + 2
        if eoi >= len(ids) or ids[eof] != self.token_id(EOF_TOKEN) or ids[eoi] != self.token_id(EOI_TOKEN):
            raise ValueError(f"emu3: '{EOF_TOKEN}{EOI_TOKEN}' does not close the image span.")
        separators = tuple(first + row * (width + 1) + width for row in range(height))
        content = tuple(i for i in placeholders if (i - first) % (width + 1) != width)
        return TokenLayout(
            seq_len=len(ids),
            image_positions=content,
            eoi=eoi,
            soi=soi,
            row_separators=separators,
            text_positions=tuple(range(eoi + 1, len(ids))),
            prompt_text_positions=tuple(range(offset, soi)),
            pad_offset=offset,
            extra={"eof": eof, "grid": (height, width), "image_meta": tuple(range(soi + 1, first))},
        )
