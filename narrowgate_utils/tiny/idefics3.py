"""Tiny random Idefics3 (and SmolVLM): a 2-layer SigLIP-style tower on 32 px tiles with 8 px
patches, pixel-shuffled 2×2 → 4 features per tile, a Llama LM.

Images are resized to a longest edge of 64 px and split into 32 px tiles plus a global view: a
square image → 2×2 tiles + global = 5 × 4 = 20 ``<image>`` features, 2 row separators. The
tokenizer keeps ``\\n`` and ``\\n\\n`` as tokens, as the real ones do, and starts SmolVLM's prompts
with its BOS ``<|im_start|>`` (it does not add it itself)."""
from __future__ import annotations

from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor, SmolVLMConfig,
                          SmolVLMForConditionalGeneration)
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

from ..models.idefics3 import (BOUNDARY_TOKEN, END_OF_UTTERANCE, GLOBAL_IMAGE_TOKEN, IMAGE_PLACEHOLDER,
                               Idefics3Adapter, tile_tag)
from .common import seeded_init, word_tokenizer
from .llava import tiny_llama

IMAGE_SIZE = 32
PATCH_SIZE = 8
SCALE_FACTOR = 2
#: ``<image>`` features per tile: (32 / 8)² patches pixel-shuffled by 2×2
IMAGE_SEQ_LEN = (IMAGE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR ** 2
#: the processor resizes every image to this longest edge before cutting IMAGE_SIZE tiles
LONGEST_EDGE = 2 * IMAGE_SIZE
BOS = "<|im_start|>"
#: the processor looks up a tag for up to 6 × 6 tiles
TILE_TAGS = tuple(tile_tag(row, col) for row in range(1, 7) for col in range(1, 7))


def build(seed: int = 0, variant: str = "idefics3") -> Idefics3Adapter:
    """``variant='idefics3'`` builds Idefics3 (SmolVLM-Instruct's class), ``'smolvlm'`` SmolVLM2's."""
    specials = [BOUNDARY_TOKEN, IMAGE_PLACEHOLDER, GLOBAL_IMAGE_TOKEN, END_OF_UTTERANCE, *TILE_TAGS, "\n\n", "\n"]
    tokenizer = word_tokenizer(specials, extra_tokens=["User", "Assistant"], bos=BOS)
    vocab = tokenizer.get_vocab()
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
    if variant == "idefics3":
        config_cls, model_cls = Idefics3Config, Idefics3ForConditionalGeneration
    elif variant == "smolvlm":
        config_cls, model_cls = SmolVLMConfig, SmolVLMForConditionalGeneration
    else:
        raise ValueError(f"Unknown Idefics3 variant '{variant}'; use 'idefics3' or 'smolvlm'.")
    config = config_cls(text_config=tiny_llama(vocab, bos=BOS).to_dict(), vision_config=vision,
                        scale_factor=SCALE_FACTOR, image_token_id=vocab[IMAGE_PLACEHOLDER], pad_token_id=vocab["<pad>"])
    model = seeded_init(model_cls, config, seed)
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": LONGEST_EDGE},
                                                max_image_size={"longest_edge": IMAGE_SIZE})
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=IMAGE_SEQ_LEN)
    return Idefics3Adapter(model, processor, model_id=f"tiny-{variant}")
