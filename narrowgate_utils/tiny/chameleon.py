"""Tiny random Chameleon: 32 px images, a 2-downsample VQ-VAE → 8×8 = 64 image codes."""
from __future__ import annotations

from transformers import ChameleonConfig, ChameleonForConditionalGeneration, ChameleonProcessor
from transformers.models.chameleon.image_processing_pil_chameleon import ChameleonImageProcessorPil

from ..models.chameleon import EOI_TOKEN, IMAGE_PLACEHOLDER, SOI_TOKEN, ChameleonAdapter
from .common import seeded_init, word_tokenizer

N_CODES = 32
IMAGE_SIZE = 32
IMAGE_SEQ_LENGTH = 64


def image_code_name(index: int) -> str:
    """Chameleon's BPE name of VQ code ``index``: digits spelled with letters A–J."""
    return "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(index)) + "Z"


def build(seed: int = 0) -> ChameleonAdapter:
    tokenizer = word_tokenizer([SOI_TOKEN, EOI_TOKEN, IMAGE_PLACEHOLDER, "<reserved08706>"],
                               extra_tokens=[image_code_name(i) for i in range(N_CODES)])
    tokenizer.sep_token = "<reserved08706>"
    vocab = tokenizer.get_vocab()
    config = ChameleonConfig(
        vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=512, vocabulary_map=vocab,
        bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"],
        vq_config=dict(embed_dim=16, num_embeddings=N_CODES, latent_channels=16, resolution=IMAGE_SIZE,
                       base_channels=32, channel_multiplier=[1, 1, 2], num_res_blocks=1),
    )
    model = seeded_init(ChameleonForConditionalGeneration, config, seed)
    image_processor = ChameleonImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                                 crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = ChameleonProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                   image_seq_length=IMAGE_SEQ_LENGTH)
    return ChameleonAdapter(model, processor, model_id="tiny-chameleon")
