"""Presets: one source of truth for the scale and settings of every chapter.

``preset="toy"`` runs a chapter on the toy world at CPU scale (what the book is built from);
``preset="paper"`` holds what the paper and the authors' scripts used, for a run on a real
checkpoint. A notebook's ``parameters`` cell sets every preset-controlled parameter to
``None``; :func:`apply` then fills each ``None`` from the preset, so any explicit
``papermill -p name value`` wins over the preset.

The measurement *procedure* (cross-pair modality gap, pooled χ of the internal image tokens,
sign-flip switch rate, [SOI] inside the img→text knockout, …) is the same under both presets;
presets change only sizes, datasets and settings that cannot carry over to 16-token toy images.
"""
from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import pandas as pd

PRESET_NAMES = ("toy", "paper")
CHAPTERS = ("01", "02", "03", "04", "05", "06", "07", "08")

#: the weights' dtype of every chapter that loads a real checkpoint: "auto" is bf16 on CUDA
_DTYPE = ("float32", "auto", "bf16 on CUDA, float32 on CPU")

#: chapter -> parameter -> (toy value, paper value, source of the paper value)
_TABLE: dict[str, dict[str, tuple[Any, Any, str]]] = {
    "01": {
        "dataset": ("toy", "flickr30k", "Sec. 4.1: Flickr30k image-caption pairs"),
        "split": (None, "all", "authors' scripts: HF nlphuji/flickr30k 'test', which holds all 31,014 images"),
        "n_samples": (600, 10_000, "Sec. 4.1: 10,000 pairs, each in both prompt orders"),
        "min_cluster_size": (20, 50, "Supp. 7: ADP clusters under 50 points dropped"),
        "batch_size": (32, 8, "fits one 40 GB GPU at bf16 (resource table in the README)"),
        "dtype": _DTYPE,
    },
    "02": {
        "dataset": ("toy", "imagenet", "Sec. 4.2: 100 ImageNet animal classes × 100 images"),
        "n_samples": (600, 10_000, "Sec. 4.2: 10,000 prompts"),
        "threshold": (0.1, 0.01, "Fig. 3: tokens above 1 % shown individually (the toy span has 17 positions)"),
        "image_size": (None, 512, "authors' scripts: images resized to 512×512 for attention"),
        "batch_size": (32, 4, "eager attention: Emu3's 4,183-token prompts fit one 40 GB GPU at 4 (README resource table)"),
        "dtype": _DTYPE,
    },
    "03": {
        "dataset": ("toy", "imagenet", "Sec. 4.2: the ImageNet-100 subset of Fig. 3"),
        "n_samples": (600, 10_000, "Supp. 8: 100 classes × 100 images"),
        "k": (30, 30, "Sec. 3.2: k = 30 neighbours"),
        "extra_positions": ([], ["abs:32"], "Fig. 4: the 32nd token (absolute position) of Chameleon-7B"),
        "internal": ("pooled", "pooled", "authors' scripts: χ of the mean internal-image residual"),
        "image_size": (None, 512, "authors' scripts: 512×512 for the overlap"),
        "batch_size": (32, 8, "fits one 40 GB GPU at bf16"),
        "dtype": _DTYPE,
    },
    "04": {
        "dataset": ("toy", "vqav2", "Table 1: VQAv2 (also flickr30k, coco_karpathy, imagenet: one run each)"),
        "split": (None, None, "VQAv2 validation; Flickr30k: pass -p split all (the authors' first 2,000 items)"),
        "n_samples": (200, 2_000, "Sec. 4.3: 2,000 samples per dataset"),
        "n_random": (1, 10, "Sec. 4.3: 10 random image tokens (the toy image has 16)"),
        "random_repeats": (10, 10, "Sec. 4.3: random draws repeated 10 times"),
        "window_step": (1, 4, "Fig. 5: windows of the last 4, 8, … layers"),
        "attended_threshold": (0.1, 0.1, "ablate image tokens whose mean attention share (chapter 02) exceeds 10 %"),
        "image_size": (None, 256, "authors' scripts: 256×256 for VQA and captioning"),
        "cider_tokenize": ("simple", "raw", "authors' scripts: raw caption strings to the CIDEr scorer"),
        "batch_size": (32, 8, "fits one 40 GB GPU at bf16 during generation (fused attention and knockout)"),
        "dtype": _DTYPE,
    },
    "05": {
        "dataset": ("toy", "imagenet", "Sec. 4.4: 20 ImageNet classes in 10 pairs"),
        "classes": (None, "patching", "Supp. 8: the 20 classes of the 10 pairs"),
        "n_samples": (1_000, 2_000, "Sec. 4.4: 100 images per class × 20 classes"),
        "per_pair": (30, 100, "Sec. 4.4: 100 images per class"),
        "positions": (["eoi", "last_image", "image_index:6"], ["eoi", "last_image", "abs:32"],
                      "Fig. 6 / A2: [EOI] and control positions"),
        "sites": (["resid_in", "attn_in"], ["resid_in", "attn_in"],
                  "authors' scripts: the layer input x^{l-1} (embeddings included) and the attention input"),
        "layer_step": (1, 4, "Fig. 6: every 4th layer"),
        "image_size": (None, 512, "authors' scripts: 512×512 for patching"),
        "batch_size": (32, 8, "fits one 40 GB GPU at bf16"),
        "dtype": _DTYPE,
    },
    "06": {
        "finetune": ("toy", "paper", "later version: LoRA rank 128, alpha 256, AdamW wd 0.1, cosine lr 2e-5, batch 128, 1 epoch"),
        "train_dataset": ("toy", "llava_instruct+vqav2", "later version: 7.5k LLaVA-Instruct-150K + 7.5k VQAv2 train"),
        "n_train": (1_000, 7_500, "later version: 15k fine-tuning samples, 7.5k from each of the two datasets (n_train is per dataset)"),
        "dataset": ("toy", "vqav2", "evaluation as in Table 1"),
        "n_samples": (200, 2_000, "Sec. 4.3: 2,000 evaluation samples"),
        "image_size": (None, 256, "as chapter 04 (VQA and captions at 256×256)"),
        "batch_size": (32, 8, "evaluation batch on one 40 GB GPU"),
        "dtype": _DTYPE,
    },
    "07": {
        "steps": (500, 500, "toy world only: the factorial study has no paper counterpart"),
        "n_samples": (200, 200, "toy world only"),
    },
    "08": {
        "n_samples": (200, 200, "toy world only: needs the toy image codebook"),
        "dtype": ("float32", "float32", "toy world only"),
    },
}


