"""Toy model architectures built from config: Chameleon (native) and LLaVA (non-native)."""
from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..toy.text_tokenizer import BOS, EOS, IMAGE_TOKEN, PAD
from .planting import PLANT_ATTENTION
from .recipes import ToyRecipe


def build_chameleon(recipe: ToyRecipe, tokenizer: PreTrainedTokenizerBase, n_codebook: int) -> PreTrainedModel:
    """A randomly initialised (seeded) toy Chameleon; planted recipes use the planting attention."""
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    vocab = tokenizer.get_vocab()
    config = ChameleonConfig(
        vocab_size=len(vocab), hidden_size=recipe.hidden_size, intermediate_size=2 * recipe.hidden_size,
        num_hidden_layers=recipe.layers, num_attention_heads=recipe.heads, num_key_value_heads=recipe.heads,
        max_position_embeddings=256, vocabulary_map=vocab, bos_token_id=vocab[BOS], eos_token_id=vocab[EOS],
        pad_token_id=vocab[PAD], tie_word_embeddings=recipe.tie_embeddings,
        vq_config=dict(embed_dim=8, num_embeddings=n_codebook, latent_channels=8, resolution=32, base_channels=32,
                       channel_multiplier=[1], num_res_blocks=1),
    )
    config._attn_implementation = PLANT_ATTENTION if recipe.plant else "eager"
    torch.manual_seed(recipe.seed)
    return ChameleonForConditionalGeneration(config)


def build_llava(recipe: ToyRecipe, tokenizer: PreTrainedTokenizerBase, tower: nn.Module) -> PreTrainedModel:
    """A randomly initialised (seeded) toy LLaVA around the frozen pretrained CLIP ``tower``."""
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vocab = tokenizer.get_vocab()
    text_config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=recipe.hidden_size, intermediate_size=2 * recipe.hidden_size,
        num_hidden_layers=recipe.layers, num_attention_heads=recipe.heads, num_key_value_heads=recipe.heads,
        max_position_embeddings=256, bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], pad_token_id=vocab[PAD],
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=tower.config.to_dict(), text_config=text_config.to_dict(), image_token_id=vocab[IMAGE_TOKEN],
        projector_hidden_act="gelu", vision_feature_select_strategy="default", vision_feature_layer=-1,
        image_seq_length=(tower.config.image_size // tower.config.patch_size) ** 2,
    )
    config.vision_config.model_type = "clip_vision_model"
    config._attn_implementation = "eager"
    torch.manual_seed(recipe.seed)
    model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(tower.state_dict())
    model.model.vision_tower.requires_grad_(False)
    return model


def count_parameters(model: nn.Module, family: str) -> dict[str, int]:
    """Parameter counts: total, language model, vision (and Chameleon's unused VQ-VAE or LLaVA's projector)."""
    total = sum(p.numel() for p in model.parameters())
    if family == "chameleon":
        unused = sum(p.numel() for p in model.model.vqmodel.parameters())
        return {"total": total, "language_model": total - unused, "vision": 0, "unused_vqmodel": unused}
    vision = sum(p.numel() for p in model.model.vision_tower.parameters())
    projector = sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    return {"total": total, "language_model": total - vision - projector, "vision": vision, "projector": projector}
