"""Tiny random LLaVA-1.5: a 32 px CLIP tower with 8 px patches → 16 image tokens, a Llama LM."""
from __future__ import annotations

from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from ..models.llava import IMAGE_PLACEHOLDER, LlavaAdapter
from .common import seeded_init, word_tokenizer

IMAGE_SIZE = 32
PATCH_SIZE = 8


def tiny_clip_vision(hidden: int = 32) -> CLIPVisionConfig:
    return CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
                            image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=hidden)


def tiny_llama(vocab: dict[str, int], bos: str = "<s>") -> LlamaConfig:
    return LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                       bos_token_id=vocab[bos], eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"])


def clip_image_processor() -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def build(seed: int = 0) -> LlavaAdapter:
    tokenizer = word_tokenizer([IMAGE_PLACEHOLDER])
    vocab = tokenizer.get_vocab()
    config = LlavaConfig(vision_config=tiny_clip_vision(), text_config=tiny_llama(vocab),
                         image_token_id=vocab[IMAGE_PLACEHOLDER], vision_feature_select_strategy="default",
                         vision_feature_layer=-1)
    model = seeded_init(LlavaForConditionalGeneration, config, seed)
    processor = LlavaProcessor(image_processor=clip_image_processor(), tokenizer=tokenizer, patch_size=PATCH_SIZE,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return LlavaAdapter(model, processor, model_id="tiny-llava")
