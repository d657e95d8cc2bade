"""Sec. 4.3 / Fig. 5, Table 1, Table A2: attention knockout and its effect on downstream tasks.

An *ablation* names the key positions that text queries may no longer read (every head, the
chosen layers, post-softmax zeroing by default). Generated tokens are text, so during
generation every new token is blocked as well. Tasks: VQA accuracy (official normalisation,
min(1, n/3)), captioning CIDEr-D, and on the class prompt both the greedy classification
accuracy and χ^{out,gt}, the neighbourhood overlap of the last token's last-layer
representation with the class labels.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.sample import Sample
from ..interventions import check_mode, knockout_attention
from ..layout import Batch, PositionOutOfRange, TokenLayout
from ..metrics import cider, classification_accuracy, neighborhood_overlap, vqa_accuracy_batch
from ..models.base import Adapter
from ..tracing import collect_residual
from .common import Cache, per_batch

#: ablation name -> what it blocks (key positions) for text queries
ABLATIONS = {
    "none": "nothing (baseline)",
    "eoi": "the [EOI] token",
    "img_to_text": "A_img→text (Sec. 3.1, 0 < j < N_EOI): [SOI] and every image-span token before [EOI]",
    "img_to_text_open_soi": "as img_to_text but [SOI] stays readable (the authors' categorize_tokens variant)",
    "last_image": "the last image token",
    "random": "n_random random image tokens (paper: 10), repeated with different draws",
}


def _image_keys(layout: TokenLayout, include_soi: bool = True) -> list[int]:
    """[SOI] (where the family has one and ``include_soi``) and every image-span position before [EOI]."""
    soi = [layout.soi] if include_soi and layout.soi is not None else []
    return soi + [p for p in layout.image_span if p != layout.eoi]


def ablation_sources(batch: Batch, ablation: str, rng: np.random.Generator, n_random: int = 10) -> list[list[int]] | None:
    """Key positions blocked for text queries, per row; ``None`` for the baseline.

    ``img_to_text`` is the paper's A_img→text (Sec. 3.1: keys 0 < j < N_EOI): [SOI], the image
    codes and in-image separators/metadata, not [EOI]. Text before the image (BOS, Pixtral's
    ``[INST]``) stays readable, as in the authors' code, whose image keys are the tokens of the
    image sequence only. ``img_to_text_open_soi`` also leaves [SOI] readable (identical for
    families without one). Besides :data:`ABLATIONS`, any named position of
    :class:`~narrowgate_utils.layout.TokenLayout` is accepted (e.g. ``"abs:32"``,
    ``"image_index:31"``, ``"row_separators"``); an ``abs:N`` position must fall on one of the
    img_to_text keys. A numbered position that a row's (shorter) image lacks raises
    :class:`~narrowgate_utils.layout.PositionOutOfRange`.
    """
    if ablation == "none":
        return None
    if ablation in ("img_to_text", "img_to_text_open_soi"):
        return [_image_keys(layout, include_soi=ablation == "img_to_text") for layout in batch.layouts]
    if ablation == "random":
        return [layout.resolve(f"random_image:{n_random}", rng) for layout in batch.layouts]
    sources = [layout.resolve(ablation) for layout in batch.layouts]
    if ablation.startswith("abs:"):
        for row, (layout, positions) in enumerate(zip(batch.layouts, sources)):
            if positions[0] not in _image_keys(layout):
                raise PositionOutOfRange(f"Position '{ablation}' falls outside the image of row {row} (its [SOI]/image "
                                         f"tokens end before [EOI] at absolute position {layout.eoi - layout.pad_offset}).")
    return sources


def _knockout(adapter: Adapter, batch: Batch, ablation: str, layers: Sequence[int], rng: np.random.Generator,
              mode: str, n_random: int = 10):
    sources = ablation_sources(batch, ablation, rng, n_random)
    if sources is None:
        return nullcontext()
    return knockout_attention(adapter, batch, sources, "text", layers, mode)


def generate_under_knockout(adapter: Adapter, samples: Sequence[Sample], prompts: Sequence[str], ablation: str,
                            layers: Sequence[int], seed: int, max_new_tokens: int, batch_size: int,
                            mode: str = "post_softmax", desc: str = "", n_random: int = 10,
                            cache: Cache = False) -> list[str]:
    """Greedy completions of image-first prompts (one per sample) with the ablation active at every
    generation step. Batch ``i`` draws its random positions with ``default_rng([seed, i])``."""
    if len(prompts) != len(samples):
        raise ValueError(f"{len(prompts)} prompts for {len(samples)} samples; give one prompt per sample.")

    def run(i: int, chunk: list[Sample]) -> dict[str, np.ndarray]:
        start = i * batch_size
        batch = adapter.build_batch([s.image for s in chunk], list(prompts[start:start + len(chunk)]))
        with _knockout(adapter, batch, ablation, layers, np.random.default_rng([seed, i]), mode, n_random):
            return {"text": np.array(adapter.generate(batch, max_new_tokens=max_new_tokens), dtype=np.str_)}

    params = {"prompts": list(prompts), "ablation": ablation, "layers": list(layers), "seed": seed, "mode": mode,
              "n_random": n_random, "max_new_tokens": max_new_tokens}
    return per_batch(adapter, samples, "knockout_generation", params, run, batch_size, cache, desc)["text"].tolist()


def last_token_vectors(adapter: Adapter, samples: Sequence[Sample], prompt: str, ablation: str, layers: Sequence[int],
                       seed: int, batch_size: int, mode: str = "post_softmax", n_random: int = 10,
                       cache: Cache = False) -> np.ndarray:
    """Last-layer residual at the last token of the class prompt under the ablation, [n, d]."""
    last = adapter.num_layers - 1

    def run(i: int, chunk: list[Sample]) -> dict[str, np.ndarray]:
        batch = adapter.build_batch([s.image for s in chunk], [prompt] * len(chunk))
        with _knockout(adapter, batch, ablation, layers, np.random.default_rng([seed, i]), mode, n_random):
            return {"vectors": collect_residual(adapter, batch, "text_last", layers=[last])[0, :, 0].numpy()}

    params = {"prompt": prompt, "ablation": ablation, "layers": list(layers), "seed": seed, "mode": mode,
              "n_random": n_random}
    return per_batch(adapter, samples, "knockout_last_token", params, run, batch_size, cache, "")["vectors"]


def evaluate_tasks(adapter: Adapter, samples: Sequence[Sample], tasks: Sequence[str], ablation: str,
                   layers: Sequence[int], class_prompt: str, class_names: Sequence[str], seed: int = 0,
                   k: int = 30, batch_size: int = 16, max_new_tokens: dict[str, int] | None = None,
                   mode: str = "post_softmax", n_random: int = 10, cache: Cache = False,
                   cider_tokenize: str = "simple") -> dict[str, float]:
    """Scores of one ablation on every task (``n_random``: image tokens blocked by "random"). Image i is asked its question number i mod (its
    number of questions), so all question types are covered with one question per image. With
    ``cache`` the generations and vectors of every batch are stored as they finish (resumable)."""
    budget = {"vqa": 20, "caption": 60, "classification": 10, **(max_new_tokens or {})}
    desc = f"{adapter.model_id} · {ablation}"
    common = {"seed": seed, "batch_size": batch_size, "mode": mode, "n_random": n_random, "cache": cache}
    scores: dict[str, float] = {}
    if "vqa" in tasks:
        items = [s.vqa[i % len(s.vqa)] for i, s in enumerate(samples)]
        prompts = [adapter.prompt_for("vqa", question=i.question) for i in items]
        answers = generate_under_knockout(adapter, samples, prompts, ablation, layers, max_new_tokens=budget["vqa"],
                                          desc=desc + " · vqa", **common)
        answers = [adapter.clean_answer(answer) for answer in answers]
        scores["vqa_accuracy"] = float(vqa_accuracy_batch(answers, [i.answers for i in items]).mean())
    if "caption" in tasks:
        captions = generate_under_knockout(adapter, samples, [adapter.prompt_for("caption")] * len(samples), ablation,
                                           layers, max_new_tokens=budget["caption"], desc=desc + " · caption", **common)
        captions = [adapter.clean_answer(caption) for caption in captions]
        scores["cider"] = cider(captions, [list(s.captions) for s in samples], tokenize=cider_tokenize)
    if "classification" in tasks:
        completions = generate_under_knockout(adapter, samples, [class_prompt] * len(samples), ablation, layers,
                                              max_new_tokens=budget["classification"], desc=desc + " · class", **common)
        scores["class_accuracy"] = classification_accuracy(completions, [s.class_name for s in samples], class_names)
        vectors = last_token_vectors(adapter, samples, class_prompt, ablation, layers, **common)
        scores["chi_out"] = neighborhood_overlap(vectors, [s.label for s in samples], k=k)
    return scores


def knockout_table(adapter: Adapter, samples: Sequence[Sample], tasks: Sequence[str], ablations: Sequence[str],
                   class_prompt: str, class_names: Sequence[str], layers: Sequence[int] | None = None,
                   random_repeats: int = 10, seed: int = 0, mode: str = "post_softmax", **kwargs) -> pd.DataFrame:
    """Table 1 for one model: one row per ablation (random: mean and std over repeats), with the
    knockout ``mode`` as a column.

    An ablation at a numbered position (``image_index:N``, ``abs:N``) is decided per ablation,
    not per row: as soon as one sample's image lacks the position (a shorter image, e.g. a
    variable-resolution family), the whole ablation is skipped with a warning and left out of
    the table, so every reported row blocks the same position in every sample.
    """
    check_mode(mode)
    layers = adapter.check_layers(layers)
    rows = []
    for ablation in ablations:
        repeats = random_repeats if ablation == "random" else 1
        try:
            runs = pd.DataFrame([evaluate_tasks(adapter, samples, tasks, ablation, layers, class_prompt, class_names,
                                                seed=seed + r, mode=mode, **kwargs) for r in range(repeats)])
        except PositionOutOfRange as error:
            warnings.warn(f"Ablation '{ablation}' skipped for {adapter.model_id or adapter.family}: {error}",
                          stacklevel=2)
            continue
        row = {"ablation": ablation, "mode": mode, **runs.mean().to_dict()}
        if repeats > 1:
            row.update({f"{metric}_std": value for metric, value in runs.std(ddof=0).to_dict().items()})
        rows.append(row)
    return pd.DataFrame(rows)


def progressive_knockout(adapter: Adapter, samples: Sequence[Sample], class_prompt: str, step: int,
                         ablations: Sequence[str] = ("eoi", "img_to_text"), k: int = 30, batch_size: int = 16,
                         seed: int = 0, mode: str = "post_softmax", cache: Cache = False) -> pd.DataFrame:
    """Fig. 5: χ^{out,gt} when the last ``w`` layers are knocked out, w = 0, step, 2·step, …, L."""
    n_layers = adapter.num_layers
    windows = sorted({*range(0, n_layers, step), n_layers})
    labels = [s.label for s in samples]
    baseline = neighborhood_overlap(last_token_vectors(adapter, samples, class_prompt, "none", [], seed, batch_size,
                                                       cache=cache), labels, k=k)
    rows = []
    for ablation in ablations:
        for window in windows:
            if window == 0:
                chi = baseline
            else:
                layers = list(range(n_layers - window, n_layers))
                vectors = last_token_vectors(adapter, samples, class_prompt, ablation, layers, seed, batch_size, mode,
                                             cache=cache)
                chi = neighborhood_overlap(vectors, labels, k=k)
            rows.append({"ablation": ablation, "window": window, "chi": chi})
    return pd.DataFrame(rows)


def high_attention_ablations(shares_csv: str | Path, model: str, threshold: float = 0.1) -> list[str]:
    """Named positions of the image tokens that the attention chapter (notebook 02, Fig. 3) found
    strongly attended by text for ``model`` (mean share over layers above ``threshold``), e.g.
    ``image_index:31`` (notebook 02 names image tokens by content index, so this is Chameleon's
    ``abs:32``).

    [EOI] and the last image token are left out: they have ablations of their own. Without the
    shares file (notebook 02 not run) there are no extra ablations: a warning says so.
    """
    path = Path(shares_csv)
    if not path.exists():
        warnings.warn(f"{path} does not exist: notebooks/02_cross_modal_attention.ipynb was not run, so no "
                      "strongly attended image tokens are ablated.", stacklevel=2)
        return []
    shares = pd.read_csv(path)
    mean = shares[shares["model"] == model].groupby("token")["share"].mean()
    return [f"image_index:{token.split()[1]}" for token, share in mean.items()
            if share > threshold and token.startswith("image ") and token.split()[1].isdigit()]
