"""Tiny random Janus: a 32 px SigLIP-style tower with 8 px patches → 16 image tokens, a Llama LM."""
from __future__ import annotations

from transformers import JanusConfig, JanusForConditionalGeneration, JanusProcessor
from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil

from ..models.janus import EOI_TOKEN, IMAGE_PLACEHOLDER, SOI_TOKEN, JanusAdapter
from .common import seeded_init, with_named_tokens, word_tokenizer
from .llava import tiny_llama

IMAGE_SIZE = 32
PATCH_SIZE = 8
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2


def build(seed: int = 0) -> JanusAdapter:
    tokenizer = with_named_tokens(word_tokenizer([IMAGE_PLACEHOLDER, SOI_TOKEN, EOI_TOKEN]),
                                  image_token=IMAGE_PLACEHOLDER, boi_token=SOI_TOKEN, eoi_token=EOI_TOKEN)
    vocab = tokenizer.get_vocab()
    text = tiny_llama(vocab)
    config = JanusConfig(
        text_config=text.to_dict(),
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=IMAGE_SIZE,
                           patch_size=PATCH_SIZE, projection_dim=text.hidden_size, depth=2,
                           num_image_tokens=NUM_IMAGE_TOKENS),
        vq_config=dict(embed_dim=4, num_embeddings=32, latent_channels=16, base_channels=32,
                       channel_multiplier=[1, 1, 1, 1], num_res_blocks=1, projection_dim=text.hidden_size,
                       image_token_embed_dim=text.hidden_size),
        image_token_id=vocab[IMAGE_PLACEHOLDER],
    )
    model = seeded_init(JanusForConditionalGeneration, config, seed)
    image_processor = JanusImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = JanusProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               num_image_tokens=NUM_IMAGE_TOKENS)
    return JanusAdapter(model, processor, model_id="tiny-janus")
