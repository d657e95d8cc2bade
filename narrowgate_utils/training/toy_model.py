"""Train one toy-world model in a real Hugging Face architecture (CPU minutes, GPU if present).

* native (``family="chameleon"``, e.g. ``toy-native``) — ``ChameleonForConditionalGeneration``
  from scratch, next-token loss on every token (image codes and text), on a mixture of
  image→text (classification, VQA, captioning) and text→image (caption → ``<racm3:break>``
  codes ``<eoss>``) sequences;
* non-native (``family="llava"``, e.g. ``toy-nonnative``) — ``LlavaForConditionalGeneration``
  with a tiny CLIP tower pretrained as an attribute classifier; its Llama LM is first
  pretrained on toy text alone, then the projector + LM learn from image→text sequences with
  loss on the answer tokens only (the tower stays frozen, as in LLaVA-1.5). An explicit
  ``<eoi>`` marker follows the image;
* planted (``toy-gated`` / ``toy-distributed``) — native recipes with a planted route
  (:mod:`.planting`).

Every model is written into a temporary directory and moved into place only once it is
complete; step checkpoints under ``<cache>/toy/.work/`` make an interrupted run resume where it
stopped (batches depend only on (seed, step), so a resumed run equals an uninterrupted one).
"""
from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..atomic import atomic_dir, write_json
from ..data.sample import Sample
from ..data.toy import toy_dataset
from ..toy.image_processor import toy_image_processor
from ..toy.image_tokenizer import PatchCodebook, code_to_bpe_table
from ..toy.registry import TOY_METADATA, TOY_VERSION, check_toy_name, toy_model_dir, toy_root
from ..toy.text_tokenizer import toy_tokenizer
from .build import build_chameleon, build_llava, count_parameters
from .checkpoint import Checkpoint
from .components import get_image_tokenizer, get_vision_encoder
from .evaluation import evaluate_saved, reference_logits
from .loop import LoopResult, one_cpu_thread, resolve_device, run_loop
from .planting import forbidden_mass, masking, penalty_weight, planted, register_plant_attention
from .recipes import TOY_RECIPES, ToyRecipe
from .sequences import ToyTextData, chameleon_batch, llava_batch, next_token_loss, text_batch

#: a phase's loss of one step: (loss tensor, extra numbers to log)
LossFn = Callable[[int], tuple[torch.Tensor, list[float]]]


@dataclass(frozen=True)
class _Phase:
    """One optimisation phase: ``"text"`` (text-only pretraining) or ``"main"`` (multimodal)."""

    name: str
    total: int
    params: list[nn.Parameter]
    loss: LossFn

    @property
    def curve_key(self) -> str:
        return "text_pretraining" if self.name == "text" else "main"


#: what a family's setup returns: model, tokenizer, codebook (native family) and phases
_Setup = tuple[nn.Module, PreTrainedTokenizerBase, PatchCodebook | None, list[_Phase]]


def train_toy_model(name: str, device: str | None = None, recipe: ToyRecipe | None = None,
                    output_dir: Path | None = None, evaluate_model: bool = True) -> Path:
    """Train toy model ``name`` (or a custom ``recipe``) and write it atomically.

    Returns the model directory (``toy_model_dir(name)`` unless ``output_dir`` is given).
    """
    recipe = recipe or TOY_RECIPES[check_toy_name(name)]
    device = resolve_device(device)
    with one_cpu_thread(device):
        return _train_toy_model(recipe, device, Path(output_dir) if output_dir is not None else toy_model_dir(name),
                                evaluate_model)


def _lr_factor(recipe: ToyRecipe, step: int, total: int) -> float:
    """Linear warm-up over ``warmup_steps``, then a cosine from 1 down to 0.1."""
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, total - recipe.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * progress))


def _run_phase(model: nn.Module, phase: _Phase, recipe: ToyRecipe, work: Path) -> LoopResult:
    """AdamW with the recipe's schedule and gradient clipping over ``phase``, resumable from ``work``."""
    optimizer = torch.optim.AdamW(phase.params, lr=recipe.lr, betas=(0.9, 0.98), weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(recipe, s, phase.total))

    def step_fn(step: int) -> tuple[float, list[float]]:
        loss, logs = phase.loss(step)
        loss.backward()
        return float(loss.detach()), logs

    def record(step: int, loss: float, logs: list[float]) -> list | None:
        if step % 10 and step != phase.total - 1:
            return None
        return [step, round(loss, 4), *[round(v, 4) for v in logs]]

    checkpoint = Checkpoint(work / phase.name, {"recipe": recipe.fingerprint(), "phase": phase.name},
                            recipe.checkpoint_every)
    return run_loop(model, optimizer, schedule, step_fn, phase.total, record=record, clip_norm=1.0,
                    checkpoint=checkpoint, desc=recipe.name + (" (text)" if phase.name == "text" else ""),
                    position=int(os.environ.get("NARROWGATE_TQDM_POSITION", "0")))


