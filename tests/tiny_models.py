"""Shared helpers of the tracing and intervention tests: cached tiny models and random images."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from narrowgate_utils.models.base import Adapter
from narrowgate_utils.tiny import build_tiny

torch.set_num_threads(1)
#: families whose tiny build must work (the others are skipped if they fail to build)
REQUIRED_FAMILIES = ("chameleon", "llava")
TEXTS = ["this animal is a", "what colour is the shape ?"]
_ADAPTERS: dict[str, Adapter] = {}


def tiny(family: str) -> Adapter:
    """Build (once) the tiny model of ``family``; a family that does not build is skipped."""
    if family not in _ADAPTERS:
        try:
            _ADAPTERS[family] = build_tiny(family)
        except Exception as error:
            if family in REQUIRED_FAMILIES:
                raise
            pytest.skip(f"tiny {family} does not build: {error}")
    return _ADAPTERS[family]


def images(family: str, n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` random RGB images of the size the tiny ``family`` model expects."""
    size = getattr(importlib.import_module(f"narrowgate_utils.tiny.{family}"), "IMAGE_SIZE", 32)
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
