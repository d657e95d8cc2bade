"""Masked LoRA fine-tuning (paper, NeurIPS version): train while text cannot read [EOI].

Fine-tuning a native VLM while every text query is blocked from attending to [EOI] forces the
visual information to reach the text through other image tokens; afterwards an [EOI]
knockout no longer hurts. The control run fine-tunes identically without the block
(``FinetuneConfig(mask_eoi=False)``), separating the effect of the mask from that of the
extra training.

**How the block is applied.** Training runs inside
:func:`narrowgate_utils.interventions.knockout_attention` with ``sources="eoi"``,
``targets="text"`` and ``mode="pre_softmax"``: the same registered attention function the
evaluation uses, so there is one masking mechanism in the code base. Pre-softmax masking sets
the blocked scores to the most negative float, so each text query's weights still sum to 1
(a proper distribution) and the ``masked_fill`` passes gradients to every other score.
Post-softmax zeroing (the knockout used at evaluation, as in the authors' code) would train the
model on rows that do not sum to one. Targets (answers, captions, class names) are text after
[EOI], so they are blocked as well.

Outputs of :func:`finetune_lora` in ``output_dir``: ``adapter_model.safetensors`` and
``adapter_config.json`` (peft format, LoRA weights only) and ``training_log.json`` (config,
loss curve, timing), written last as the completion marker. ``output_dir/checkpoint/step-N``
holds the state for resuming (adapter, optimizer, scheduler, RNG); it is kept only when a run
stops early at ``max_steps``.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from ..atomic import atomic_path, write_json
from ..data.sample import Sample
from ..interventions import knockout_attention
from ..layout import Batch
from ..models.base import CLASS_PROMPTS, Adapter, model_fingerprint
from .checkpoint import Checkpoint
from .loop import run_loop

if TYPE_CHECKING:
    from peft import PeftModel

#: image-to-text tasks a training mix may contain
TASKS = ("vqa", "caption", "class", "instruction")
#: attention projections of the language model (Llama/Chameleon/Mistral/Qwen2 naming)
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
TRAINING_LOG = "training_log.json"
CHECKPOINT_DIR = "checkpoint"
#: config fields that may change between a run and its continuation
_RESUMABLE_FIELDS = ("max_steps", "checkpoint_every")


# ------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class FinetuneConfig:
    """LoRA fine-tuning hyper-parameters.

    One optimizer step sees ``batch_size * grad_accum`` examples; the cosine learning-rate
    schedule (after ``warmup_ratio`` of linear warm-up) spans ``epochs`` passes over the
    examples. ``max_steps`` stops training early *without* changing the schedule, so a run
    stopped at ``max_steps=k`` and continued with a larger value ends exactly where an
    uninterrupted run would.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_ratio: float = 0.05
    epochs: int = 1
    batch_size: int = 16
    grad_accum: int = 1
    max_steps: int | None = None
    mask_eoi: bool = True
    include_mlp: bool = False
    gradient_checkpointing: bool = False
    checkpoint_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        positive = {"rank": self.rank, "alpha": self.alpha, "lr": self.lr, "epochs": self.epochs,
                    "batch_size": self.batch_size, "grad_accum": self.grad_accum,
                    "checkpoint_every": self.checkpoint_every}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"FinetuneConfig.{name} must be > 0, got {value!r}.")
        for name in ("rank", "epochs", "batch_size", "grad_accum", "checkpoint_every"):
            if int(getattr(self, name)) != getattr(self, name):
                raise ValueError(f"FinetuneConfig.{name} must be an integer, got {getattr(self, name)!r}.")
        if self.max_steps is not None and (int(self.max_steps) != self.max_steps or self.max_steps < 1):
            raise ValueError(f"FinetuneConfig.max_steps must be a positive integer or None, got {self.max_steps!r}.")
        if self.weight_decay < 0:
            raise ValueError(f"FinetuneConfig.weight_decay must be >= 0, got {self.weight_decay}.")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"FinetuneConfig.warmup_ratio must lie in [0, 1), got {self.warmup_ratio}.")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"FinetuneConfig.dropout must lie in [0, 1), got {self.dropout}.")

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum

    @classmethod
    def paper(cls, **overrides: Any) -> FinetuneConfig:
        """The paper's recipe: rank 128, alpha 256, lr 2e-5, AdamW (decay 0.1), cosine, one
        epoch, effective batch 128 (8 x 16 accumulation steps)."""
        base = cls(rank=128, alpha=256.0, lr=2e-5, weight_decay=0.1, warmup_ratio=0.03, epochs=1, batch_size=8,
                   grad_accum=16, gradient_checkpointing=True, checkpoint_every=100)
        return replace(base, **overrides)

    @classmethod
    def toy(cls, **overrides: Any) -> FinetuneConfig:
        """Scaled-down recipe for the toy models on a CPU (a few hundred steps, minutes)."""
        base = cls(rank=8, alpha=16.0, lr=2e-3, weight_decay=0.1, warmup_ratio=0.05, epochs=2, batch_size=16,
                   grad_accum=1, checkpoint_every=50)
        return replace(base, **overrides)


