"""Train the toy-world models in real Hugging Face architectures (CPU minutes, GPU if present).

* ``toy-native`` — ``ChameleonForConditionalGeneration`` from scratch, next-token loss on
  every token (image codes and text), on a mixture of image→text (classification, VQA,
  captioning) and text→image (caption → ``<racm3:break>`` codes ``<eoss>``) sequences.
* ``toy-nonnative`` — ``LlavaForConditionalGeneration`` with a tiny CLIP tower pretrained as
  an attribute classifier; its Llama LM is first pretrained on toy text alone, then the
  projector + LM learn from image→text sequences with loss on the answer tokens only
  (the tower stays frozen, as in LLaVA-1.5). An explicit ``<eoi>`` marker follows the image.
* ``toy-gated`` / ``toy-distributed`` — ``toy-native`` recipes with a *planted* route: during
  training the text after [EOI] sees the image only through [EOI] (gated), or never sees
  [EOI] (distributed). The route is enforced by a mask plus a penalty on the attention mass
  a plain causal attention would put on the forbidden keys (ramped in after a warm-up), so
  the behaviour holds at test time with ordinary attention and no mask.

Every model is written into a temporary directory and moved into place with ``os.replace``
only once it is complete; step checkpoints under ``<cache>/toy/.work/`` make an interrupted
run resume where it stopped (batches depend only on (seed, step), so a resumed run equals an
uninterrupted one).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..console import progress_bar
from ..data.sample import Sample
from ..data.toy import CAPTION_PROMPT, CLASS_PROMPT, TOY_COLORS, TOY_SHAPES, VQA_PROMPT, toy_dataset, yes_no_question
from .image_tokenizer import PatchCodebook, code_to_bpe_table, code_token_name, train_image_tokenizer
from .registry import TOY_METADATA, TOY_MODEL_NAMES, TOY_VERSION, check_toy_name, toy_model_dir, toy_root
from .text_tokenizer import BOS, EOS, PAD, build_text_tokenizer
from .vision_encoder import toy_image_processor, train_vision_encoder

SOI_TOKEN, EOI_TOKEN, IMAGE_TOKEN = "<racm3:break>", "<eoss>", "<image>"
LLAVA_EOI_TOKEN = "<eoi>"
PLANT_ATTENTION = "narrowgate_plant"
TOY_COLOR_NAMES = tuple(TOY_COLORS)


@dataclass(frozen=True)
class ToyRecipe:
    """Everything that determines a toy model's weights (its hash keys the cache)."""

    name: str
    family: str  # "chameleon" or "llava"
    plant: str | None = None  # None, "gated" or "distributed"
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    steps: int = 1000
    batch_size: int = 48
    lr: float = 2e-3
    warmup_steps: int = 30
    #: weight of the forbidden-attention penalty and when it ramps in (fractions of ``steps``)
    penalty_weight: float = 2.0
    penalty_start: float = 0.25
    penalty_ramp: float = 0.25
    #: from this fraction of ``steps`` on, forbidden keys are also masked (pre-softmax) in training;
    #: before it the model learns to read the image freely (the EOI route alone is not found from scratch)
    mask_start: float = 0.25
    #: text-only LM steps before multimodal training (non-native family; native family too when > 0)
    pretrain_steps: int = 0
    #: sampling weights of the training tasks
    tasks: tuple[tuple[str, float], ...] = (("vqa", 0.4), ("yesno", 0.25), ("class", 0.1), ("caption", 0.1),
                                            ("t2i", 0.15))
    #: restrict VQA training questions to these indices of ``Sample.vqa`` (None: all five)
    vqa_kinds: tuple[int, ...] | None = None
    n_train: int = 6000
    n_eval: int = 300
    #: split the saved metrics are computed on (development runs use "validation")
    eval_split: str = "test"
    codebook_size: int = 256
    vision_steps: int = 250
    seed: int = 0
    checkpoint_every: int = 100
    #: training objective: None = the family's own (native: loss on every token; non-native: on the
    #: answer); False = native family with loss on text tokens only (no image-code loss, no "t2i")
    image_loss: bool | None = None
    #: share the input embedding and the output projection (native family). With tied weights
    #: a question word and the image features that predict that word live in one space, which
    #: the yes/no questions ("Is the shape red?") need: untied toy models stay at chance there.
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.family not in ("chameleon", "llava"):
            raise ValueError(f"ToyRecipe {self.name}: family must be 'chameleon' or 'llava', got {self.family!r}.")
        if self.plant not in (None, "gated", "distributed") or (self.plant and self.family != "chameleon"):
            raise ValueError(f"ToyRecipe {self.name}: plant must be None, 'gated' or 'distributed' (chameleon only).")
        known = {"vqa", "yesno", "class", "caption"} | ({"t2i"} if self.family == "chameleon" else set())
        unknown = {task for task, _ in self.tasks} - known
        if unknown:
            raise ValueError(f"ToyRecipe {self.name}: tasks {sorted(unknown)} are not available for the {self.family} "
                             f"family; use {sorted(known)}.")
        if self.image_loss is not None and (self.family != "chameleon" or self.image_loss):
            raise ValueError(f"ToyRecipe {self.name}: image_loss must be None (the family's objective) or False "
                             "(chameleon only: text-only loss); a continuous encoder has no image tokens to predict.")
        if self.tie_embeddings and self.family != "chameleon":
            raise ValueError(f"ToyRecipe {self.name}: tie_embeddings applies to the chameleon family only.")
        if self.image_loss is False and any(task == "t2i" for task, _ in self.tasks):
            raise ValueError(f"ToyRecipe {self.name}: image_loss=False trains on text only; drop the 't2i' task.")

    def fingerprint(self) -> str:
        # fields added after TOY_VERSION 1 enter the hash only when set, so older fingerprints stay valid
        fields = {k: v for k, v in asdict(self).items() if not (k in _ADDED_FIELD_DEFAULTS and v == _ADDED_FIELD_DEFAULTS[k])}
        payload = json.dumps({"version": TOY_VERSION, **fields}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


#: fields added to ToyRecipe after its first release, with their defaults (see ``fingerprint``)
_ADDED_FIELD_DEFAULTS = {"image_loss": None, "tie_embeddings": False}
_IMAGE_TO_TEXT = (("vqa", 0.45), ("yesno", 0.25), ("class", 0.15), ("caption", 0.15))
TOY_RECIPES: dict[str, ToyRecipe] = {
    "toy-native": ToyRecipe("toy-native", "chameleon", tie_embeddings=True),
    "toy-nonnative": ToyRecipe("toy-nonnative", "llava", steps=600, pretrain_steps=150, tasks=_IMAGE_TO_TEXT),
    # the gated model needs more steps to pass size and yes/no through its single token
    "toy-gated": ToyRecipe("toy-gated", "chameleon", plant="gated", tie_embeddings=True, steps=1300),
    "toy-distributed": ToyRecipe("toy-distributed", "chameleon", plant="distributed", tie_embeddings=True),
}


def resolve_device(device: str | None) -> str:
    """``None`` → CUDA when available, else CPU; validate explicit choices."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"Unknown device {device!r}; use 'cpu' or 'cuda'.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but no CUDA GPU is available; use --device cpu.")
    return device


# ---------------------------------------------------------------------------- planted attention
@dataclass
class _PlantState:
    forbidden: torch.Tensor | None = None  # [B, 1, Q, K], 1.0 where a query may not see a key
    hard: bool = True
    masses: list[torch.Tensor] = field(default_factory=list)


_PLANT = _PlantState()


def _plant_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0, **kwargs):
    """Eager attention that records the plain-causal probability mass on forbidden keys and,
    when ``hard``, computes the output with those keys masked out (pre-softmax)."""
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if _PLANT.forbidden is not None:
        _PLANT.masses.append((probs * _PLANT.forbidden).sum(-1))
        if _PLANT.hard:
            blocked = scores.masked_fill(_PLANT.forbidden.bool(), torch.finfo(scores.dtype).min)
            probs = torch.softmax(blocked, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def _register_plant_attention() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import eager_mask

    AttentionInterface.register(PLANT_ATTENTION, _plant_attention)
    AttentionMaskInterface.register(PLANT_ATTENTION, eager_mask)


@contextlib.contextmanager
def planted(forbidden: torch.Tensor | None, hard: bool = True) -> Iterator[_PlantState]:
    """Within the block, models using the ``narrowgate_plant`` attention see ``forbidden``."""
    _PLANT.forbidden, _PLANT.hard, _PLANT.masses = forbidden, hard, []
    try:
        yield _PLANT
    finally:
        _PLANT.forbidden, _PLANT.masses = None, []


def forbidden_mass(masses: Sequence[torch.Tensor], query_rows: torch.Tensor) -> torch.Tensor:
    """Mean attention mass on forbidden keys over layers, heads and the restricted query rows."""
    rows = query_rows[:, None, :].to(masses[0].dtype)  # [B, 1, Q]
    total = torch.stack([(m * rows).sum() for m in masses]).mean()
    return total / (rows.sum() * masses[0].shape[1]).clamp(min=1)


# ---------------------------------------------------------------------------- data → token ids
class ToyTextData:
    """Pre-tokenised targets and prompts of a sample list (word-level ids, no specials)."""

    def __init__(self, samples: Sequence[Sample], tokenizer) -> None:
        cache: dict[str, list[int]] = {}

        def ids(texts: list[str]) -> list[list[int]]:
            missing = sorted({t for t in texts if t not in cache})
            if missing:
                cache.update(zip(missing, tokenizer(missing, add_special_tokens=False)["input_ids"]))
            return [cache[t] for t in texts]

        self.samples = samples
        n_q = len(samples[0].vqa)
        self.class_prompt, self.caption_prompt = ids([CLASS_PROMPT, CAPTION_PROMPT])
        self.class_target = ids([s.class_name for s in samples])
        self.captions = [ids(list(s.captions)) for s in samples]
        self.questions = [ids([VQA_PROMPT.format(question=q.question) for q in s.vqa]) for s in samples]
        self.answers = [ids([q.majority_answer for q in s.vqa]) for s in samples]
        self.n_questions = n_q
        # extra yes/no questions over every colour and shape (training-time augmentation)
        self.yes_no = {}
        for about, values in (("color", TOY_COLOR_NAMES), ("shape", TOY_SHAPES)):
            for asked in values:
                question = VQA_PROMPT.format(question=yes_no_question("", "", about, asked)[0])
                self.yes_no[about, asked] = ids([question])[0]
        self.yes, self.no = ids(["yes", "no"])

    def image_to_text(self, i: int, task: str, pick: int) -> tuple[list[int], list[int]]:
        """(prompt ids, target ids) of image-first task ``task`` for sample ``i``."""
        if task == "class":
            return self.class_prompt, self.class_target[i]
        if task == "caption":
            return self.caption_prompt, self.captions[i][pick % len(self.captions[i])]
        if task == "vqa":
            k = pick % self.n_questions
            return self.questions[i][k], self.answers[i][k]
        if task == "yesno":
            about, values = (("color", TOY_COLOR_NAMES), ("shape", TOY_SHAPES))[pick % 2]
            own = values.index(self.samples[i].meta[about])
            truth = (pick // 2) % 2 == 0
            asked = values[own if truth else (own + 1 + (pick // 4) % (len(values) - 1)) % len(values)]
            return self.yes_no[about, asked], self.yes if truth else self.no
        raise ValueError(f"Unknown image-to-text task {task!r}; use 'class', 'caption', 'vqa' or 'yesno'.")


@dataclass
class TokenBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor  # [B, T]: predict token t (from t-1)
    forbidden: torch.Tensor | None  # [B, 1, T, T]
    query_rows: torch.Tensor | None  # [B, T]: rows with forbidden keys
    sample_index: torch.Tensor


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def _draw_tasks(recipe: ToyRecipe, step: int, n: int, text_only: bool = False):
    rng = np.random.default_rng([recipe.seed, step, 1 if text_only else 0])
    names = [t for t, _ in recipe.tasks]
    weights = np.array([w for _, w in recipe.tasks], dtype=float)
    idx = rng.integers(0, n, size=recipe.batch_size)
    tasks = rng.choice(names, size=recipe.batch_size, p=weights / weights.sum())
    picks = rng.integers(0, 1000, size=recipe.batch_size)
    if recipe.vqa_kinds is not None:
        kinds = np.asarray(recipe.vqa_kinds)
        picks = np.where(tasks == "vqa", kinds[picks % len(kinds)], picks)
    return idx, tasks, picks


def chameleon_batch(recipe: ToyRecipe, data: ToyTextData, codes: torch.Tensor, vocab: dict[str, int],
                    step: int) -> TokenBatch:
    """A training batch for the native family: loss on every token; planted masks if any."""
    idx, tasks, picks = _draw_tasks(recipe, step, len(data.samples))
    bos, eos, soi, eoi, pad = vocab[BOS], vocab[EOS], vocab[SOI_TOKEN], vocab[EOI_TOKEN], vocab[PAD]
    rows, spans = [], []
    for i, task, pick in zip(idx, tasks, picks):
        image = [soi] + codes[i].tolist() + [eoi]
        if task == "t2i":
            caption = data.captions[i][pick % 5]
            rows.append([bos] + caption + image + [eos])
            spans.append((1 + len(caption), None))
        else:
            prompt, target = data.image_to_text(int(i), str(task), int(pick))
            rows.append([bos] + image + prompt + target + [eos])
            spans.append((1, "text"))
    input_ids = _pad(rows, pad)
    attention_mask = (input_ids != pad).long()
    loss_mask = attention_mask.clone()
    loss_mask[:, 0] = 0
    if recipe.image_loss is False:  # text-only objective: no loss on [SOI], the codes or [EOI]
        for r, (soi_pos, _) in enumerate(spans):
            loss_mask[r, soi_pos:soi_pos + codes.shape[1] + 2] = 0
    forbidden = query_rows = None
    if recipe.plant is not None:
        b, t = input_ids.shape
        forbidden = torch.zeros(b, 1, t, t)
        query_rows = torch.zeros(b, t, dtype=torch.bool)
        n_codes = codes.shape[1]
        for r, (soi_pos, kind) in enumerate(spans):
            eoi_pos = soi_pos + n_codes + 1
            if kind != "text":
                continue
            length = len(rows[r])
            query_rows[r, eoi_pos + 1:length] = True
            if recipe.plant == "gated":
                forbidden[r, 0, eoi_pos + 1:length, soi_pos + 1:eoi_pos] = 1.0
            else:
                forbidden[r, 0, eoi_pos + 1:length, eoi_pos] = 1.0
    return TokenBatch(input_ids, attention_mask, loss_mask, forbidden, query_rows, torch.as_tensor(idx))


def llava_batch(recipe: ToyRecipe, data: ToyTextData, vocab: dict[str, int], n_image_tokens: int, step: int,
                text_only: bool = False) -> TokenBatch:
    """Non-native batch: image-first sequences with loss on the answer (+EOS) only, or text-only
    LM sequences (captions and class statements, loss on every token)."""
    idx, tasks, picks = _draw_tasks(recipe, step, len(data.samples), text_only)
    bos, eos, pad = vocab[BOS], vocab[EOS], vocab[PAD]
    image = [vocab[IMAGE_TOKEN]] * n_image_tokens + [vocab[LLAVA_EOI_TOKEN]]
    rows, masks = [], []
    for i, task, pick in zip(idx, tasks, picks):
        if text_only:
            text = data.class_prompt + data.class_target[i] if pick % 4 == 0 else data.captions[i][pick % 5]
            rows.append([bos] + text + [eos])
            masks.append([0] + [1] * (len(text) + 1))
            continue
        prompt, target = data.image_to_text(int(i), str(task), int(pick))
        rows.append([bos] + image + prompt + target + [eos])
        masks.append([0] * (1 + len(image) + len(prompt)) + [1] * (len(target) + 1))
    input_ids = _pad(rows, pad)
    return TokenBatch(input_ids, (input_ids != pad).long(), _pad(masks, 0), None, None, torch.as_tensor(idx))


def text_batch(recipe: ToyRecipe, data: ToyTextData, vocab: dict[str, int], step: int) -> TokenBatch:
    """Text-only LM batch for a native-family backbone (the sequences of ``llava_batch(text_only=True)``)."""
    idx, _, picks = _draw_tasks(recipe, step, len(data.samples), text_only=True)
    rows = [[vocab[BOS]] + (data.class_prompt + data.class_target[i] if pick % 4 == 0 else data.captions[i][pick % 5])
            + [vocab[EOS]] for i, pick in zip(idx, picks)]
    input_ids = _pad(rows, vocab[PAD])
    loss_mask = (input_ids != vocab[PAD]).long()
    loss_mask[:, 0] = 0
    return TokenBatch(input_ids, (input_ids != vocab[PAD]).long(), loss_mask, None, None, torch.as_tensor(idx))


def next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting token t from position t-1 where ``loss_mask[:, t]``."""
    keep = loss_mask[:, 1:].bool()
    return nn.functional.cross_entropy(logits[:, :-1][keep].float(), input_ids[:, 1:][keep])


# ---------------------------------------------------------------------------- model builders
def build_chameleon(recipe: ToyRecipe, tokenizer, n_codebook: int):
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    vocab = tokenizer.get_vocab()
    config = ChameleonConfig(
        vocab_size=len(vocab), hidden_size=recipe.hidden_size, intermediate_size=2 * recipe.hidden_size,
        num_hidden_layers=recipe.layers, num_attention_heads=recipe.heads, num_key_value_heads=recipe.heads,
        max_position_embeddings=256, vocabulary_map=vocab, bos_token_id=vocab[BOS], eos_token_id=vocab[EOS],
        pad_token_id=vocab[PAD], tie_word_embeddings=recipe.tie_embeddings,
        vq_config=dict(embed_dim=8, num_embeddings=n_codebook, latent_channels=8, resolution=32, base_channels=32,
                       channel_multiplier=[1], num_res_blocks=1),
    )
    config._attn_implementation = PLANT_ATTENTION if recipe.plant else "eager"
    torch.manual_seed(recipe.seed)
    return ChameleonForConditionalGeneration(config)


def build_llava(recipe: ToyRecipe, tokenizer, tower):
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vocab = tokenizer.get_vocab()
    text_config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=recipe.hidden_size, intermediate_size=2 * recipe.hidden_size,
        num_hidden_layers=recipe.layers, num_attention_heads=recipe.heads, num_key_value_heads=recipe.heads,
        max_position_embeddings=256, bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], pad_token_id=vocab[PAD],
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=tower.config.to_dict(), text_config=text_config.to_dict(), image_token_id=vocab[IMAGE_TOKEN],
        projector_hidden_act="gelu", vision_feature_select_strategy="default", vision_feature_layer=-1,
        image_seq_length=(tower.config.image_size // tower.config.patch_size) ** 2,
    )
    config.vision_config.model_type = "clip_vision_model"
    config._attn_implementation = "eager"
    torch.manual_seed(recipe.seed)
    model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(tower.state_dict())
    model.model.vision_tower.requires_grad_(False)
    return model


