"""The other direction (the paper's open question): does text reach a generated image through one token?

The native toy model was trained on text→image sequences ``<s> caption <racm3:break> codes <eoss>``
as well as on image→text ones. Here the caption comes first and the model writes the image:

* **Generation**: a small decode loop (KV cache) predicts the image codes after [SOI] from
  ``lm_head(hidden)`` restricted to the image-code vocabulary (Chameleon's own ``logits`` set
  image codes to the most negative float). Codes → pixels with the toy codebook; a classifier
  (frozen toy CLIP tower + logistic-regression heads) reads colour and shape of the result.
* **Attention shares**: the analogue of eq. 2 with the roles swapped — post-softmax attention
  from the image-code queries to every prompt position ([BOS], caption words, [SOI]), averaged
  over heads and queries and renormalised over the prompt.
* **Neighbourhood overlap** (eq. 3) of the residual stream at every prompt position and at the
  generated image tokens with the caption's class.
* **Knockout** (Sec. 3.2 mechanics): block image-side queries from reading a candidate
  bottleneck (last caption token, [SOI], colour or shape word) or from reading every caption
  token but the candidate, in all layers and every generation step, and classify the images.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..interventions import knockout_attention
from ..layout import Batch, TokenLayout
from ..metrics import neighborhood_overlap
from ..models.base import Adapter
from ..tracing import collect_attention, collect_residual
from .common import batched

#: caption attributes whose words get a role name in the prompt (meta key -> role)
ATTRIBUTE_ROLES = {"color": "colour word", "shape": "shape word", "size": "size word", "background": "background word"}
BOS_ROLE, SOI_ROLE, LAST_TEXT_ROLE = "[BOS]", "[SOI]", "last text"
#: knockout name -> what image-side queries may no longer read
T2I_ABLATIONS = {
    "none": "nothing (baseline)",
    "last_text": "the last caption token (queries: [SOI] and the image codes)",
    "soi": "[SOI] (queries: the image codes)",
    "color_word": "the colour word (queries: [SOI] and the image codes)",
    "shape_word": "the shape word (queries: [SOI] and the image codes)",
    "text_except_last": "every caption token except the last one (queries: [SOI] and the image codes)",
    "text_except_soi": "every caption token; [SOI] still reads them (queries: the image codes)",
    "all_text": "every caption token (queries: [SOI] and the image codes)",
}
#: candidate bottleneck -> (ablation that removes it, ablation that leaves only it open)
CANDIDATES = {"last text": ("last_text", "text_except_last"), "[SOI]": ("soi", "text_except_soi")}


# ----------------------------------------------------------------------------- prompts
@dataclass(frozen=True)
class T2IPrompts:
    """Equal-length text-first prompts ``<s> caption [SOI]`` and the role of every position."""

    input_ids: torch.Tensor  # [n, P]
    roles: tuple[str, ...]   # one name per prompt position, identical in every row

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])

    def position(self, role: str) -> int:
        """The prompt position with role ``role`` (e.g. ``"[SOI]"``, ``"colour word"``)."""
        names = (role, f"{LAST_TEXT_ROLE} ({role})")
        matches = [i for i, r in enumerate(self.roles) if r in names or r.startswith(f"{role} (")]
        if len(matches) != 1:
            raise ValueError(f"Role '{role}' occurs {len(matches)} times in the prompt roles {self.roles}; "
                             "choose a caption template where it occurs exactly once.")
        return matches[0]

    @property
    def caption_positions(self) -> list[int]:
        """Caption tokens: every prompt position except [BOS] and [SOI]."""
        return list(range(1, self.length - 1))

    def subset(self, rows: Sequence[int]) -> T2IPrompts:
        return T2IPrompts(self.input_ids[list(rows)], self.roles)


def _row_roles(tokens: Sequence[str], meta: Mapping[str, str] | None) -> list[str]:
    values = {str(meta[k]): role for k, role in ATTRIBUTE_ROLES.items() if meta and k in meta}
    return [values.get(t, t) for t in tokens]


def caption_prompts(adapter: Adapter, captions: Sequence[str], metas: Sequence[Mapping[str, str]] | None = None,
                    soi_token: str = "<racm3:break>") -> T2IPrompts:
    """Tokenise ``<s> caption [SOI]`` exactly as the toy t2i training sequences start.

    Roles: ``[BOS]``, caption words (attribute words named by ``metas``: ``colour word``,
    ``shape word``, …; other words by themselves, ``word @position`` when a word occurs twice,
    ``text <position>`` when rows differ there), ``last text (<its role>)`` for the token
    right before [SOI], and ``[SOI]``. All prompts must have the same length and roles (use one
    caption template), so positions are comparable across rows.
    """
    if len(captions) == 0:
        raise ValueError("No captions given: pass at least one caption.")
    if metas is not None and len(metas) != len(captions):
        raise ValueError(f"Got {len(captions)} captions but {len(metas)} metas; pass one meta per caption.")
    tokenizer = adapter.tokenizer
    bos, soi = tokenizer.bos_token_id, adapter.token_id(soi_token)
    if bos is None:
        raise ValueError("The tokenizer has no BOS token; text-to-image prompts start with <s> as in training.")
    ids = tokenizer(list(captions), add_special_tokens=False)["input_ids"]
    lengths = sorted({len(row) for row in ids})
    if len(lengths) != 1 or lengths[0] == 0:
        raise ValueError(f"Captions tokenise to lengths {lengths}; text-to-image prompts must all have the same "
                         "non-zero length (use one fixed-length caption template, e.g. template 0).")
    per_row = [_row_roles(tokenizer.convert_ids_to_tokens(row), None if metas is None else metas[i])
               for i, row in enumerate(ids)]
    # a position keeps its role when every row agrees on it, else it gets a positional name
    caption_roles = [column[0] if len(set(column)) == 1 else f"text {j + 1}" for j, column in enumerate(zip(*per_row))]
    counts = {role: caption_roles.count(role) for role in caption_roles}
    caption_roles = [f"{r} @{j + 1}" if counts[r] > 1 else r for j, r in enumerate(caption_roles)]
    caption_roles[-1] = f"{LAST_TEXT_ROLE} ({caption_roles[-1]})"
    roles = [BOS_ROLE, *caption_roles, SOI_ROLE]
    input_ids = torch.tensor([[bos, *row, soi] for row in ids], dtype=torch.long)
    return T2IPrompts(input_ids, tuple(roles))


def image_code_ids(adapter: Adapter, n_embeddings: int) -> torch.Tensor:
    """BPE id of each VQ code 0..K-1 (``IMGIMG…Z`` names of the model's vocabulary)."""
    from ..toy.image_tokenizer import code_to_bpe_table

    return code_to_bpe_table(adapter.tokenizer.get_vocab(), n_embeddings)


# ---------------------------------------------------------------------------- generation
@torch.no_grad()
def generate_image_codes(adapter: Adapter, input_ids: torch.Tensor, code_ids: torch.Tensor, n_codes: int,
                         temperature: float = 0.0, seed: int = 0, use_cache: bool = True) -> torch.Tensor:
    """VQ codes [n, n_codes] written after the prompts (which end with [SOI]).

    Next-token scores are ``lm_head(h)`` restricted to ``code_ids`` (the image-code vocabulary),
    as in the toy training loss. ``temperature=0`` is greedy; otherwise codes are sampled from
    softmax(scores / temperature) with a generator seeded by ``seed``. ``use_cache=False``
    recomputes the whole sequence at every step (the reference the cached loop must equal).
    """
    if n_codes < 1:
        raise ValueError(f"n_codes must be >= 1, got {n_codes}.")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}.")
    model = adapter.model
    device = next(model.parameters()).device
    ids = input_ids.to(device)
    table = code_ids.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    codes = []
    if use_cache:
        out = model.model(input_ids=ids, use_cache=True)
        hidden, past = out.last_hidden_state[:, -1], out.past_key_values
    else:
        hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state[:, -1]
    for step in range(n_codes):
        scores = model.lm_head(hidden).float()[:, table]
        if temperature == 0:
            code = scores.argmax(-1)
        else:
            code = torch.multinomial(torch.softmax(scores / temperature, -1), 1, generator=generator)[:, 0]
        codes.append(code)
        if step == n_codes - 1:
            break
        token = table[code][:, None]
        if use_cache:
            out = model.model(input_ids=token, past_key_values=past, use_cache=True)
            hidden, past = out.last_hidden_state[:, -1], out.past_key_values
        else:
            ids = torch.cat([ids, token], 1)
            hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state[:, -1]
    return torch.stack(codes, 1).cpu()