# ---------------------------------------------------------------------------- examples
@dataclass(frozen=True)
class TrainingExample:
    """One image-first prompt and its target text; the loss covers the target tokens only
    (``n_target_tokens`` counts them, the end-of-sequence token included)."""

    uid: str
    task: str
    image: Image.Image
    prompt: str
    target: str
    n_target_tokens: int


def _target_suffix(adapter: Adapter, target: str) -> str:
    """Text appended to the prompt: the target after one space, closed by the EOS token."""
    return " " + target.strip() + (adapter.tokenizer.eos_token or "")


def count_target_tokens(adapter: Adapter, prompt: str, target: str) -> int:
    """Number of tokens ``target`` (+ EOS) adds after the image-first ``prompt``.

    The image placeholder is not expanded here; it precedes the text, so the count is the
    same after expansion. Fails if the target tokenisation merges into the prompt's tokens.
    """
    tokenizer = adapter.tokenizer
    head = tokenizer(adapter.format_prompt(prompt))["input_ids"]
    full = tokenizer(adapter.format_prompt(prompt + _target_suffix(adapter, target)))["input_ids"]
    if full[:len(head)] != head or len(full) == len(head):
        raise ValueError(f"Target {target!r} does not tokenise as a separate suffix of prompt {prompt!r} for "
                         f"{adapter.model_id or adapter.family}; end the prompt at a word boundary.")
    return len(full) - len(head)


def _supports(sample: Sample, task: str) -> bool:
    """Whether ``sample`` has the annotation ``task`` trains on."""
    if task == "vqa":
        return bool(sample.vqa)
    if task == "caption":
        return bool(sample.captions)
    if task == "class":
        return sample.label >= 0 and bool(sample.class_name)
    return bool(sample.instructions)


def build_training_examples(adapter: Adapter, samples: Sequence[Sample], mix: Sequence[str] | None = None,
                            seed: int = 0, class_prompt: str = CLASS_PROMPTS["toy"]) -> list[TrainingExample]:
    """One image-first example per sample and task of ``mix`` that the sample has data for.

    * ``vqa``: the adapter's VQA task prompt (``adapter.task_prompt("vqa")``) with one of the
      sample's questions (seeded draw) → its majority answer;
    * ``caption``: the adapter's caption prompt → one reference caption (seeded draw);
    * ``class``: ``class_prompt`` (``CLASS_PROMPTS["imagenet"]`` for ImageNet) → the class name;
    * ``instruction``: one (instruction, response) turn of the sample's conversation (seeded
      draw; LLaVA-Instruct) as a single image-first turn.

    ``mix=None`` uses every task of :data:`TASKS` that some sample supports, so a concatenation
    of LLaVA-Instruct and VQAv2 samples gives the paper's instruction + VQA mix. A task of
    ``mix`` that no sample supports, or a sample that supports none of ``mix``, is an error.
    """
    if len(samples) == 0:
        raise ValueError("No samples to fine-tune on: pass a non-empty list (e.g. load_samples('toy', split='train', n=...)).")
    if mix is None:
        mix = tuple(task for task in TASKS if any(_supports(s, task) for s in samples))
    mix = tuple(mix)
    unknown = [task for task in mix if task not in TASKS]
    if unknown or not mix:
        raise ValueError(f"Unknown or empty training mix {mix}: use a non-empty subset of {TASKS} (or mix=None).")
    unsupported = [task for task in mix if not any(_supports(s, task) for s in samples)]
    if unsupported:
        raise ValueError(f"No training sample has data for {unsupported} (vqa: VQA items, caption: captions, class: a "
                         f"label, instruction: conversation turns); drop them from mix or add a dataset that has them.")
    rng = np.random.default_rng(seed)
    examples = []
    for sample in samples:
        tasks = [task for task in mix if _supports(sample, task)]
        if not tasks:
            raise ValueError(f"Sample {sample.uid} has data for none of the tasks {mix}; remove it or extend mix.")
        for task in tasks:
            if task == "vqa":
                item = sample.vqa[int(rng.integers(len(sample.vqa)))]
                prompt, target = adapter.task_prompt("vqa", question=item.question), item.majority_answer
            elif task == "caption":
                prompt, target = adapter.task_prompt("caption"), sample.captions[int(rng.integers(len(sample.captions)))]
            elif task == "class":
                prompt, target = class_prompt, sample.class_name
            else:
                prompt, target = sample.instructions[int(rng.integers(len(sample.instructions)))]
            examples.append(TrainingExample(sample.uid, task, sample.image, prompt, target,
                                            count_target_tokens(adapter, prompt, target)))
    return examples


