"""The toy world as loaders and adapters read it: model names and cache directories
(:mod:`.registry`), the native models' image codebook (:mod:`.image_tokenizer`), the
non-native model's pixel processor (:mod:`.image_processor`) and the word-level tokenizers
(:mod:`.text_tokenizer`).

Toy models are ordinary Hugging Face checkpoint directories (``toy_model_dir(name)``) that
load with ``from_pretrained`` and the model adapters, exactly like real checkpoints. They are
trained by :mod:`narrowgate_utils.training` (``narrowgate toy train``), never on load.
"""
from __future__ import annotations

from .registry import TOY_MODEL_NAMES, cache_dir, ensure_toy_model, toy_model_dir, toy_report

__all__ = ["TOY_MODEL_NAMES", "cache_dir", "ensure_toy_model", "toy_model_dir", "toy_report"]
