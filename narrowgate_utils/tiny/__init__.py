"""Tiny random VLMs built from config for every supported family (tests, new-family forks).

``build_tiny(family, seed)`` returns a ready :class:`~narrowgate_utils.models.base.Adapter`
around a randomly initialised model (hidden size 64, 4 layers) and a local processor, so
nothing is downloaded. Each family lives in its own module exposing ``build(seed) -> Adapter``.
"""
from __future__ import annotations

import importlib

from ..models.base import Adapter

TINY_FAMILIES = ("chameleon", "emu3", "llava", "llava_next", "llava_onevision", "pixtral", "janus", "qwen2_vl",
                 "idefics3")


def build_tiny(family: str, seed: int = 0) -> Adapter:
    """Build a tiny random model of ``family`` wrapped in its adapter (eager attention, eval mode)."""
    if family not in TINY_FAMILIES:
        raise ValueError(f"No tiny builder for family '{family}'. Available: {', '.join(TINY_FAMILIES)}.")
    module = importlib.import_module(f"{__name__}.{family}")
    adapter = module.build(seed)
    adapter.model.eval()
    return adapter


__all__ = ["TINY_FAMILIES", "build_tiny"]