def count_parameters(model: nn.Module, family: str) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    if family == "chameleon":
        unused = sum(p.numel() for p in model.model.vqmodel.parameters())
        return {"total": total, "language_model": total - unused, "vision": 0, "unused_vqmodel": unused}
    vision = sum(p.numel() for p in model.model.vision_tower.parameters())
    projector = sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    return {"total": total, "language_model": total - vision - projector, "vision": vision, "projector": projector}


# ---------------------------------------------------------------------------- shared components
def _component_dir(kind: str, recipe: ToyRecipe) -> Path:
    key = {"image_tokenizer": (recipe.codebook_size, recipe.n_train, recipe.seed),
           "vision_encoder": (recipe.vision_steps, recipe.n_train, recipe.seed)}[kind]
    return toy_root() / "_components" / f"{kind}-v{TOY_VERSION}-{'-'.join(map(str, key))}"


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``target``; on success it replaces ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, trash / "old")
            shutil.rmtree(trash)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _write_json(path: Path, payload: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(payload, handle, indent=2)
    os.replace(tmp, path)


def get_image_tokenizer(recipe: ToyRecipe, train: Sequence[Sample]) -> tuple[PatchCodebook, dict]:
    """The shared k-means codebook (trained once, cached), with its test reconstruction error."""
    directory = _component_dir("image_tokenizer", recipe)
    if not (directory / "metrics.json").exists():
        start = time.perf_counter()
        book = train_image_tokenizer([s.image for s in train], n_embeddings=recipe.codebook_size, seed=recipe.seed)
        test = toy_dataset("test", n=recipe.n_eval, seed=recipe.seed)
        metrics = {"n_embeddings": book.n_embeddings, "n_codes_per_image": book.n_codes,
                   "train_mse": book.reconstruction_error([s.image for s in train[:1000]]),
                   "test_mse": book.reconstruction_error([s.image for s in test]),
                   "train_seconds": time.perf_counter() - start}
        with atomic_dir(directory) as tmp:
            book.save(tmp)
            _write_json(tmp / "metrics.json", metrics)
    return PatchCodebook.load(directory), json.loads((directory / "metrics.json").read_text())


def get_vision_encoder(recipe: ToyRecipe, train: Sequence[Sample], device: str):
    """The shared tiny CLIP tower (trained once as an attribute classifier, cached)."""
    from transformers import CLIPVisionModel

    directory = _component_dir("vision_encoder", recipe)
    if not (directory / "metrics.json").exists():
        start = time.perf_counter()
        test = toy_dataset("test", n=recipe.n_eval, seed=recipe.seed)
        bar = progress_bar(total=recipe.vision_steps, desc="vision encoder", leave=False)

        def progress(step: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")

        tower, metrics = train_vision_encoder(train, test, steps=recipe.vision_steps, seed=recipe.seed,
                                              device=device, progress=progress)
        bar.close()
        metrics["train_seconds"] = time.perf_counter() - start
        with atomic_dir(directory) as tmp:
            tower.save_pretrained(tmp)
            _write_json(tmp / "metrics.json", metrics)
    return CLIPVisionModel.from_pretrained(directory), json.loads((directory / "metrics.json").read_text())


def toy_tokenizer(family: str, n_codebook: int = 0):
    """The toy text tokenizer of a family (Chameleon: image-code names as plain vocabulary)."""
    if family == "chameleon":
        return build_text_tokenizer([IMAGE_TOKEN, SOI_TOKEN, EOI_TOKEN],
                                    plain_tokens=[code_token_name(i) for i in range(n_codebook)])
    if family == "llava":
        return build_text_tokenizer([IMAGE_TOKEN, LLAVA_EOI_TOKEN])
    raise ValueError(f"Unknown toy family {family!r}; use 'chameleon' or 'llava'.")


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def greedy_decode(model: nn.Module, prompts: list[list[int]], tokenizer, pixel_values: torch.Tensor | None = None,
                  max_new_tokens: int = 8, batch_size: int = 128) -> list[str]:
    """Greedy continuation of left-padded prompts (ids incl. BOS), decoded without specials."""
    device = next(model.parameters()).device
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)
        mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in chunk])[:, None]).long()
        mask = mask.to(device)
        extra = {} if pixel_values is None else {"pixel_values": pixel_values[start:start + batch_size].to(device)}
        done = torch.zeros(len(chunk), dtype=torch.bool, device=device)
        new = []
        for _ in range(max_new_tokens):
            logits = model(input_ids=ids, attention_mask=mask, **extra).logits[:, -1]
            nxt = logits.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            new.append(nxt)
            done |= nxt == eos
            ids = torch.cat([ids, nxt[:, None]], 1)
            mask = torch.cat([mask, (~done | (nxt == eos)).long()[:, None]], 1)
            if bool(done.all()):
                break
        generated = torch.stack(new, 1).tolist()
        for row in generated:
            row = row[: row.index(eos)] if eos in row else row
            outputs.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return outputs


