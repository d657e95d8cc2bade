"""Shared toy components, trained once per recipe and cached under ``<cache>/toy/_components/``:
the k-means patch codebook (image tokenizer of the native models) and the tiny CLIP vision
tower of the non-native models.

The tower (``CLIPVisionModel``, 8-pixel patches on 32-pixel images → 16 patch tokens + CLS)
is pretrained as a multi-attribute classifier on the toy training split: linear heads on
the mean of the last layer's patch tokens predict colour, shape, size, position and
background. Those patch tokens are exactly what LLaVA's projector reads
(``vision_feature_layer=-1``, ``vision_feature_select_strategy='default'`` drops CLS).
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from ..atomic import atomic_dir, write_json
from ..data.sample import Sample
from ..data.toy import (TOY_BACKGROUNDS, TOY_COLORS, TOY_IMAGE_SIZE, TOY_PATCH_SIZE, TOY_SHAPES, TOY_SIZES,
                        toy_dataset)
from ..toy.image_processor import toy_image_processor
from ..toy.image_tokenizer import PatchCodebook
from ..toy.registry import TOY_VERSION, toy_root
from .loop import run_loop
from .recipes import ToyRecipe

#: attributes the tower is trained to read, with their value lists
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "color": tuple(TOY_COLORS),
    "shape": TOY_SHAPES,
    "size": tuple(TOY_SIZES),
    "position": ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right"),
    "background": TOY_BACKGROUNDS,
}
COMPONENTS = ("image_tokenizer", "vision_encoder")
_METRICS = "metrics.json"


# ---------------------------------------------------------------------------- image codebook
def train_image_tokenizer(
    images: Sequence[Image.Image | np.ndarray] | np.ndarray,
    n_embeddings: int = 512,
    image_size: int = 32,
    patch_size: int = 8,
    iterations: int = 20,
    seed: int = 0,
) -> PatchCodebook:
    """Fit a k-means patch codebook (k-means++ seeding on a subsample, then Lloyd iterations).

    Empty clusters are re-seeded with the patches that are worst reconstructed, so every
    code is used. Deterministic for a given ``seed`` and image list.
    """
    generator = torch.Generator().manual_seed(seed)
    book = PatchCodebook(torch.zeros(1, patch_size * patch_size * 3), image_size, patch_size)
    x = book.patches(images).reshape(-1, patch_size * patch_size * 3)
    if x.shape[0] < n_embeddings:
        raise ValueError(f"k-means needs at least {n_embeddings} patches, got {x.shape[0]}; pass more images.")
    sub = x[torch.randperm(x.shape[0], generator=generator)[: min(x.shape[0], 20 * n_embeddings)]]
    centers = [sub[torch.randint(len(sub), (1,), generator=generator)].squeeze(0)]
    dist = ((sub - centers[0]) ** 2).sum(1)
    for _ in range(1, n_embeddings):
        probs = dist / dist.sum() if float(dist.sum()) > 0 else torch.full_like(dist, 1 / len(dist))
        nxt = sub[torch.multinomial(probs, 1, generator=generator)].squeeze(0)
        centers.append(nxt)
        dist = torch.minimum(dist, ((sub - nxt) ** 2).sum(1))
    book.codebook = torch.stack(centers)
    for _ in range(iterations):
        assign = book.quantize(x)
        sums = torch.zeros_like(book.codebook).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=n_embeddings).float()
        empty = counts == 0
        new = sums / counts.clamp(min=1)[:, None]
        if bool(empty.any()):
            err = ((x - book.codebook[assign]) ** 2).sum(1)
            worst = err.topk(int(empty.sum())).indices
            new[empty] = x[worst]
        book.codebook = new
    return book


# ---------------------------------------------------------------------------- vision tower
def vision_config(hidden_size: int = 64, layers: int = 2, heads: int = 4) -> CLIPVisionConfig:
    """Config of the tiny CLIP tower (16 patches of 8 px)."""
    return CLIPVisionConfig(
        hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=layers,
        num_attention_heads=heads, image_size=TOY_IMAGE_SIZE, patch_size=TOY_PATCH_SIZE, projection_dim=hidden_size,
    )


def pixel_values(samples: Sequence[Sample]) -> torch.Tensor:
    """Normalised pixel tensor [n, 3, 32, 32] of the samples' images."""
    return toy_image_processor()([s.image for s in samples], return_tensors="pt")["pixel_values"]


def attribute_targets(samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
    """Integer targets per attribute (see :data:`ATTRIBUTES`)."""
    return {name: torch.tensor([values.index(s.meta[name]) for s in samples]) for name, values in ATTRIBUTES.items()}


class AttributeProbe(nn.Module):
    """The tower plus one linear head per attribute on the mean patch token."""

    def __init__(self, tower: CLIPVisionModel) -> None:
        super().__init__()
        self.tower = tower
        hidden = tower.config.hidden_size
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, len(values)) for name, values in ATTRIBUTES.items()})

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        patches = self.tower(pixel_values=pixels).last_hidden_state[:, 1:]
        pooled = patches.mean(1)
        return {name: head(pooled) for name, head in self.heads.items()}


