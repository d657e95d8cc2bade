"""Toy training sequences: token ids, loss masks and planted-route masks of every training step.

A step's batch depends only on (recipe seed, step), so a resumed run draws the same batches as
an uninterrupted one.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..data.sample import Sample
from ..data.toy import CAPTION_PROMPT, CLASS_PROMPT, TOY_COLORS, TOY_SHAPES, VQA_PROMPT, yes_no_question
from ..toy.text_tokenizer import BOS, EOS, EOI_TOKEN, IMAGE_TOKEN, LLAVA_EOI_TOKEN, PAD, SOI_TOKEN
from .planting import plant_masks
from .recipes import ToyRecipe

TOY_COLOR_NAMES = tuple(TOY_COLORS)


class ToyTextData:
    """Pre-tokenised targets and prompts of a sample list (word-level ids, no specials)."""

    def __init__(self, samples: Sequence[Sample], tokenizer: PreTrainedTokenizerBase) -> None:
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
    """One training batch of padded token ids with its masks."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor  # [B, T]: predict token t (from t-1)
    forbidden: torch.Tensor | None  # [B, 1, T, T]
    query_rows: torch.Tensor | None  # [B, T]: rows with forbidden keys
    sample_index: torch.Tensor


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def draw_tasks(recipe: ToyRecipe, step: int, n: int,
               text_only: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sample indices, task names, picks) of training step ``step``, seeded by (seed, step, text_only)."""
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
    idx, tasks, picks = draw_tasks(recipe, step, len(data.samples))
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
    if recipe.plant is not None:  # the text after an image-first sequence's [EOI] follows the planted route
        n_codes = codes.shape[1]
        texts = {r: (soi_pos, soi_pos + n_codes + 1, len(rows[r])) for r, (soi_pos, kind) in enumerate(spans)
                 if kind == "text"}
        forbidden, query_rows = plant_masks(recipe.plant, input_ids.shape, texts)
    return TokenBatch(input_ids, attention_mask, loss_mask, forbidden, query_rows, torch.as_tensor(idx))


def llava_batch(recipe: ToyRecipe, data: ToyTextData, vocab: dict[str, int], n_image_tokens: int, step: int,
                text_only: bool = False) -> TokenBatch:
    """Non-native batch: image-first sequences with loss on the answer (+EOS) only, or text-only
    LM sequences (captions and class statements, loss on every token)."""
    idx, tasks, picks = draw_tasks(recipe, step, len(data.samples), text_only)
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
    idx, _, picks = draw_tasks(recipe, step, len(data.samples), text_only=True)
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