def completed_batch(adapter: Adapter, prompts: T2IPrompts, code_ids: torch.Tensor, codes: torch.Tensor,
                    eoi_token: str = "<eoss>") -> Batch:
    """The full sequences ``<s> caption [SOI] codes [EOI]`` as a Batch with their token layouts."""
    if codes.shape[0] != len(prompts):
        raise ValueError(f"Got codes for {codes.shape[0]} rows but {len(prompts)} prompts.")
    eoi = torch.full((len(prompts), 1), adapter.token_id(eoi_token), dtype=torch.long)
    ids = torch.cat([prompts.input_ids, code_ids[codes], eoi], 1)
    mask = torch.ones_like(ids)
    layouts = [adapter.locate(ids[row], mask[row]) for row in range(len(prompts))]
    return Batch({"input_ids": ids, "attention_mask": mask}, layouts, order="text_first")


def ablation_positions(prompts: T2IPrompts, layouts: Sequence[TokenLayout],
                       ablation: str) -> tuple[list[list[int]], list[list[int]]] | None:
    """(blocked keys, blocked queries) per row for a :data:`T2I_ABLATIONS` entry; None for "none".

    Queries are the image side: [SOI] (it predicts the first code) and the image codes; a
    query is never blocked from itself, so "soi" and "text_except_soi" block the codes only.
    [BOS] is never blocked (it carries no caption information and is the attention sink).
    """
    if ablation not in T2I_ABLATIONS:
        raise ValueError(f"Unknown text-to-image ablation '{ablation}'; use one of {list(T2I_ABLATIONS)}.")
    if ablation == "none":
        return None
    soi = prompts.length - 1
    caption = prompts.caption_positions
    keys = {"last_text": [caption[-1]], "soi": [soi], "all_text": caption, "text_except_soi": caption,
            "text_except_last": caption[:-1]}
    if ablation in ("color_word", "shape_word"):
        keys[ablation] = [prompts.position({"color_word": "colour word", "shape_word": "shape word"}[ablation])]
    with_soi = ablation not in ("soi", "text_except_soi")
    queries = [([soi] if with_soi else []) + list(layout.image_positions) for layout in layouts]
    return [list(keys[ablation]) for _ in layouts], queries


