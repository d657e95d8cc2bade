"""Model-family adapters and the single loading entry point.

``load(model_id_or_path)`` works the same for a hub id of a real checkpoint, a local
checkpoint directory and a toy-world model name (``toy-native`` …): the three model tiers
share one code path.
"""
from __future__ import annotations

from .base import Adapter, PROMPT_ORDERS, as_pil
from .registry import ADAPTERS, SUPPORTED_FAMILIES, adapter_for, load, resolve_dtype

__all__ = [
    "ADAPTERS",
    "Adapter",
    "PROMPT_ORDERS",
    "SUPPORTED_FAMILIES",
    "adapter_for",
    "as_pil",
    "load",
    "resolve_dtype",
]
