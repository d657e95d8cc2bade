"""Tiny random Emu3: 32 px images, a 3-downsample VQ-VAE → 4×4 codes + one row separator per row."""
from __future__ import annotations

from transformers import (Emu3Config, Emu3ForConditionalGeneration, Emu3ImageProcessor, Emu3Processor)

from ..models.emu3 import (EOF_TOKEN, EOI_TOKEN, IMAGE_PLACEHOLDER, IMAGE_WRAPPER_TOKEN, ROW_SEPARATOR_TOKEN,
                           SOI_TOKEN, Emu3Adapter)
from .common import seeded_init, with_named_tokens, word_tokenizer

N_CODES = 32
IMAGE_SIZE = 32
#: Emu3Processor hard-codes a spatial downsample of 8 (three VQ downsampling stages)
DOWNSAMPLE = 8
#: tokens of the "{height}*{width}" size prefix the processor writes after <|image start|>
SIZE_WORDS = ("*", *(str(d) for d in range(10)))


def visual_token_name(index: int) -> str:
    """Emu3's BPE name of VQ code ``index`` (the model parses the six digits back)."""
    return f"<|visual token{index:06d}|>"


def build(seed: int = 0) -> Emu3Adapter:
    specials = [SOI_TOKEN, EOI_TOKEN, IMAGE_WRAPPER_TOKEN, EOF_TOKEN, ROW_SEPARATOR_TOKEN, IMAGE_PLACEHOLDER]
    tokenizer = with_named_tokens(
        word_tokenizer(specials, extra_tokens=[*SIZE_WORDS, *(visual_token_name(i) for i in range(N_CODES))]),
        image_token=IMAGE_PLACEHOLDER, boi_token=SOI_TOKEN, eoi_token=EOI_TOKEN,
        image_wrapper_token=IMAGE_WRAPPER_TOKEN, eof_token=EOF_TOKEN)
    vocab = tokenizer.get_vocab()
    config = Emu3Config(
        vocabulary_map=vocab,
        text_config=dict(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         attention_dropout=0.0, bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"],
                         pad_token_id=vocab["<pad>"]),
        vq_config=dict(codebook_size=N_CODES, embed_dim=4, latent_channels=4, base_channels=32,
                       channel_multiplier=[1, 1, 1, 1], num_res_blocks=1, attn_resolutions=[],
                       temporal_downsample_factor=1, hidden_size=32, num_attention_heads=1),
    )
    model = seeded_init(Emu3ForConditionalGeneration, config, seed)
    image_processor = Emu3ImageProcessor(min_pixels=IMAGE_SIZE * IMAGE_SIZE, max_pixels=IMAGE_SIZE * IMAGE_SIZE,
                                         spatial_factor=DOWNSAMPLE)
    processor = Emu3Processor(image_processor=image_processor, tokenizer=tokenizer)
    return Emu3Adapter(model, processor, model_id="tiny-emu3")