def generate_under_ablation(adapter: Adapter, prompts: T2IPrompts, code_ids: torch.Tensor, n_codes: int,
                            ablation: str = "none", layers: Sequence[int] | None = None,
                            mode: str = "post_softmax", batch_size: int = 50, temperature: float = 0.0,
                            seed: int = 0, desc: str = "") -> torch.Tensor:
    """Image codes [n, n_codes] generated with ``ablation`` active in ``layers`` at every step."""
    parts = []
    for chunk_index, rows in enumerate(batched(range(len(prompts)), batch_size, desc=desc)):
        part = prompts.subset(rows)
        plan = completed_batch(adapter, part, code_ids, torch.zeros(len(rows), n_codes, dtype=torch.long))
        positions = ablation_positions(part, plan.layouts, ablation)
        context = nullcontext() if positions is None else knockout_attention(
            adapter, plan, positions[0], positions[1], layers, mode, block_generated=False)
        with context:
            parts.append(generate_image_codes(adapter, part.input_ids, code_ids, n_codes, temperature,
                                              seed=seed + chunk_index))
    return torch.cat(parts)


@torch.no_grad()
def code_nll(adapter: Adapter, prompts: T2IPrompts, code_ids: torch.Tensor, codes: torch.Tensor,
             ablation: str = "none", layers: Sequence[int] | None = None, mode: str = "post_softmax",
             batch_size: int = 50) -> np.ndarray:
    """Teacher-forced −log p(code_t | caption, codes_<t) [n, n_codes] over the image-code vocabulary,
    with ``ablation`` active in ``layers``."""
    model = adapter.model
    device = next(model.parameters()).device
    start = prompts.length - 1  # [SOI] predicts the first code
    parts = []
    for rows in batched(range(len(prompts)), batch_size):
        part = prompts.subset(rows)
        batch = completed_batch(adapter, part, code_ids, codes[rows])
        positions = ablation_positions(part, batch.layouts, ablation)
        context = nullcontext() if positions is None else knockout_attention(
            adapter, batch, positions[0], positions[1], layers, mode, block_generated=False)
        with context:
            hidden = model.model(input_ids=batch.input_ids.to(device)).last_hidden_state
        scores = model.lm_head(hidden[:, start:start + codes.shape[1]]).float()[:, :, code_ids.to(device)]
        logp = torch.log_softmax(scores, -1).gather(-1, codes[rows].to(device)[:, :, None])[:, :, 0]
        parts.append(-logp.cpu().numpy())
    return np.concatenate(parts)


