"""Tiny random Pixtral: LLaVA with a 2-layer Pixtral tower, 8 px patches, longest edge 32 px
→ a 4×4 grid for square images: 16 [IMG] + 3 [IMG_BREAK] + [IMG_END].

Uses :class:`~narrowgate_utils.models.processors.PixtralImageOnlyProcessor` (transformers
5.23's ``PixtralProcessor`` cannot be imported without torchvision)."""
from __future__ import annotations

from transformers import LlavaConfig, LlavaForConditionalGeneration, PixtralVisionConfig
from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

from ..models.pixtral import EOI_TOKEN, IMAGE_PLACEHOLDER, ROW_SEPARATOR_TOKEN, PixtralAdapter
from ..models.processors import PixtralImageOnlyProcessor
from .common import seeded_init, word_tokenizer
from .llava import tiny_llama

IMAGE_SIZE = 32
PATCH_SIZE = 8


def build(seed: int = 0) -> PixtralAdapter:
    tokenizer = word_tokenizer([IMAGE_PLACEHOLDER, ROW_SEPARATOR_TOKEN, EOI_TOKEN])
    vocab = tokenizer.get_vocab()
    vision = PixtralVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, head_dim=16)
    config = LlavaConfig(vision_config=vision, text_config=tiny_llama(vocab), image_token_id=vocab[IMAGE_PLACEHOLDER],
                         vision_feature_select_strategy="full", vision_feature_layer=-1,
                         multimodal_projector_bias=True, projector_hidden_act="gelu")
    model = seeded_init(LlavaForConditionalGeneration, config, seed)
    image_processor = PixtralImageProcessorPil(size={"longest_edge": IMAGE_SIZE},
                                               patch_size={"height": PATCH_SIZE, "width": PATCH_SIZE})
    processor = PixtralImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
                                          image_token=IMAGE_PLACEHOLDER, image_break_token=ROW_SEPARATOR_TOKEN,
                                          image_end_token=EOI_TOKEN)
    return PixtralAdapter(model, processor, model_id="tiny-pixtral")
