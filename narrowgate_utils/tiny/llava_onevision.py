"""Tiny random LLaVA-OneVision: a 32 px SigLIP tower (8 px patches), a Qwen2 LM, any-res up to 64 px.

Uses :class:`~narrowgate_utils.models.processors.LlavaOnevisionImageOnlyProcessor`
(``LlavaOnevisionProcessor`` needs a torchvision video processor in transformers 5.23)."""
from __future__ import annotations

from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, SiglipVisionConfig
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil

from ..models.llava import IMAGE_PLACEHOLDER, LlavaOnevisionAdapter
from ..models.processors import LlavaOnevisionImageOnlyProcessor
from .common import seeded_init, word_tokenizer
from .llava_next import GRID_PINPOINTS

IMAGE_SIZE = 32
PATCH_SIZE = 8
VIDEO_PLACEHOLDER = "<video>"


def build(seed: int = 0) -> LlavaOnevisionAdapter:
    tokenizer = word_tokenizer([IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER])
    vocab = tokenizer.get_vocab()
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, vision_use_head=False)
    text = dict(model_type="qwen2", vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"])
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=vocab[IMAGE_PLACEHOLDER],
                                  video_token_index=vocab[VIDEO_PLACEHOLDER], image_grid_pinpoints=GRID_PINPOINTS,
                                  vision_feature_select_strategy="full", vision_feature_layer=-1,
                                  vision_aspect_ratio="anyres_max_9")
    model = seeded_init(LlavaOnevisionForConditionalGeneration, config, seed)
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                                      image_grid_pinpoints=GRID_PINPOINTS)
    processor = LlavaOnevisionImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                                 num_image_tokens=(IMAGE_SIZE // PATCH_SIZE) ** 2,
                                                 vision_feature_select_strategy="full")
    return LlavaOnevisionAdapter(model, processor, model_id="tiny-llava-onevision")