def _vqa_score(prediction: str, answers: Sequence[str]) -> float:
    try:
        from ..metrics import vqa_accuracy
    except ImportError:
        matches = sum(a.strip().lower() == prediction.strip().lower() for a in answers)
        return min(1.0, matches / 3)
    return float(vqa_accuracy(prediction, list(answers)))


def _cider(predictions: list[str], references: list[Sequence[str]]) -> float | None:
    try:
        from ..metrics import cider
    except ImportError:
        return None
    return float(cider(predictions, [list(r) for r in references]))


def evaluate(model: nn.Module, tokenizer, test: Sequence[Sample], image_ids: list[list[int]],
             pixel_values: torch.Tensor | None = None) -> dict:
    """Test metrics: classification accuracy ("This shape is a" → class name), VQA accuracy
    (min(1, #matches/3), official normalisation when the metrics package is present), CIDEr."""
    data = ToyTextData(test, tokenizer)
    bos = tokenizer.bos_token_id

    def prompts(task: str, pick: int = 0) -> list[list[int]]:
        return [[bos] + image_ids[i] + data.image_to_text(i, task, pick)[0] for i in range(len(test))]

    classes = greedy_decode(model, prompts("class"), tokenizer, pixel_values, max_new_tokens=4)
    captions = greedy_decode(model, prompts("caption"), tokenizer, pixel_values, max_new_tokens=16)
    vqa_scores: dict[str, list[float]] = {}
    for k in range(data.n_questions):
        answers = greedy_decode(model, prompts("vqa", k), tokenizer, pixel_values, max_new_tokens=6)
        for sample, answer in zip(test, answers):
            vqa_scores.setdefault(sample.meta["vqa_kinds"][k], []).append(_vqa_score(answer, sample.vqa[k].answers))
    every = [s for v in vqa_scores.values() for s in v]
    return {
        "n_images": len(test),
        "classification_accuracy": float(np.mean([c == s.class_name for c, s in zip(classes, test)])),
        "vqa_accuracy": float(np.mean(every)),
        "vqa_accuracy_by_question": {k: float(np.mean(v)) for k, v in vqa_scores.items()},
        "cider": _cider(captions, [s.captions for s in test]),
        "examples": [{"class": c, "caption": cap} for c, cap in zip(classes[:5], captions[:5])],
    }


