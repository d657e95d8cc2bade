"""Shared helpers of the experiments: model lists, prompts, batching, output folders."""
from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch

from ..console import progress_bar
from ..models import base
from ..models.base import model_fingerprint

if TYPE_CHECKING:
    from ..cache import ActivationStore
    from ..models.base import Adapter

T = TypeVar("T")

#: the models a notebook compares by default: the native and the non-native toy model
DEFAULT_MODELS = "toy-native,toy-nonnative"
#: the class-completion text per dataset; each checkpoint's complete prompts (VQA, captions,
#: chat format, the toy models' own texts) come from its adapter: ``adapter.prompt_for(task, …)``
CLASS_PROMPTS = base.CLASS_PROMPTS
#: which evaluation tasks each dataset supports (the toy world has labels, captions and VQA)
DATASET_TASKS = {"toy": ("vqa", "caption", "classification"), "vqav2": ("vqa",), "flickr30k": ("caption",),
                 "coco_karpathy": ("caption",), "imagenet": ("classification",)}


def model_list(model_id: str | Sequence[str]) -> list[str]:
    """Parse the notebooks' ``model_id`` parameter: one id, a comma-separated string or a list."""
    ids = [m.strip() for m in model_id.split(",")] if isinstance(model_id, str) else [str(m) for m in model_id]
    ids = [m for m in ids if m]
    if not ids:
        raise ValueError("model_id is empty: pass a hub id, a local checkpoint path or a toy model name (toy-native).")
    return ids


def class_prompt(dataset: str) -> str:
    """The class-completion text of ``dataset`` (``adapter.task_prompt("class", dataset=...)`` per checkpoint)."""
    if dataset not in CLASS_PROMPTS:
        raise ValueError(f"No class prompt for dataset '{dataset}'; class-label experiments support {sorted(CLASS_PROMPTS)}.")
    return CLASS_PROMPTS[dataset]


def dataset_tasks(dataset: str) -> tuple[str, ...]:
    if dataset not in DATASET_TASKS:
        raise ValueError(f"Unknown dataset '{dataset}'; the evaluation supports {sorted(DATASET_TASKS)}.")
    return DATASET_TASKS[dataset]


def seed_everything(seed: int) -> np.random.Generator:
    """Seed python, numpy and torch; return a numpy Generator for explicit draws."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def batched(items: Sequence[T], batch_size: int, desc: str = "") -> Iterator[list[T]]:
    """Consecutive chunks of ``items``, with a progress bar labelled ``desc`` (none when empty)."""
    for chunk in progress_bar(chunks(items, batch_size), desc, show=bool(desc), leave=False):
        yield list(chunk)


def output_folder(output_dir: str | Path, notebook: str) -> Path:
    """``output_dir/notebook`` created on demand."""
    path = Path(output_dir) / notebook
    path.mkdir(parents=True, exist_ok=True)
    return path


def display_name(model_id: str) -> str:
    """Short model name for legends (last path component)."""
    return Path(str(model_id)).name or str(model_id)


def chunks(items: Sequence[T], batch_size: int) -> list[Sequence[T]]:
    """``items`` cut into consecutive batches of ``batch_size`` (the last may be shorter)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if len(items) == 0:
        raise ValueError("No samples to process: the dataset selection is empty (check n_samples / dataset / data_dir).")
    return [items[start:start + batch_size] for start in range(0, len(items), batch_size)]


def activation_store(cache_dir: str | Path | None = None) -> "ActivationStore":
    """The activation cache in ``cache_dir``, by default ``<NARROWGATE_CACHE>/activations``."""
    from ..cache import ActivationStore
    from ..toy.registry import cache_dir as default_cache_dir

    return ActivationStore(Path(cache_dir) if cache_dir is not None else default_cache_dir() / "activations")


def cached_batches(adapter: "Adapter", samples: Sequence, what: str, params: dict[str, object],
                   compute_batch: Callable[[int, list], dict[str, np.ndarray]], batch_size: int,
                   axis: int, cache_dir: str | Path | None = None, ids: Sequence[str] | None = None,
                   dtype: str | None = None) -> dict[str, np.ndarray]:
    """Per-batch arrays of (model, samples, params), streamed to the activation cache.

    ``compute_batch(i, batch)`` returns the arrays of batch ``i``, with the samples along
    ``axis``. Each batch is written to disk as soon as it is computed, its floating arrays as
    ``dtype`` when given (e.g. ``"float16"``); a killed run resumes at the first missing batch;
    a finished run returns the joined arrays memory-mapped (host memory stays flat in the
    number of samples) without a forward pass. The key holds the model fingerprint, the sample
    ids (``ids`` for items that are not samples), the batch size, ``dtype`` and every parameter.
    """
    store = activation_store(cache_dir)
    batches = chunks(samples, batch_size)
    key = {"what": what, "model": model_fingerprint(adapter),
           "samples": list(ids) if ids is not None else [s.uid for s in samples],
           "batch_size": batch_size, "params": params, **({"dtype": dtype} if dtype is not None else {})}
    return store.get_or_compute_parts(key, len(batches), lambda i: compute_batch(i, list(batches[i])), axis=axis,
                                      progress=f"{what} · {adapter.model_id}", dtype=dtype)


#: where per-batch results go: False (kept in memory only), True (the default activation cache)
#: or a folder (see :func:`cached_batches`)
Cache = bool | str | Path


def per_batch(adapter: "Adapter", items: Sequence, what: str, params: dict[str, object],
              run: Callable[[int, list], dict[str, np.ndarray]], batch_size: int, cache: Cache = False,
              desc: str = "", ids: Sequence[str] | None = None, axis: int = 0,
              cache_dtype: str | None = None) -> dict[str, np.ndarray]:
    """``run(i, batch)`` over the batches of ``items``, concatenated along ``axis`` (the sample
    axis of its arrays). With ``cache`` every finished batch is stored at once, its floating
    arrays as ``cache_dtype`` when given (:func:`cached_batches`), so a killed run resumes at the
    first unfinished batch; without, nothing is written and the arrays stay as ``run`` made them."""
    if cache is False:
        parts = [run(i, chunk) for i, chunk in enumerate(batched(items, batch_size, desc=desc))]
        return {name: np.concatenate([part[name] for part in parts], axis=axis) for name in parts[0]}
    return cached_batches(adapter, items, what, params, run, batch_size, axis=axis,
                          cache_dir=None if cache is True else cache, ids=ids, dtype=cache_dtype)
