"""Masked fine-tuning (the paper's later version): LoRA fine-tuning while text cannot see [EOI].

Two runs start from the same model with the same data and hyper-parameters: *masked* (every
text query is blocked from [EOI] during training) and *control* (no mask). Comparing the
knockout table and the attention / overlap profiles before and after shows whether the
visual information was rerouted around [EOI].

Training blocks text→[EOI] *before* the softmax (the remaining weights renormalise), whereas
the paper's evaluation knockout zeroes it *after* the softmax; the before/after table therefore
reports both knockout modes (a ``mode`` column).
"""
from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import replace
from pathlib import Path

import pandas as pd

from ..cache import key_hash
from ..data.sample import Sample
from ..interventions import KNOCKOUT_MODES
from ..models.base import Adapter, model_fingerprint
from ..training.lora import FinetuneConfig, finetune_lora, finetuned, read_training_log
from . import attention, knockout, overlap

VARIANTS = ("before", "masked", "control")
#: (variant, adapter) pairs: a dict, or the lazy :func:`variants` (one fine-tuned model at a time)
Variants = Mapping[str, Adapter] | Generator[tuple[str, Adapter], None, None]


def finetune_both(adapter: Adapter, train_samples: Sequence[Sample], config: FinetuneConfig, run_dir: str | Path,
                  class_prompt: str, mix: Sequence[str] | None = None) -> dict[str, Path]:
    """The masked and the control LoRA runs (resumable; finished runs are reused), saved under
    ``run_dir/<hash of the base weights>/{masked,control}`` so a retrained base model starts afresh.

    ``mix=None`` trains on every task the samples have data for (toy: VQA, captions, classes;
    LLaVA-Instruct + VQAv2: instructions and VQA, the paper's mix).
    """
    run_dir = Path(run_dir) / key_hash(model_fingerprint(adapter))[:12]
    return {name: finetune_lora(adapter, train_samples, replace(config, mask_eoi=(name == "masked")), run_dir / name,
                                mix=mix, class_prompt=class_prompt)
            for name in ("masked", "control")}


def variants(adapter: Adapter, runs: Mapping[str, Path]) -> Generator[tuple[str, Adapter], None, None]:
    """("before", the base model), then (run name, fine-tuned model) for each run, lazily.

    Each run's LoRA is merged into the base weights in place (:func:`finetuned`) when its turn
    comes and removed, the base weights restored exactly, when the next pair is requested, so
    only one copy of the weights exists (a 7B model fits one GPU). One pass only: create one
    per evaluation.
    """
    yield "before", adapter
    for name, path in runs.items():
        with finetuned(adapter, path) as model:
            yield name, model


@contextmanager
def _one_at_a_time(models: Variants) -> Iterator[Iterable[tuple[str, Adapter]]]:
    """The (variant, adapter) pairs of ``models``; a :func:`variants` generator is closed on exit,
    an early one (an error) included, so no fine-tuned weights stay merged into the base."""
    if isinstance(models, Mapping):
        yield models.items()
    else:
        with closing(models):
            yield models


def training_curves(runs: dict[str, Path]) -> pd.DataFrame:
    """(variant, step, loss, lr) of both runs from their training logs."""
    frames = []
    for name, path in runs.items():
        log = read_training_log(path) or {}
        curve = pd.DataFrame(log.get("curve", []), columns=["step", "loss", "lr"])
        frames.append(curve.assign(variant=name))
    return pd.concat(frames, ignore_index=True)


def before_after_table(models: Variants, samples: Sequence[Sample], tasks: Sequence[str],
                       ablations: Sequence[str], class_prompt: str, class_names: Sequence[str],
                       modes: Sequence[str] = ("pre_softmax", "post_softmax"), **kwargs) -> pd.DataFrame:
    """Knockout table (see :func:`knockout.knockout_table`) of every variant under every knockout
    mode in ``modes``: ``pre_softmax`` is the block the masked run trained with, ``post_softmax``
    the paper's evaluation knockout. Columns ``variant`` and ``mode``; the mode-independent
    baseline ("none") is computed once per variant and listed under every mode. ``models``:
    ``variants(adapter, runs)`` (one model in memory at a time) or a dict of adapters.
    """
    if not modes or any(mode not in KNOCKOUT_MODES for mode in modes):
        raise ValueError(f"modes must be a non-empty selection of {KNOCKOUT_MODES}, got {list(modes)}.")
    frames = []
    with _one_at_a_time(models) as pairs:
        for name, model in pairs:
            baseline = None
            for mode in modes:
                todo = [a for a in ablations if baseline is None or a != "none"]
                table = knockout.knockout_table(model, samples, tasks, todo, class_prompt, class_names, mode=mode,
                                                **kwargs)
                if baseline is None:
                    baseline = table[table["ablation"] == "none"]
                else:
                    table = pd.concat([baseline.assign(mode=mode), table], ignore_index=True)
                frames.append(table.assign(variant=name))
    return pd.concat(frames, ignore_index=True)


def profiles(models: Variants, samples: Sequence[Sample], prompt: str, k: int = 30, batch_size: int = 16,
             seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """f^l shares (eq. 2) and χ^l (eq. 3) of every variant, with the variant as the 'model' column;
    ``models`` as in :func:`before_after_table`."""
    shares, chis = [], []
    labels = [s.label for s in samples]
    with _one_at_a_time(models) as pairs:
        for name, model in pairs:
            layers = model.check_layers(None)
            profile, names, groups = attention.mean_attention_profile(model, samples, prompt, layers, batch_size)
            shares.append(attention.attention_shares(profile, names, groups, layers).assign(model=name))
            vectors = overlap.collect_overlap_vectors(model, samples, prompt, layers, max_internal=8,
                                                      batch_size=batch_size, seed=seed)
            chis.append(overlap.overlap_profile(vectors, labels, layers, k).assign(model=name))
    return pd.concat(shares, ignore_index=True), pd.concat(chis, ignore_index=True)