@torch.no_grad()
def test_forbidden_mass(model: nn.Module, recipe: ToyRecipe, data: ToyTextData, codes: torch.Tensor,
                        vocab: dict[str, int]) -> float:
    """Attention mass that plain causal attention (no mask) puts on the planted forbidden keys."""
    model.set_attn_implementation(PLANT_ATTENTION)
    batch = chameleon_batch(replace(recipe, tasks=(("vqa", 1.0),)), data, codes, vocab, step=0)
    with planted(batch.forbidden, hard=False) as state:
        model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        mass = float(forbidden_mass(state.masses, batch.query_rows))
    model.set_attn_implementation("eager")
    return mass


# ---------------------------------------------------------------------------- training loop
def _lr_factor(recipe: ToyRecipe, step: int, total: int) -> float:
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, total - recipe.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * progress))


def _penalty_weight(recipe: ToyRecipe, step: int) -> float:
    start = recipe.penalty_start * recipe.steps
    ramp = max(1.0, recipe.penalty_ramp * recipe.steps)
    return recipe.penalty_weight * float(np.clip((step - start) / ramp, 0.0, 1.0))


def _run_phase(model: nn.Module, params: list[nn.Parameter], total: int, make_loss, recipe: ToyRecipe,
               state_path: Path, phase: str, device: str, desc: str) -> tuple[list, float]:
    """Optimise ``make_loss(step)`` for ``total`` steps, resuming from ``state_path`` if present."""
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, betas=(0.9, 0.98), weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(recipe, s, total))
    start, curve, elapsed = 0, [], 0.0
    if state_path.exists():
        saved = torch.load(state_path, map_location=device, weights_only=False)
        if saved["fingerprint"] == recipe.fingerprint() and saved["phase"] == phase:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["schedule"])
            start, curve, elapsed = saved["step"], saved["curve"], saved["elapsed"]
    model.train()
    bar = progress_bar(range(start, total), desc, initial=start, total=total, leave=False,
                       position=int(os.environ.get("NARROWGATE_TQDM_POSITION", "0")))
    tick = time.perf_counter()
    for step in bar:
        loss, logs = make_loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        if step % 10 == 0 or step == total - 1:
            curve.append([step, round(float(loss.detach()), 4), *[round(v, 4) for v in logs]])
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        if (step + 1) % recipe.checkpoint_every == 0 or step + 1 == total:
            _save_state(state_path, model, optimizer, schedule, recipe, phase, step + 1, curve,
                        elapsed + time.perf_counter() - tick)
    bar.close()
    model.eval()
    return curve, elapsed + time.perf_counter() - tick


