"""Tiny random Qwen2-VL (and Qwen2.5-VL): 8 px patches merged 2×2; a 64×64 image → 4×4 = 16 tokens."""
from __future__ import annotations

from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                          Qwen2VLForConditionalGeneration)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from ..models.processors import Qwen2VLImageOnlyProcessor
from ..models.qwen2vl import EOI_TOKEN, IMAGE_PLACEHOLDER, SOI_TOKEN, Qwen2VLAdapter
from .common import seeded_init, word_tokenizer

IMAGE_SIZE = 64
PATCH_SIZE = 8
MERGE_SIZE = 2
VIDEO_PLACEHOLDER = "<|video_pad|>"


def _config(config_cls: type, vocab: dict[str, int], vision: dict) -> object:
    return config_cls(
        text_config=dict(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                         bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"]),
        vision_config=dict(depth=2, num_heads=2, patch_size=PATCH_SIZE, spatial_merge_size=MERGE_SIZE,
                           temporal_patch_size=2, **vision),
        image_token_id=vocab[IMAGE_PLACEHOLDER], video_token_id=vocab[VIDEO_PLACEHOLDER],
        vision_start_token_id=vocab[SOI_TOKEN], vision_end_token_id=vocab[EOI_TOKEN],
    )


def build(seed: int = 0, version: str = "2") -> Qwen2VLAdapter:
    """``version='2'`` builds Qwen2-VL, ``'2.5'`` Qwen2.5-VL (same adapter and processor)."""
    tokenizer = word_tokenizer([SOI_TOKEN, IMAGE_PLACEHOLDER, EOI_TOKEN, VIDEO_PLACEHOLDER])
    vocab = tokenizer.get_vocab()
    if version == "2":
        config = _config(Qwen2VLConfig, vocab, dict(embed_dim=32, hidden_size=64, mlp_ratio=2))
        model_cls = Qwen2VLForConditionalGeneration
    elif version == "2.5":
        vision = dict(hidden_size=32, intermediate_size=64, out_hidden_size=64,
                      window_size=2 * PATCH_SIZE * MERGE_SIZE, fullatt_block_indexes=[1])
        config = _config(Qwen2_5_VLConfig, vocab, vision)
        model_cls = Qwen2_5_VLForConditionalGeneration
    else:
        raise ValueError(f"Unknown Qwen-VL version '{version}'; use '2' or '2.5'.")
    model = seeded_init(model_cls, config, seed)
    pixels = IMAGE_SIZE * IMAGE_SIZE
    image_processor = Qwen2VLImageProcessorPil(min_pixels=pixels, max_pixels=pixels, patch_size=PATCH_SIZE,
                                               merge_size=MERGE_SIZE, temporal_patch_size=2)
    processor = Qwen2VLImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return Qwen2VLAdapter(model, processor, model_id=f"tiny-qwen{version}-vl")