def _check(chapter: str, preset: str) -> dict[str, tuple[Any, Any, str]]:
    if chapter not in _TABLE:
        raise ValueError(f"Unknown chapter '{chapter}'; presets exist for chapters {', '.join(CHAPTERS)}.")
    if preset not in PRESET_NAMES:
        raise ValueError(f"Unknown preset '{preset}'; use one of {PRESET_NAMES} (e.g. -p preset paper).")
    return _TABLE[chapter]


def preset_values(chapter: str, preset: str) -> dict[str, Any]:
    """The parameter values of ``preset`` ("toy" or "paper") for chapter ``"01"``…``"08"``."""
    table = _check(chapter, preset)
    column = PRESET_NAMES.index(preset)
    return {name: _copy(entry[column]) for name, entry in table.items()}


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def apply(chapter: str, preset: str, namespace: MutableMapping[str, Any]) -> dict[str, Any]:
    """Fill every preset parameter that is ``None`` in ``namespace`` (a notebook's ``globals()``)
    from ``preset``; explicit values stay. Returns the resolved preset parameters."""
    resolved = {}
    for name, value in preset_values(chapter, preset).items():
        given = namespace.get(name)
        resolved[name] = value if given is None else given
    namespace.update(resolved)
    return resolved


def describe(chapter: str, preset: str, resolved: dict[str, Any]) -> str:
    """One Markdown line naming the preset and any value that differs from it."""
    defaults = preset_values(chapter, preset)
    changed = [f"`{k}={v!r}`" for k, v in resolved.items() if defaults.get(k) != v]
    tail = f"; overridden: {', '.join(changed)}" if changed else ""
    return f"Preset **{preset}** (settings on the methods page){tail}."


def preset_table() -> pd.DataFrame:
    """Both presets side by side, one row per chapter × parameter, with the paper value's source."""
    rows = [{"chapter": chapter, "parameter": name, "toy": repr(toy), "paper": repr(paper), "source of the paper value": source}
            for chapter, table in _TABLE.items() for name, (toy, paper, source) in table.items()]
    return pd.DataFrame(rows)


def preset_markdown() -> str:
    """:func:`preset_table` as the Markdown table that the methods page includes
    (``book/preset_table.md``, written by ``python -m narrowgate_utils.presets``)."""
    table = preset_table()
    lines = ["| chapter | parameter | `toy` | `paper` | source of the paper value |", "|---|---|---|---|---|"]
    for row in table.itertuples(index=False):
        cells = [row.chapter, f"`{row.parameter}`", f"`{row.toy}`", f"`{row.paper}`", row[4].replace("|", "\\|")]
        lines.append("| " + " | ".join(cells) + " |")
    return "<!-- generated from narrowgate_utils/presets.py by `python -m narrowgate_utils.presets`; do not edit -->\n\n" + "\n".join(lines) + "\n"


__all__ = ["CHAPTERS", "PRESET_NAMES", "apply", "describe", "preset_markdown", "preset_table", "preset_values"]


if __name__ == "__main__":
    from pathlib import Path

    target = Path(__file__).resolve().parents[1] / "book" / "preset_table.md"
    target.write_text(preset_markdown())
    print(f"wrote {target.relative_to(target.parents[1])}")