def mismatched(prompts: T2IPrompts, seed: int = 0) -> T2IPrompts:
    """The same prompts with captions passed on along a seeded random cycle (row i gets another row's caption)."""
    if len(prompts) < 2:
        raise ValueError("Mismatched captions need at least two prompts.")
    order = np.random.default_rng(seed).permutation(len(prompts))
    source = np.empty(len(prompts), dtype=int)
    source[order] = np.roll(order, 1)
    return prompts.subset(source.tolist())


def caption_information(adapter: Adapter, prompts: T2IPrompts, code_ids: torch.Tensor, codes: torch.Tensor,
                        ablation: str = "none", layers: Sequence[int] | None = None, mode: str = "post_softmax",
                        batch_size: int = 50, seed: int = 0) -> dict[str, float]:
    """How much the caption conditions the image: teacher-forced NLL of the real image codes
    (nats per image, summed over codes) with a mismatched caption minus with the matching one,
    under ``ablation``. Zero when no caption information reaches the image-code predictions."""
    right = code_nll(adapter, prompts, code_ids, codes, ablation, layers, mode, batch_size).sum(1)
    wrong = code_nll(adapter, mismatched(prompts, seed), code_ids, codes, ablation, layers, mode, batch_size).sum(1)
    return {"nll_matched": float(right.mean()), "nll_mismatched": float(wrong.mean()),
            "caption_information": float((wrong - right).mean())}


# ---------------------------------------------------------------------------- classifier
class ImageAttributeClassifier:
    """Colour and shape of toy images: frozen toy CLIP tower (mean patch token) + logistic regression."""

    def __init__(self, tower: torch.nn.Module, heads: dict[str, object], values: dict[str, tuple[str, ...]]) -> None:
        self.tower, self.heads, self.values = tower.eval(), heads, values

    @torch.no_grad()
    def features(self, images: np.ndarray | Sequence, batch_size: int = 256) -> np.ndarray:
        """Mean last-layer patch token [n, d] of RGB images (uint8 arrays, PIL, or floats in [0, 1])."""
        from ..toy.image_processor import toy_image_processor

        processor = toy_image_processor()
        if isinstance(images, np.ndarray) and images.dtype != np.uint8:
            images = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
        images = list(images)
        parts = []
        for start in range(0, len(images), batch_size):
            pixels = processor(images[start:start + batch_size], return_tensors="pt")["pixel_values"]
            parts.append(self.tower(pixel_values=pixels).last_hidden_state[:, 1:].mean(1).numpy())
        return np.concatenate(parts)

    def predict(self, images: np.ndarray | Sequence) -> dict[str, list[str]]:
        x = self.features(images)
        return {name: [self.values[name][int(i)] for i in head.predict(x)] for name, head in self.heads.items()}


def train_attribute_classifier(train_images: Sequence, train_metas: Sequence[Mapping[str, str]],
                               tower: torch.nn.Module | None = None, seed: int = 0) -> ImageAttributeClassifier:
    """Fit colour and shape heads on the frozen toy CLIP tower (the cached one unless ``tower`` is given)."""
    from sklearn.linear_model import LogisticRegression

    from ..data.toy import TOY_COLORS, TOY_SHAPES

    if len(train_images) != len(train_metas):
        raise ValueError(f"Got {len(train_images)} images but {len(train_metas)} metas.")
    if tower is None:
        tower = toy_vision_tower()
    values = {"color": tuple(TOY_COLORS), "shape": tuple(TOY_SHAPES)}
    classifier = ImageAttributeClassifier(tower, {}, values)
    x = classifier.features(train_images)
    for name, names in values.items():
        y = np.array([names.index(m[name]) for m in train_metas])
        classifier.heads[name] = LogisticRegression(max_iter=2000, C=1.0, random_state=seed).fit(x, y)
    return classifier