def train_vision_encoder(train: Sequence[Sample], test: Sequence[Sample], steps: int = 300, batch_size: int = 128,
                         lr: float = 3e-3, seed: int = 0, device: str = "cpu") -> tuple[CLIPVisionModel, dict]:
    """Pretrain the tower as an attribute classifier; return it and its test accuracies."""
    torch.manual_seed(seed)
    probe = AttributeProbe(CLIPVisionModel(vision_config())).to(device)
    x_train, y_train = pixel_values(train), attribute_targets(train)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)

    def step_fn(step: int) -> tuple[float, list[float]]:
        idx = torch.from_numpy(np.random.default_rng([seed, step]).choice(len(train), batch_size, replace=False))
        logits = probe(x_train[idx].to(device))
        loss = sum(nn.functional.cross_entropy(logits[k], y_train[k][idx].to(device)) for k in ATTRIBUTES)
        loss.backward()
        return float(loss.detach()), []

    result = run_loop(probe, optimizer, schedule, step_fn, steps, record=lambda step, loss, _: [step, loss],
                      desc="vision encoder")
    with torch.no_grad():
        x_test, y_test = pixel_values(test).to(device), attribute_targets(test)
        logits = probe(x_test)
        accuracy = {k: float((logits[k].argmax(-1).cpu() == y_test[k]).float().mean()) for k in ATTRIBUTES}
    tower = probe.tower.cpu()
    return tower, {"test_accuracy": accuracy, "curve": result.curve[:: max(1, steps // 100)], "steps": steps}


# ---------------------------------------------------------------------------- the cache
def component_dir(kind: str, recipe: ToyRecipe) -> Path:
    """Cache directory of component ``kind`` (one of :data:`COMPONENTS`) for ``recipe``."""
    key = {"image_tokenizer": (recipe.codebook_size, recipe.n_train, recipe.seed),
           "vision_encoder": (recipe.vision_steps, recipe.n_train, recipe.seed)}[kind]
    return toy_root() / "_components" / f"{kind}-v{TOY_VERSION}-{'-'.join(map(str, key))}"


def _metrics(directory: Path) -> dict:
    return json.loads((directory / _METRICS).read_text())


def get_image_tokenizer(recipe: ToyRecipe, train: Sequence[Sample]) -> tuple[PatchCodebook, dict]:
    """The shared k-means codebook (fitted once, cached), with its test reconstruction error."""
    directory = component_dir("image_tokenizer", recipe)
    if not (directory / _METRICS).exists():
        start = time.perf_counter()
        book = train_image_tokenizer([s.image for s in train], n_embeddings=recipe.codebook_size, seed=recipe.seed)
        test = toy_dataset("test", n=recipe.n_eval, seed=recipe.seed)
        metrics = {"n_embeddings": book.n_embeddings, "n_codes_per_image": book.n_codes,
                   "train_mse": book.reconstruction_error([s.image for s in train[:1000]]),
                   "test_mse": book.reconstruction_error([s.image for s in test]),
                   "train_seconds": time.perf_counter() - start}
        with atomic_dir(directory) as tmp:
            book.save(tmp)
            write_json(metrics, tmp / _METRICS)
    return PatchCodebook.load(directory), _metrics(directory)


def get_vision_encoder(recipe: ToyRecipe, train: Sequence[Sample], device: str) -> tuple[CLIPVisionModel, dict]:
    """The shared tiny CLIP tower (trained once as an attribute classifier, cached)."""
    directory = component_dir("vision_encoder", recipe)
    if not (directory / _METRICS).exists():
        start = time.perf_counter()
        test = toy_dataset("test", n=recipe.n_eval, seed=recipe.seed)
        tower, metrics = train_vision_encoder(train, test, steps=recipe.vision_steps, seed=recipe.seed, device=device)
        metrics["train_seconds"] = time.perf_counter() - start
        with atomic_dir(directory) as tmp:
            tower.save_pretrained(tmp)
            write_json(metrics, tmp / _METRICS)
    return load_vision_encoder(recipe), _metrics(directory)


def load_vision_encoder(recipe: ToyRecipe) -> CLIPVisionModel:
    """The cached tower of ``recipe``; never trains (a missing tower is an error)."""
    directory = component_dir("vision_encoder", recipe)
    if not (directory / _METRICS).exists():
        raise ValueError(f"The toy vision encoder is not trained (no {directory}); it is trained with the non-native "
                         "toy model: run `narrowgate toy train --only toy-nonnative` first.")
    return CLIPVisionModel.from_pretrained(directory)
