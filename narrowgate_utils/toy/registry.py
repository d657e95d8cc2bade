"""Toy-model names → cache directories, the trained-or-not check, and the summary tables.

Cache: ``$NARROWGATE_CACHE`` or ``<repo>/.cache/narrowgate``; toy models live in
``<cache>/toy/<name>/`` as ordinary Hugging Face checkpoint directories plus
``narrowgate_toy.json`` (recipe, parameters, training curve, test metrics).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

#: metadata file written last into every toy model directory
TOY_METADATA = "narrowgate_toy.json"
#: bump when data, tokenizers or training change so cached models are rebuilt
TOY_VERSION = 1
TOY_MODEL_NAMES = ("toy-native", "toy-nonnative", "toy-gated", "toy-distributed")


def cache_dir() -> Path:
    """Root cache directory (``NARROWGATE_CACHE`` or ``<repo>/.cache/narrowgate``)."""
    env = os.environ.get("NARROWGATE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / ".cache" / "narrowgate"


def toy_root() -> Path:
    return cache_dir() / "toy"


def check_toy_name(name: str) -> str:
    if name not in TOY_MODEL_NAMES:
        raise ValueError(f"Unknown toy model {name!r}; known toy models: {', '.join(TOY_MODEL_NAMES)}.")
    return name


def toy_model_dir(name: str) -> Path:
    """Directory of toy model ``name`` (it may not exist yet; see :func:`ensure_toy_model`)."""
    return toy_root() / check_toy_name(name)


def read_toy_metadata(name: str) -> dict | None:
    """The model's ``narrowgate_toy.json``, or None when it is missing or from another TOY_VERSION."""
    path = toy_model_dir(name) / TOY_METADATA
    if not path.exists():
        return None
    meta = json.loads(path.read_text())
    return meta if meta.get("version") == TOY_VERSION else None


def is_trained(name: str) -> bool:
    return read_toy_metadata(name) is not None


def ensure_toy_model(name: str) -> Path:
    """Directory of the trained toy model ``name``; a missing or stale one is an error (loading never trains)."""
    if not is_trained(name):
        raise ValueError(f"Toy model {name!r} is not trained (or was trained for another TOY_VERSION) in "
                         f"{toy_model_dir(name)}: train it first with `narrowgate toy train --only {name}` "
                         "(or `make toy` for all of them).")
    return toy_model_dir(name)


def toy_report(names: tuple[str, ...] = TOY_MODEL_NAMES) -> pd.DataFrame:
    """One row per trained toy model: architecture, parameters, training time and test metrics."""
    rows = []
    for name in names:
        meta = read_toy_metadata(name)
        if meta is None:
            continue
        test = meta.get("test_metrics", {})
        rows.append({
            "model": name,
            "architecture": meta["architecture"],
            "parameters": meta["parameters"]["total"],
            "lm_parameters": meta["parameters"]["language_model"],
            "train_steps": meta["recipe"]["steps"],
            "train_seconds": round(meta["train_seconds"], 1),
            "final_loss": meta["curve"][-1][1] if meta.get("curve") else float("nan"),
            "classification_acc": test.get("classification_accuracy"),
            "vqa_acc": test.get("vqa_accuracy"),
            "cider": test.get("cider"),
            "n_test_images": test.get("n_images"),
        })
    return pd.DataFrame(rows)


def toy_vqa_by_question(names: tuple[str, ...] = TOY_MODEL_NAMES) -> pd.DataFrame:
    """Test VQA accuracy per question kind (colour, shape, position, size, yes/no): models x kinds,
    plus "tied embeddings" (whether the model shares its input and output embeddings)."""
    rows = {}
    for name in names:
        meta = read_toy_metadata(name)
        if meta is not None:
            rows[name] = {**meta.get("test_metrics", {}).get("vqa_accuracy_by_question", {}),
                          "tied embeddings": bool(meta["recipe"].get("tie_embeddings", False))}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")


def toy_training_curves(names: tuple[str, ...] = TOY_MODEL_NAMES) -> pd.DataFrame:
    """Loss curves of the trained toy models: (model, stage, step, loss), stage = 'main' or 'text_pretraining'."""
    frames = []
    for name in names:
        meta = read_toy_metadata(name)
        for stage, curve in (meta or {}).get("curves", {}).items():
            columns = meta["curve_columns"] if len(curve[0]) == len(meta["curve_columns"]) else ["step", "loss"]
            frames.append(pd.DataFrame(curve, columns=columns)[["step", "loss"]].assign(model=name, stage=stage))
    if not frames:
        raise ValueError("No trained toy model found: run `narrowgate toy train` first.")
    return pd.concat(frames, ignore_index=True)[["model", "stage", "step", "loss"]]


def toy_components() -> dict[str, dict]:
    """Metrics of the shared components (image codebook, vision tower), keyed by component folder."""
    root = toy_root() / "_components"
    return {path.parent.name: json.loads(path.read_text()) for path in sorted(root.glob("*/metrics.json"))}