def _save_state(path: Path, model, optimizer, schedule, recipe, phase, step, curve, elapsed) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".state.", dir=path.parent)
    os.close(fd)
    torch.save({"fingerprint": recipe.fingerprint(), "phase": phase, "step": step, "curve": curve,
                "elapsed": elapsed, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict()}, tmp)
    os.replace(tmp, path)


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


def _train_toy_model(recipe: ToyRecipe, device: str, target: Path, evaluate_model: bool) -> Path:
    work = toy_root() / ".work" / f"{recipe.name}-{recipe.fingerprint()}"
    _register_plant_attention()
    torch.set_flush_denormal(True)  # tiny late-training gradients turn denormal and stall CPU maths
    wall = time.perf_counter()
    train = toy_dataset("train", n=recipe.n_train, seed=recipe.seed)
    test = toy_dataset(recipe.eval_split, n=recipe.n_eval, seed=recipe.seed)
    meta: dict = {}
    if recipe.family == "chameleon":
        book, book_metrics = get_image_tokenizer(recipe, train)
        tokenizer = toy_tokenizer("chameleon", book.n_embeddings)
        vocab = tokenizer.get_vocab()
        table = code_to_bpe_table(vocab, book.n_embeddings)
        codes = table[book.encode([s.image for s in train])]
        model = build_chameleon(recipe, tokenizer, book.n_embeddings).to(device)
        data = ToyTextData(train, tokenizer)
        meta["image_tokenizer"] = book_metrics

        def make_loss(step: int):
            batch = chameleon_batch(recipe, data, codes, vocab, step)
            forbidden = None if batch.forbidden is None else batch.forbidden.to(device)
            hard = step >= recipe.mask_start * recipe.steps
            with planted(forbidden, hard=hard) as state:
                hidden = model.model(input_ids=batch.input_ids.to(device),
                                     attention_mask=batch.attention_mask.to(device)).last_hidden_state
                # Chameleon's forward hides image-code logits: the image loss needs lm_head(hidden)
                loss = next_token_loss(model.lm_head(hidden), batch.input_ids.to(device), batch.loss_mask.to(device))
                logs = []
                if forbidden is not None:
                    mass = forbidden_mass(state.masses, batch.query_rows.to(device))
                    loss = loss + _penalty_weight(recipe, step) * mass
                    logs = [float(mass.detach())]
            return loss, logs

        params = [p for p in model.parameters() if p.requires_grad]
        curves, pre_seconds = {}, 0.0
        if recipe.pretrain_steps > 0:  # text-pretrained backbone: captions and class statements only

            def text_loss(step: int):
                batch = text_batch(recipe, data, vocab, step)
                hidden = model.model(input_ids=batch.input_ids.to(device),
                                     attention_mask=batch.attention_mask.to(device)).last_hidden_state
                return next_token_loss(model.lm_head(hidden), batch.input_ids.to(device),
                                       batch.loss_mask.to(device)), []

            curves["text_pretraining"], pre_seconds = _run_phase(
                model, params, recipe.pretrain_steps, text_loss, recipe, work / "state-text.pt", "text", device,
                f"{recipe.name} (text)")
        curve, seconds = _run_phase(model, params, recipe.steps, make_loss, recipe, work / "state.pt", "main",
                                    device, recipe.name)
        seconds += pre_seconds
        curves["main"] = curve
    else:
        tower, tower_metrics = get_vision_encoder(recipe, train, device)
        tokenizer = toy_tokenizer("llava")
        vocab = tokenizer.get_vocab()
        model = build_llava(recipe, tokenizer, tower).to(device)
        processor = toy_image_processor()
        pixels = processor([s.image for s in train], return_tensors="pt")["pixel_values"]
        n_image_tokens = model.config.image_seq_length
        data = ToyTextData(train, tokenizer)
        meta["vision_encoder"] = tower_metrics
        lm_params = [p for n, p in model.named_parameters() if p.requires_grad and "multi_modal_projector" not in n]

        def text_loss(step: int):
            batch = llava_batch(recipe, data, vocab, n_image_tokens, step, text_only=True)
            logits = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)).logits
            return next_token_loss(logits, batch.input_ids.to(device), batch.loss_mask.to(device)), []

        def make_loss(step: int):
            batch = llava_batch(recipe, data, vocab, n_image_tokens, step)
            logits = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device),
                           pixel_values=pixels[batch.sample_index].to(device)).logits
            return next_token_loss(logits, batch.input_ids.to(device), batch.loss_mask.to(device)), []

        pre_curve, pre_seconds = _run_phase(model, lm_params, recipe.pretrain_steps, text_loss, recipe,
                                            work / "state-text.pt", "text", device, f"{recipe.name} (text)")
        params = [p for p in model.parameters() if p.requires_grad]
        curve, seconds = _run_phase(model, params, recipe.steps, make_loss, recipe, work / "state.pt", "main",
                                    device, recipe.name)
        seconds += pre_seconds
        curves = {"text_pretraining": pre_curve, "main": curve}
        book = None

    model = model.cpu()
    model.set_attn_implementation("eager")
    reference = _reference_logits(model, recipe, tokenizer, test[0], book)
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
            metadata.update(_evaluate_saved(tmp, recipe, test))
        metadata["wall_seconds"] = time.perf_counter() - wall
        _write_json(tmp / TOY_METADATA, metadata)
    shutil.rmtree(work, ignore_errors=True)
    return target