def collate(adapter: Adapter, examples: Sequence[TrainingExample]) -> tuple[Batch, torch.Tensor]:
    """Batch of full sequences (prompt + target + EOS) and labels: target ids, -100 elsewhere.

    Rows are left padded, so every row's target occupies its last ``n_target_tokens`` positions.
    """
    batch = adapter.build_batch([e.image for e in examples], [e.prompt + _target_suffix(adapter, e.target) for e in examples])
    input_ids = batch.input_ids
    labels = torch.full_like(input_ids, -100)
    length = input_ids.shape[1]
    for row, example in enumerate(examples):
        labels[row, length - example.n_target_tokens:] = input_ids[row, length - example.n_target_tokens:]
    mask = batch.inputs.get("attention_mask")
    if mask is not None:
        labels = labels.masked_fill(mask == 0, -100)
    return batch, labels


def target_loss(adapter: Adapter, model: torch.nn.Module, batch: Batch, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over the target tokens of ``batch`` (float32).

    Logits are computed only for the last positions that predict a target
    (``logits_to_keep``). Chameleon sets image-code logits to the most negative float; the
    targets are text, so the loss stays finite.
    """
    device = next(model.parameters()).device
    inputs = batch.to(device, adapter.model.dtype).inputs
    targets = (labels != -100).sum(dim=1)
    keep = int(targets.max()) + 1
    logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits
    shifted = labels[:, labels.shape[1] - keep + 1:].to(device)
    return torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), shifted.reshape(-1),
                                             ignore_index=-100, reduction="sum")


def eoi_mask(adapter: Adapter, batch: Batch, enabled: bool = True):
    """Context in which text queries cannot attend to [EOI] in any layer (pre-softmax)."""
    if not enabled:
        return nullcontext()
    return knockout_attention(adapter, batch, sources="eoi", targets="text", layers=None, mode="pre_softmax")


# ------------------------------------------------------------------------------- LoRA
def _layers_prefix(adapter: Adapter) -> str:
    layers = adapter.layers
    for name, module in adapter.model.named_modules():
        if module is layers:
            return name
    raise ValueError(f"Could not find the decoder layers of {adapter.model_id or adapter.family} among the model's modules.")


def lora_target_regex(adapter: Adapter, include_mlp: bool = False) -> str:
    """Regex (peft ``target_modules``) matching only the language model's projections.

    Anchored at the decoder-layer container, so the vision tower's ``q_proj``... and
    Chameleon's VQ-VAE stay untouched.
    """
    blocks = [rf"self_attn\.({'|'.join(ATTENTION_PROJECTIONS)})"] + ([rf"mlp\.({'|'.join(MLP_PROJECTIONS)})"] if include_mlp else [])
    return rf"{re.escape(_layers_prefix(adapter))}\.\d+\.({'|'.join(blocks)})"


def lora_config(adapter: Adapter, config: FinetuneConfig):
    """The peft ``LoraConfig`` of a fine-tuning run."""
    from peft import LoraConfig

    return LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout, bias="none",
                      target_modules=lora_target_regex(adapter, config.include_mlp))


@contextmanager
def _peft_quietly() -> Iterator[None]:
    """Hide the FutureWarning transformers raises when peft reads ``is_gradient_checkpointing``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def _flag_restorer(model: torch.nn.Module) -> Callable[[], None]:
    """A function that puts back ``model``'s current requires_grad flags and train/eval mode
    (wrapping a model with peft changes both); call it after the LoRA layers are removed."""
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training

    def restore() -> None:
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
        model.train(was_training)

    return restore


def _check_lora_placement(adapter: Adapter, model: torch.nn.Module, config: FinetuneConfig) -> None:
    prefix = "base_model.model." + _layers_prefix(adapter) + "."
    wrapped = {name.split(".lora_", 1)[0] for name in lora_parameter_names(model)}
    outside = sorted(name for name in wrapped if not name.startswith(prefix))
    per_layer = len(ATTENTION_PROJECTIONS) + (len(MLP_PROJECTIONS) if config.include_mlp else 0)
    if outside or len(wrapped) != per_layer * adapter.num_layers:
        raise ValueError(f"LoRA wrapped {len(wrapped)} modules (expected {per_layer} per decoder layer x "
                         f"{adapter.num_layers}); outside the language model: {outside[:3]}. This family's "
                         "projections are not named q_proj/k_proj/v_proj/o_proj.")


# ----------------------------------------------------------------------------- schedule
def _plan(n_examples: int, config: FinetuneConfig) -> tuple[int, int]:
    """(optimizer steps per epoch, total scheduled steps)."""
    per_epoch = math.ceil(n_examples / config.effective_batch)
    return per_epoch, per_epoch * config.epochs


def _step_examples(step: int, n_examples: int, config: FinetuneConfig) -> np.ndarray:
    """Example indices of optimizer step ``step``: a seeded permutation per epoch, no state."""
    per_epoch, _ = _plan(n_examples, config)
    epoch, index = divmod(step, per_epoch)
    order = np.random.default_rng([config.seed, epoch]).permutation(n_examples)
    return order[index * config.effective_batch:(index + 1) * config.effective_batch]


def _fingerprint(adapter: Adapter, examples: Sequence[TrainingExample], config: FinetuneConfig) -> dict[str, Any]:
    digest = hashlib.sha256()
    for e in examples:
        digest.update(json.dumps([e.uid, e.task, e.prompt, e.target]).encode())
        digest.update(e.image.tobytes())
    settings = {k: v for k, v in asdict(config).items() if k not in _RESUMABLE_FIELDS}
    # the weights too (config + safetensors size/mtime of a local checkpoint): a retrained model
    # must not pick up the adapter of its predecessor; JSON round trip = the form saved in the log
    weights = json.loads(json.dumps(model_fingerprint(adapter)))
    return {"model_id": adapter.model_id, "weights": weights, "examples": digest.hexdigest(), "n_examples": len(examples),
            "config": settings}


# ------------------------------------------------------------------------------ outputs
def _lora_state(model: PeftModel) -> dict[str, torch.Tensor]:
    """The LoRA weights of ``model`` (what a checkpoint saves)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def _load_lora_state(model: PeftModel, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, state)


def _save_final(output_dir: Path, model: PeftModel, log: dict[str, Any]) -> None:
    """Adapter files first (each written atomically), ``training_log.json`` last as the marker."""
    (output_dir / TRAINING_LOG).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix=".final-", dir=output_dir) as scratch:
        model.save_pretrained(scratch)
        for name in ADAPTER_FILES:
            with atomic_path(output_dir / name) as tmp:
                shutil.copyfile(Path(scratch) / name, tmp)
    write_json(log, output_dir / TRAINING_LOG, indent=1)


def read_training_log(output_dir: str | Path) -> dict[str, Any] | None:
    """The ``training_log.json`` of a finished run (None when the run has not finished)."""
    path = Path(output_dir) / TRAINING_LOG
    if not path.exists() or not all((Path(output_dir) / name).exists() for name in ADAPTER_FILES):
        return None
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------- training
def finetune_lora(adapter: Adapter, samples: Sequence[Sample], config: FinetuneConfig, output_dir: str | Path,
                  progress: bool = True, mix: Sequence[str] | None = None,
                  class_prompt: str = CLASS_PROMPTS["toy"]) -> Path:
    """Fine-tune LoRA adapters on the language model's projections; return ``output_dir``.

    With ``config.mask_eoi`` every forward (and its backward) runs with text→[EOI] attention
    blocked in all layers. Loss: next-token cross-entropy on the target tokens, summed and
    divided by the number of target tokens of the whole optimizer step (so gradient
    accumulation equals one large batch). AdamW + cosine schedule with warm-up.

    Resumable: the state is checkpointed every ``config.checkpoint_every`` steps; a rerun with
    the same model, samples and config continues from the last checkpoint, and a finished run
    is returned without retraining. ``adapter.model`` is left as it was (LoRA removed, flags
    and train/eval mode restored). Evaluate the result with :func:`finetuned` (merged into
    ``adapter.model`` for a while) or :func:`load_finetuned` (a freshly loaded model). ``mix``:
    see :func:`build_training_examples` (None: every task the samples have data for).
    """
    from peft import get_peft_model
    from transformers import get_cosine_schedule_with_warmup

    adapter.require_weights("LoRA fine-tuning")

    output_dir = Path(output_dir)
    examples = build_training_examples(adapter, samples, mix, seed=config.seed, class_prompt=class_prompt)
    per_epoch, total = _plan(len(examples), config)
    stop = total if config.max_steps is None else min(total, config.max_steps)
    fingerprint = _fingerprint(adapter, examples, config)
    finished = read_training_log(output_dir)
    if finished is not None:
        if finished["fingerprint"] != fingerprint:
            raise ValueError(f"{output_dir} holds a finished run with a different model, examples or config; "
                             "choose another output_dir or delete it.")
        if finished["steps"] >= stop:
            return output_dir
    output_dir.mkdir(parents=True, exist_ok=True)

    base = adapter.model
    restore_flags = _flag_restorer(base)
    torch.manual_seed(config.seed)
    with _peft_quietly():
        model = get_peft_model(base, lora_config(adapter, config))
    try:
        _check_lora_placement(adapter, model, config)
        if config.gradient_checkpointing:
            base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        scheduler = get_cosine_schedule_with_warmup(optimizer, round(config.warmup_ratio * total), total)

        def step_fn(step: int) -> tuple[float, list[float]]:
            chunk = [examples[i] for i in _step_examples(step, len(examples), config)]
            n_tokens = sum(e.n_target_tokens for e in chunk)
            loss_sum = 0.0
            for start in range(0, len(chunk), config.batch_size):
                batch, labels = collate(adapter, chunk[start:start + config.batch_size])
                with eoi_mask(adapter, batch, config.mask_eoi):
                    loss = target_loss(adapter, model, batch, labels)
                    (loss / n_tokens).backward()
                loss_sum += float(loss.detach())
            return loss_sum / n_tokens, []

        checkpoint = Checkpoint(output_dir / CHECKPOINT_DIR, fingerprint, config.checkpoint_every, _lora_state,
                                _load_lora_state)
        result = run_loop(model, optimizer, scheduler, step_fn, total, stop=stop, checkpoint=checkpoint,
                          record=lambda step, loss, _: [step + 1, loss, scheduler.get_last_lr()[0]],
                          desc=f"LoRA {'masked' if config.mask_eoi else 'control'}", show=progress)
        log = {"fingerprint": fingerprint, "config": asdict(config), "mix": dict(Counter(e.task for e in examples)),
               "steps": result.step,
               "total_steps": total, "steps_per_epoch": per_epoch, "curve": result.curve,
               "train_seconds": result.seconds, "trainable_parameters": sum(p.numel() for p in params),
               "target_modules": lora_target_regex(adapter, config.include_mlp)}
        _save_final(output_dir, model, log)
        if result.step == total:
            checkpoint.clear()
    finally:
        if config.gradient_checkpointing:
            base.activation_checkpointing_disable()
            base.disable_input_require_grads()
        model.unload()
        restore_flags()
    return output_dir


def lora_parameter_names(model: torch.nn.Module) -> list[str]:
    """Names of the LoRA parameters of a peft-wrapped model."""
    return [name for name, _ in model.named_parameters() if ".lora_" in name]


# ------------------------------------------------------------------------------ loading
def _finished_run(adapter_dir: str | Path) -> Path:
    """``adapter_dir`` as a path, checked to hold the adapter files of a finished run."""
    adapter_dir = Path(adapter_dir)
    missing = [name for name in ADAPTER_FILES if not (adapter_dir / name).exists()]
    if missing:
        raise ValueError(f"{adapter_dir} is not a finished LoRA run (missing {missing}); run finetune_lora first.")
    return adapter_dir


def _with_lora(model: torch.nn.Module, adapter_dir: Path) -> PeftModel:
    """``model`` wrapped (in place) in a peft model holding the LoRA weights of ``adapter_dir``."""
    from peft import PeftModel

    with _peft_quietly():
        return PeftModel.from_pretrained(model, adapter_dir)


def _finetuned_adapter(base: Adapter, merged: torch.nn.Module, adapter_dir: Path) -> Adapter:
    """Adapter of ``base``'s family over ``merged``, with a ``model_id`` naming the base, the run
    folder and a hash of the adapter weights, so activation caches never mix base and fine-tuned models."""
    from ..models.registry import adapter_for

    digest = hashlib.sha256((adapter_dir / ADAPTER_FILES[0]).read_bytes()).hexdigest()[:10]
    model_id = f"{base.model_id}+lora:{adapter_dir.resolve().name}:{digest}"
    return adapter_for(merged, base.processor, model_id, base.checkpoint_dir)


@contextmanager
def finetuned(adapter: Adapter, adapter_dir: str | Path) -> Iterator[Adapter]:
    """Context in which ``adapter.model`` holds the LoRA weights of ``adapter_dir``, merged in place;
    yields an adapter over it (its own ``model_id``, see :func:`load_finetuned`).

    No second copy of the model is made: only the weights of the modules LoRA touches are kept
    (on the CPU) and put back bit for bit on exit, errors included, together with the
    requires_grad flags and train/eval mode. Inside the context use only the yielded adapter:
    ``adapter`` computes the fine-tuned model under the base's ``model_id``.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    adapter_dir = _finished_run(adapter_dir)
    model = adapter.model
    restore_flags = _flag_restorer(model)
    wrapped = _with_lora(model, adapter_dir)
    originals = [(p, p.detach().to("cpu", copy=True)) for module in wrapped.modules()
                 if isinstance(module, BaseTunerLayer) for p in module.get_base_layer().parameters()]
    try:
        merged = wrapped.merge_and_unload()
        merged.eval()
        yield _finetuned_adapter(adapter, merged, adapter_dir)
    finally:
        with torch.no_grad():
            for param, original in originals:
                param.copy_(original)
        restore_flags()


def load_finetuned(model_id: str | Path, adapter_dir: str | Path, **load_kwargs: Any) -> Adapter:
    """A freshly loaded base model (:func:`narrowgate_utils.models.registry.load` with ``load_kwargs``)
    with the LoRA weights of ``adapter_dir`` merged in, in its family adapter.

    The merged model is a plain transformers model, so tracing and knockout work unchanged. Its
    ``model_id`` names the base, the run folder and a hash of the adapter weights. To compare
    with a base model already in memory, use :func:`finetuned` (no second copy).
    """
    from ..models.registry import load

    adapter_dir = _finished_run(adapter_dir)
    base = load(model_id, **load_kwargs)
    merged = _with_lora(base.model, adapter_dir).merge_and_unload()
    merged.eval()
    return _finetuned_adapter(base, merged, adapter_dir)


__all__ = [
    "TASKS",
    "FinetuneConfig",
    "TrainingExample",
    "build_training_examples",
    "collate",
    "count_target_tokens",
    "eoi_mask",
    "finetune_lora",
    "finetuned",
    "load_finetuned",
    "lora_config",
    "lora_parameter_names",
    "lora_target_regex",
    "read_training_log",
    "target_loss",
]
