"""The toy world's tokenizers, encoders and models, trained by the repo itself.

Toy models are ordinary Hugging Face checkpoint directories (``toy_model_dir(name)``) that
load with ``from_pretrained`` and the model adapters, exactly like real checkpoints.
"""
from __future__ import annotations

from .registry import TOY_MODEL_NAMES, cache_dir, ensure_toy_model, toy_model_dir, toy_report

__all__ = ["TOY_MODEL_NAMES", "cache_dir", "ensure_toy_model", "toy_model_dir", "toy_report"]