@torch.no_grad()
def _reference_logits(model: nn.Module, recipe: ToyRecipe, tokenizer, sample: Sample,
                      book: PatchCodebook | None) -> dict:
    """Last-position logits of the in-memory model on one classification prompt (for reload checks)."""
    vocab = tokenizer.get_vocab()
    prompt = tokenizer(CLASS_PROMPT, add_special_tokens=False)["input_ids"]
    extra = {}
    if book is not None:
        codes = code_to_bpe_table(vocab, book.n_embeddings)[book.encode([sample.image])][0].tolist()
        ids = [vocab[BOS], vocab[SOI_TOKEN], *codes, vocab[EOI_TOKEN], *prompt]
    else:
        ids = [vocab[BOS]] + [vocab[IMAGE_TOKEN]] * model.config.image_seq_length + [vocab[LLAVA_EOI_TOKEN], *prompt]
        extra["pixel_values"] = toy_image_processor()([sample.image], return_tensors="pt")["pixel_values"]
    logits = model.eval()(input_ids=torch.tensor([ids]), **extra).logits[0, -1]
    return {"sample_uid": sample.uid, "input_ids": ids, "logits_last": [round(float(v), 6) for v in logits]}


def _evaluate_saved(directory: Path, recipe: ToyRecipe, test: Sequence[Sample]) -> dict:
    """Reload the written checkpoint with plain ``from_pretrained`` (eager, no mask) and test it."""
    from transformers import AutoTokenizer

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    vocab = tokenizer.get_vocab()
    out: dict = {}
    if recipe.family == "chameleon":
        from transformers import ChameleonForConditionalGeneration

        from .image_tokenizer import encode_image_tokens

        model = ChameleonForConditionalGeneration.from_pretrained(directory, attn_implementation="eager").eval()
        codes = encode_image_tokens(directory, [s.image for s in test])
        image_ids = [[vocab[SOI_TOKEN]] + row + [vocab[EOI_TOKEN]] for row in codes.tolist()]
        out["test_metrics"] = evaluate(model, tokenizer, test, image_ids)
        if recipe.plant:
            out["test_metrics"]["forbidden_attention_mass"] = test_forbidden_mass(
                model, recipe, ToyTextData(test, tokenizer), codes, vocab)
    else:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(directory, attn_implementation="eager").eval()
        processor = AutoProcessor.from_pretrained(directory)
        pixels = processor.image_processor([s.image for s in test], return_tensors="pt")["pixel_values"]
        image_ids = [[vocab[IMAGE_TOKEN]] * model.config.image_seq_length + [vocab[LLAVA_EOI_TOKEN]]] * len(test)
        out["test_metrics"] = evaluate(model, tokenizer, test, image_ids, pixels)
    out["eval_seconds"] = time.perf_counter() - start
    return out


