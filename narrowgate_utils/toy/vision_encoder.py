"""Continuous semantic image encoder for the toy non-native model: a tiny CLIP vision tower.

The tower (``CLIPVisionModel``, 8-pixel patches on 32-pixel images → 16 patch tokens + CLS)
is pretrained as a multi-attribute classifier on the toy training split: linear heads on
the mean of the last layer's patch tokens predict colour, shape, size, position and
background. Those patch tokens are exactly what LLaVA's projector reads
(``vision_feature_layer=-1``, ``vision_feature_select_strategy='default'`` drops CLS).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from ..data.sample import Sample
from ..data.toy import TOY_BACKGROUNDS, TOY_COLORS, TOY_IMAGE_SIZE, TOY_PATCH_SIZE, TOY_SHAPES, TOY_SIZES

#: attributes the tower is trained to read, with their value lists
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "color": tuple(TOY_COLORS),
    "shape": TOY_SHAPES,
    "size": tuple(TOY_SIZES),
    "position": ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right"),
    "background": TOY_BACKGROUNDS,
}


def toy_image_processor() -> CLIPImageProcessorPil:
    """The image processor of the toy LLaVA (32 px, CLIP normalisation, no torchvision)."""
    return CLIPImageProcessorPil(
        size={"shortest_edge": TOY_IMAGE_SIZE}, crop_size={"height": TOY_IMAGE_SIZE, "width": TOY_IMAGE_SIZE},
        do_center_crop=True, do_convert_rgb=True,
    )


def vision_config(hidden_size: int = 64, layers: int = 2, heads: int = 4) -> CLIPVisionConfig:
    """Config of the tiny CLIP tower (16 patches of 8 px)."""
    return CLIPVisionConfig(
        hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=layers,
        num_attention_heads=heads, image_size=TOY_IMAGE_SIZE, patch_size=TOY_PATCH_SIZE, projection_dim=hidden_size,
    )


def pixel_values(samples: Sequence[Sample], processor: CLIPImageProcessorPil | None = None) -> torch.Tensor:
    """Normalised pixel tensor [n, 3, 32, 32] of the samples' images."""
    processor = processor or toy_image_processor()
    return processor([s.image for s in samples], return_tensors="pt")["pixel_values"]


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


def train_vision_encoder(
    train: Sequence[Sample],
    test: Sequence[Sample],
    steps: int = 300,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    device: str = "cpu",
    progress: Callable[[int, float], None] | None = None,
) -> tuple[CLIPVisionModel, dict]:
    """Pretrain the tower as an attribute classifier; return it and its test accuracies."""
    torch.manual_seed(seed)
    probe = AttributeProbe(CLIPVisionModel(vision_config())).to(device)
    processor = toy_image_processor()
    x_train, y_train = pixel_values(train, processor), attribute_targets(train)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    curve = []
    probe.train()
    for step in range(steps):
        idx = torch.from_numpy(np.random.default_rng([seed, step]).choice(len(train), batch_size, replace=False))
        logits = probe(x_train[idx].to(device))
        loss = sum(nn.functional.cross_entropy(logits[k], y_train[k][idx].to(device)) for k in ATTRIBUTES)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        value = float(loss.detach())
        curve.append((step, value))
        if progress is not None:
            progress(step, value)
    probe.eval()
    with torch.no_grad():
        x_test, y_test = pixel_values(test, processor).to(device), attribute_targets(test)
        logits = probe(x_test)
        accuracy = {k: float((logits[k].argmax(-1).cpu() == y_test[k]).float().mean()) for k in ATTRIBUTES}
    tower = probe.tower.cpu()
    return tower, {"test_accuracy": accuracy, "curve": curve[:: max(1, steps // 100)], "steps": steps}