def _chameleon(recipe: ToyRecipe, train: Sequence[Sample], device: str, meta: dict) -> _Setup:
    """Codebook, tokenizer, model and phases of a native-family recipe."""
    book, meta["image_tokenizer"] = get_image_tokenizer(recipe, train)
    tokenizer = toy_tokenizer("chameleon", book.n_embeddings)
    vocab = tokenizer.get_vocab()
    codes = code_to_bpe_table(vocab, book.n_embeddings)[book.encode([s.image for s in train])]
    model = build_chameleon(recipe, tokenizer, book.n_embeddings).to(device)
    data = ToyTextData(train, tokenizer)

    def lm_loss(input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
        hidden = model.model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).last_hidden_state
        # Chameleon's forward hides image-code logits: the image loss needs lm_head(hidden)
        return next_token_loss(model.lm_head(hidden), input_ids.to(device), loss_mask.to(device))

    def main_loss(step: int) -> tuple[torch.Tensor, list[float]]:
        batch = chameleon_batch(recipe, data, codes, vocab, step)
        forbidden = None if batch.forbidden is None else batch.forbidden.to(device)
        with planted(forbidden, hard=masking(recipe, step)) as state:
            loss = lm_loss(batch.input_ids, batch.attention_mask, batch.loss_mask)
            if forbidden is None:
                return loss, []
            mass = forbidden_mass(state.masses, batch.query_rows.to(device))
            return loss + penalty_weight(recipe, step) * mass, [float(mass.detach())]

    def text_loss(step: int) -> tuple[torch.Tensor, list[float]]:  # captions and class statements only
        batch = text_batch(recipe, data, vocab, step)
        return lm_loss(batch.input_ids, batch.attention_mask, batch.loss_mask), []

    params = [p for p in model.parameters() if p.requires_grad]
    phases = [_Phase("text", recipe.pretrain_steps, params, text_loss)] if recipe.pretrain_steps > 0 else []
    return model, tokenizer, book, phases + [_Phase("main", recipe.steps, params, main_loss)]


def _llava(recipe: ToyRecipe, train: Sequence[Sample], device: str, meta: dict) -> _Setup:
    """Vision tower, tokenizer, model and phases of a non-native recipe."""
    tower, meta["vision_encoder"] = get_vision_encoder(recipe, train, device)
    tokenizer = toy_tokenizer("llava")
    vocab = tokenizer.get_vocab()
    model = build_llava(recipe, tokenizer, tower).to(device)
    pixels = toy_image_processor()([s.image for s in train], return_tensors="pt")["pixel_values"]
    n_image_tokens = model.config.image_seq_length
    data = ToyTextData(train, tokenizer)

    def text_loss(step: int) -> tuple[torch.Tensor, list[float]]:
        batch = llava_batch(recipe, data, vocab, n_image_tokens, step, text_only=True)
        logits = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)).logits
        return next_token_loss(logits, batch.input_ids.to(device), batch.loss_mask.to(device)), []

    def main_loss(step: int) -> tuple[torch.Tensor, list[float]]:
        batch = llava_batch(recipe, data, vocab, n_image_tokens, step)
        logits = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device),
                       pixel_values=pixels[batch.sample_index].to(device)).logits
        return next_token_loss(logits, batch.input_ids.to(device), batch.loss_mask.to(device)), []

    lm_params = [p for n, p in model.named_parameters() if p.requires_grad and "multi_modal_projector" not in n]
    params = [p for p in model.parameters() if p.requires_grad]
    return model, tokenizer, None, [_Phase("text", recipe.pretrain_steps, lm_params, text_loss),
                                    _Phase("main", recipe.steps, params, main_loss)]


def _train_toy_model(recipe: ToyRecipe, device: str, target: Path, evaluate_model: bool) -> Path:
    work = toy_root() / ".work" / f"{recipe.name}-{recipe.fingerprint()}"
    register_plant_attention()
    torch.set_flush_denormal(True)  # tiny late-training gradients turn denormal and stall CPU maths
    wall = time.perf_counter()
    train = toy_dataset("train", n=recipe.n_train, seed=recipe.seed)
    test = toy_dataset(recipe.eval_split, n=recipe.n_eval, seed=recipe.seed)
    meta: dict = {}
    setup = _chameleon if recipe.family == "chameleon" else _llava
    model, tokenizer, book, phases = setup(recipe, train, device, meta)
    curves, seconds = {}, 0.0
    for phase in phases:
        result = _run_phase(model, phase, recipe, work)
        curves[phase.curve_key], seconds = result.curve, seconds + result.seconds

    model = model.cpu()
    model.set_attn_implementation("eager")
    reference = reference_logits(model, tokenizer, test[0], book)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if book is not None:
            book.save(tmp)
        else:
            from transformers import LlavaProcessor

            LlavaProcessor(image_processor=toy_image_processor(), tokenizer=tokenizer,
                           patch_size=model.config.vision_config.patch_size, vision_feature_select_strategy="default",
                           num_additional_image_tokens=1).save_pretrained(tmp)
        metadata = {
            "name": recipe.name, "version": TOY_VERSION, "fingerprint": recipe.fingerprint(),
            "architecture": type(model).__name__, "family": recipe.family, "plant": recipe.plant,
            "seed": recipe.seed, "recipe": asdict(recipe), "device": device, "torch_threads": torch.get_num_threads(),
            "parameters": count_parameters(model, recipe.family), "train_seconds": seconds,
            "curve_columns": ["step", "loss"] + (["forbidden_mass"] if recipe.plant else []),
            "curve": curves["main"], "curves": curves, "reference": reference, **meta,
        }
        if evaluate_model:
            metadata.update(evaluate_saved(tmp, recipe, test))
        metadata["wall_seconds"] = time.perf_counter() - wall
        write_json(metadata, tmp / TOY_METADATA)
    shutil.rmtree(work, ignore_errors=True)
    return target
