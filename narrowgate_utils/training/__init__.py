"""Everything that writes weights: the toy models, their shared components, chapter 07's
factorial models and LoRA fine-tuning, on one resumable loop (:mod:`.loop`) and one
checkpoint format (:mod:`.checkpoint`).

Modules: :mod:`.recipes` (what determines a model), :mod:`.sequences` (training batches),
:mod:`.planting` (planted routes), :mod:`.build` (architectures), :mod:`.components` (image
codebook, vision tower), :mod:`.evaluation` (test metrics), :mod:`.toy_model` (one toy model),
:mod:`.orchestration` (which models, how many processes), :mod:`.lora` (LoRA fine-tuning) and
:mod:`.cli` (``narrowgate toy``). Loading a model never trains it: train toy models with
``narrowgate toy train`` (or :func:`train_all`) first.

The names below are imported from their modules on first use, so ``import
narrowgate_utils.training`` (the command line does) stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "recipes": ("DEFAULT_VARIANTS", "GateSize", "GateVariant", "TOY_RECIPES", "ToyRecipe", "variant_recipe"),
    "toy_model": ("train_toy_model",),
    "orchestration": ("prepare_components", "train_all", "train_variant", "train_variants", "trained_variant",
                      "variant_dir"),
    "lora": ("FinetuneConfig", "finetune_lora", "finetuned", "load_finetuned", "read_training_log"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