def toy_vision_tower() -> torch.nn.Module:
    """The shared toy CLIP tower, trained with the non-native toy model (``narrowgate toy train``); never trains."""
    from ..training.components import load_vision_encoder
    from ..training.recipes import TOY_RECIPES

    return load_vision_encoder(TOY_RECIPES["toy-nonnative"])


def attribute_accuracy(predicted: Mapping[str, Sequence[str]], truth: Sequence[Mapping[str, str]]) -> dict[str, float]:
    """Accuracy of predicted colour, shape and both (the class) against the captions' attributes."""
    n = len(truth)
    if any(len(v) != n for v in predicted.values()):
        raise ValueError(f"Predictions and truth differ in length ({ {k: len(v) for k, v in predicted.items()} } vs {n}).")
    if n == 0:
        raise ValueError("No predictions to score.")
    hits = {k: np.array([p == t[k] for p, t in zip(predicted[k], truth)]) for k in ("color", "shape")}
    return {"color_accuracy": float(hits["color"].mean()), "shape_accuracy": float(hits["shape"].mean()),
            "class_accuracy": float((hits["color"] & hits["shape"]).mean())}


# ------------------------------------------------------------------------- measurements
def _row_batches(batch: Batch, batch_size: int) -> list[Batch]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    return [Batch({k: v[i:i + batch_size] for k, v in batch.inputs.items()}, batch.layouts[i:i + batch_size], batch.order)
            for i in range(0, len(batch), batch_size)]


def prompt_attention_shares(adapter: Adapter, batch: Batch, roles: Sequence[str],
                            layers: Sequence[int] | None = None, batch_size: int = 50) -> pd.DataFrame:
    """Eq. 2 with the roles swapped: attention from the image-code queries to each prompt position.

    Post-softmax attention is averaged over heads, image-code queries and rows; ``share`` is
    renormalised over the prompt ([BOS], caption, [SOI]), ``raw`` is the mean mass itself and
    the row ``token="image codes"`` gives the raw mass on image tokens (previous codes and self).
    """
    selected = adapter.check_layers(layers)
    n_prompt = len(roles)
    total = torch.zeros(len(selected), batch.input_ids.shape[1], dtype=torch.float64)
    for part in _row_batches(batch, batch_size):
        attention = collect_attention(adapter, part, selected)  # [L, B, H, T, T]
        queries = torch.tensor([layout.image_positions for layout in part.layouts])
        rows = torch.arange(len(part))[:, None]
        for k, _ in enumerate(selected):
            total[k] += attention[k].mean(1)[rows, queries].double().mean(1).sum(0)  # [T]
    mean = total / len(batch)
    rows_out = []
    for k, layer in enumerate(selected):
        prompt = mean[k, :n_prompt]
        for position, role in enumerate(roles):
            rows_out.append({"layer": layer, "token": role, "position": position,
                             "share": float(prompt[position] / prompt.sum()), "raw": float(prompt[position])})
        rows_out.append({"layer": layer, "token": "image codes", "position": -1, "share": float("nan"),
                         "raw": float(mean[k, n_prompt:].sum())})
    return pd.DataFrame(rows_out)


