"""Evaluation of trained toy models: greedy decoding, test metrics, the planted route's leak and
the reference logits that reload checks compare against."""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..data.sample import Sample
from ..data.toy import CLASS_PROMPT
from ..toy.image_processor import toy_image_processor
from ..toy.image_tokenizer import PatchCodebook, code_to_bpe_table, encode_image_tokens
from ..toy.text_tokenizer import BOS, EOI_TOKEN, IMAGE_TOKEN, LLAVA_EOI_TOKEN, SOI_TOKEN
from .planting import PLANT_ATTENTION, forbidden_mass, planted, register_plant_attention
from .recipes import ToyRecipe
from .sequences import ToyTextData, chameleon_batch


@torch.no_grad()
def greedy_decode(model: nn.Module, prompts: list[list[int]], tokenizer: PreTrainedTokenizerBase,
                  pixel_values: torch.Tensor | None = None, max_new_tokens: int = 8,
                  batch_size: int = 128) -> list[str]:
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
    """VQA accuracy of one answer (the metrics package's normalisation when present)."""
    try:
        from ..metrics import vqa_accuracy
    except ImportError:
        matches = sum(a.strip().lower() == prediction.strip().lower() for a in answers)
        return min(1.0, matches / 3)
    return float(vqa_accuracy(prediction, list(answers)))


def _cider(predictions: list[str], references: list[Sequence[str]]) -> float | None:
    """CIDEr of the captions (None without the metrics package)."""
    try:
        from ..metrics import cider
    except ImportError:
        return None
    return float(cider(predictions, [list(r) for r in references]))


def evaluate(model: nn.Module, tokenizer: PreTrainedTokenizerBase, test: Sequence[Sample],
             image_ids: list[list[int]], pixel_values: torch.Tensor | None = None) -> dict:
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
    register_plant_attention()
    model.set_attn_implementation(PLANT_ATTENTION)
    batch = chameleon_batch(replace(recipe, tasks=(("vqa", 1.0),)), data, codes, vocab, step=0)
    with planted(batch.forbidden, hard=False) as state:
        model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        mass = float(forbidden_mass(state.masses, batch.query_rows))
    model.set_attn_implementation("eager")
    return mass


@torch.no_grad()
def reference_logits(model: nn.Module, tokenizer: PreTrainedTokenizerBase, sample: Sample,
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


def evaluate_saved(directory: Path, recipe: ToyRecipe, test: Sequence[Sample]) -> dict:
    """Reload the written checkpoint with plain ``from_pretrained`` (eager, no mask) and test it."""
    from transformers import AutoTokenizer

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    vocab = tokenizer.get_vocab()
    out: dict = {}
    if recipe.family == "chameleon":
        from transformers import ChameleonForConditionalGeneration

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