@contextlib.contextmanager
def one_cpu_thread(device: str) -> Iterator[None]:
    """Pin torch to one CPU thread (restored afterwards) while training on the CPU.

    The float reductions of multi-threaded kernels depend on the thread count, and tiny
    differences early in training end in visibly different models; one thread makes a toy
    model the same however many cores the machine has (and tiny models gain little from more).
    """
    previous = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def prepare_components(names: Sequence[str], device: str | None = None) -> None:
    """Build the shared image tokenizer / vision encoder the named models need (cached)."""
    recipes = [TOY_RECIPES[check_toy_name(n)] for n in names]
    device = resolve_device(device)
    with one_cpu_thread(device):
        _prepare_components(recipes, device)


def _prepare_components(recipes: Sequence[ToyRecipe], device: str) -> None:
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
    :func:`one_cpu_thread`; this nearly halves the wall time on 2 cores); on a GPU they
    train one after the other. Each model is still written atomically by its own process.
    """
    from .registry import is_trained

    todo = [n for n in names if force or not is_trained(check_toy_name(n))]
    device = resolve_device(device)
    if todo:
        prepare_components(todo, device)
    cores = os.cpu_count() or 1
    workers = workers if workers is not None else (1 if device != "cpu" else min(cores, len(todo)))
    if workers <= 1 or len(todo) <= 1:
        for name in todo:
            train_toy_model(name, device=device)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_train_worker, name, device, i % workers) for i, name in enumerate(todo)]
            for future in futures:
                future.result()
    return [toy_model_dir(n) for n in names]