def prompt_overlap(adapter: Adapter, batch: Batch, roles: Sequence[str], labels: Sequence, k: int,
                   layers: Sequence[int] | None = None, batch_size: int = 50) -> pd.DataFrame:
    """χ^{l,gt} (eq. 3) of the residual stream with the caption's class at the prompt positions and,
    averaged position by position, at the image codes.

    Positions whose prefix is the same token sequence in every row ([BOS], a shared first word)
    have identical residuals in every row, so χ is undefined there and they are left out. The
    row ``token="class one-hot (ceiling)"`` is χ of a perfect class code with the same ``k``.
    """
    selected = adapter.check_layers(layers)
    n_prompt = len(roles)
    ids = batch.input_ids[:, :n_prompt]
    varying = [j for j in range(n_prompt) if not bool((ids[:, :j + 1] == ids[:1, :j + 1]).all())]
    if not varying:
        raise ValueError("Every prompt is the same token sequence: χ needs prompts that differ between rows.")
    residual = torch.cat([
        collect_residual(adapter, part, [varying + list(layout.image_positions) for layout in part.layouts], selected)
        for part in _row_batches(batch, batch_size)], 1).numpy()  # [L, B, n_varying + Q, d]
    _, classes = np.unique(np.asarray(labels), return_inverse=True)
    ceiling = neighborhood_overlap(np.eye(classes.max() + 1)[classes], labels, k=k)
    out = []
    for k_layer, layer in enumerate(selected):
        for j, position in enumerate(varying):
            chi = neighborhood_overlap(residual[k_layer, :, j], labels, k=k)
            out.append({"layer": layer, "token": roles[position], "chi": chi})
        images = [neighborhood_overlap(residual[k_layer, :, j], labels, k=k)
                  for j in range(len(varying), residual.shape[2])]
        out.append({"layer": layer, "token": "image codes (mean)", "chi": float(np.mean(images))})
        out.append({"layer": layer, "token": "class one-hot (ceiling)", "chi": ceiling})
    return pd.DataFrame(out)


def knockout_effects(table: pd.DataFrame, metric: str = "class_accuracy") -> pd.DataFrame:
    """Per candidate bottleneck: the fraction of the full text-removal effect caused by removing it
    alone (``necessity``) and by removing everything else (``leak``), both relative to ``all_text``.

    effect(a) = (base − score(a)) / (base − score(all_text)); a narrow gate has necessity ≈ 1 and
    leak ≈ 0 (cf. Table 1: [EOI] knockout ≫ img→text knockout in Chameleon).
    """
    scores = table.set_index("ablation")[metric]
    missing = {"none", "all_text"} - set(scores.index)
    if missing:
        raise ValueError(f"knockout_effects needs the ablations {sorted(missing)} in the table.")
    full = scores["none"] - scores["all_text"]
    if full <= 0:
        raise ValueError(f"Removing all text does not lower {metric} ({scores['none']:.3f} → {scores['all_text']:.3f}): "
                         "the images do not depend on the caption, so no bottleneck can be measured.")
    rows = []
    for candidate, (remove, keep_only) in CANDIDATES.items():
        if remove in scores.index and keep_only in scores.index:
            rows.append({"candidate": candidate, "necessity": float((scores["none"] - scores[remove]) / full),
                         "leak": float((scores["none"] - scores[keep_only]) / full)})
    return pd.DataFrame(rows)


def bottleneck_verdict(effects: pd.DataFrame, threshold: float = 0.5) -> str:
    """One sentence per candidate, computed from :func:`knockout_effects`."""
    lines = []
    for row in effects.itertuples():
        gate = row.necessity >= threshold and row.leak <= threshold
        lines.append(f"{row.candidate}: removing it costs {row.necessity:.0%} of the full text-removal effect, "
                     f"leaving only it open costs {row.leak:.0%} → "
                     + ("a narrow gate." if gate else
                        "necessary but not the only route." if row.necessity >= threshold else
                        f"a partial route that is not necessary: alone it keeps {1 - row.leak:.0%} of the caption's "
                        "effect, yet the image codes also read the caption directly."
                        if row.leak <= threshold else "not a bottleneck."))
    return "\n".join(lines)


__all__ = [
    "CANDIDATES",
    "T2I_ABLATIONS",
    "ImageAttributeClassifier",
    "T2IPrompts",
    "ablation_positions",
    "attribute_accuracy",
    "bottleneck_verdict",
    "caption_information",
    "caption_prompts",
    "code_nll",
    "completed_batch",
    "generate_image_codes",
    "generate_under_ablation",
    "image_code_ids",
    "knockout_effects",
    "mismatched",
    "prompt_attention_shares",
    "prompt_overlap",
    "toy_vision_tower",
    "train_attribute_classifier",
]
