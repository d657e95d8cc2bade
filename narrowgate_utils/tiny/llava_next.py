"""Tiny random LLaVA-NeXT: a 32 px CLIP tower (8 px patches), any-res grids up to 64 px.

A square 32 px image → 16 base features + a 2×2-tile (8×8 feature) high-res grid with one
``image_newline`` feature per row: 16 + 64 + 8 = 88 ``<image>`` tokens."""
from __future__ import annotations

from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

from ..models.llava import IMAGE_PLACEHOLDER, LlavaNextAdapter
from .common import seeded_init, word_tokenizer
from .llava import IMAGE_SIZE, PATCH_SIZE, tiny_clip_vision, tiny_llama

#: any-res resolutions (multiples of the 32 px tile)
GRID_PINPOINTS = [[32, 64], [64, 32], [64, 64]]


def build(seed: int = 0) -> LlavaNextAdapter:
    tokenizer = word_tokenizer([IMAGE_PLACEHOLDER])
    vocab = tokenizer.get_vocab()
    config = LlavaNextConfig(vision_config=tiny_clip_vision(), text_config=tiny_llama(vocab),
                             image_token_index=vocab[IMAGE_PLACEHOLDER], image_grid_pinpoints=GRID_PINPOINTS,
                             vision_feature_select_strategy="default", vision_feature_layer=-1)
    model = seeded_init(LlavaNextForConditionalGeneration, config, seed)
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                                 crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                                 image_grid_pinpoints=GRID_PINPOINTS)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return LlavaNextAdapter(model, processor, model_id="tiny-llava-next")
