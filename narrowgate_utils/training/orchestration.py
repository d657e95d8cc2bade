"""Which models to train, where, and in how many processes: the book's toy models (``narrowgate
toy train``), their shared components, and chapter 07's factorial models."""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from ..data.toy import toy_dataset
from ..parallel import spawn_map
from ..toy.registry import TOY_METADATA, TOY_MODEL_NAMES, check_toy_name, is_trained, toy_model_dir
from .components import get_image_tokenizer, get_vision_encoder
from .loop import one_cpu_thread, resolve_device
from .recipes import TOY_RECIPES, GateSize, GateVariant, variant_recipe
from .toy_model import train_toy_model


def prepare_components(names: Sequence[str], device: str | None = None) -> None:
    """Build the shared image tokenizer / vision encoder the named models need (cached)."""
    recipes = [TOY_RECIPES[check_toy_name(n)] for n in names]
    device = resolve_device(device)
    with one_cpu_thread(device):
        for family in sorted({r.family for r in recipes}):
            recipe = next(r for r in recipes if r.family == family)
            train = toy_dataset("train", n=recipe.n_train, seed=recipe.seed)
            if family == "chameleon":
                get_image_tokenizer(recipe, train)
            else:
                get_vision_encoder(recipe, train, device)


def _train_worker(name: str, device: str | None, position: int) -> str:
    os.environ["NARROWGATE_TQDM_POSITION"] = str(position)
    return str(train_toy_model(name, device=device))


def train_all(names: Sequence[str] = TOY_MODEL_NAMES, device: str | None = None, force: bool = False,
              workers: int | None = None) -> list[Path]:
    """Train every named toy model that is missing (or all of them with ``force``).

    On CPU the models train in parallel processes, one thread each (see
    :func:`~.loop.one_cpu_thread`; this nearly halves the wall time on 2 cores); on a GPU they
    train one after the other. Each model is still written atomically by its own process.
    """
    todo = [n for n in names if force or not is_trained(check_toy_name(n))]
    device = resolve_device(device)
    if todo:
        prepare_components(todo, device)
    workers = workers if workers is not None else (1 if device != "cpu" else min(os.cpu_count() or 1, len(todo)))
    spawn_map(_train_worker, [(name, device, i % max(workers, 1)) for i, name in enumerate(todo)], workers)
    return [toy_model_dir(n) for n in names]


# ---------------------------------------------------------------------------- chapter 07's factorial models
def variant_dir(cache_root: str | Path, variant: str, seed: int) -> Path:
    """Directory of one factorial model under ``cache_root``."""
    return Path(cache_root) / f"{variant}-s{seed}"


def trained_variant(variant: str, seed: int, cache_root: str | Path, size: GateSize = GateSize()) -> Path | None:
    """The directory of a factorial model trained with the current recipe, or None."""
    target = variant_dir(cache_root, variant, seed)
    meta = target / TOY_METADATA
    fingerprint = variant_recipe(variant, seed, size).fingerprint()
    return target if meta.exists() and json.loads(meta.read_text()).get("fingerprint") == fingerprint else None


def train_variant(variant: str, seed: int, cache_root: str | Path, size: GateSize = GateSize(),
                  device: str = "cpu") -> Path:
    """Train one factorial model (or reuse it when the saved recipe fingerprint matches)."""
    done = trained_variant(variant, seed, cache_root, size)
    if done is not None:
        return done
    recipe = variant_recipe(variant, seed, size)
    return train_toy_model(recipe.name, device=device, recipe=recipe, output_dir=variant_dir(cache_root, variant, seed),
                           evaluate_model=False)


def train_variants(variants: Sequence[str], seeds: Sequence[int], cache_root: str | Path, size: GateSize = GateSize(),
                   workers: int = 1) -> list[Path]:
    """Train every (variant, seed) model that is missing, in ``workers`` CPU processes."""
    for variant in variants:
        GateVariant.parse(variant)
    jobs = [(v, int(s), str(cache_root), size) for s in seeds for v in variants]
    return spawn_map(train_variant, jobs, workers)
