"""What makes a narrow gate? A factorial toy experiment on the paper's open question (Sec. 5).

The paper leaves open which ingredient of native multimodal training makes visual information
flow through [EOI]: (a) a multimodal *output* objective (loss on image tokens too), (b)
training from scratch rather than from a text-pretrained LM, or (c) a low-level discrete VQ
image tokenizer. Small toy models separate the three:

* tokenizer — ``vq``: Chameleon architecture, image = 16 k-means patch-codebook tokens;
  ``continuous``: LLaVA architecture, image = projected features of a frozen CLIP-style tower;
* objective — ``all``: next-token loss on every token, image codes included, plus text→image
  ("t2i") sequences; ``text``: loss on text only, image→text sequences only;
* init — ``scratch``: multimodal training from random weights; ``text``: the backbone first
  learns toy text alone (captions, class statements) for ``pretrain_steps`` steps.

The ``continuous × all`` cell is empty: a continuous encoder gives the LM no image tokens to
predict, so in these architectures a multimodal output objective requires discrete image
tokens. Known confound: the ``vq-text`` models put loss on the prompt text as well, the
``continuous`` ones (LLaVA recipe) on the answer only.

Gate score of one model (knockout of all layers, text queries, post-softmax; Sec. 4.3):
``drop_X = acc(none) − acc(X)`` for X ∈ {[EOI], img→text (every image token but [EOI])}, and

    gate_score = max(drop_eoi, 0) / (max(drop_eoi, 0) + max(drop_img, 0)),

1 when only [EOI] matters (a narrow gate), 0 when only the other image tokens matter
(distributed), undefined when neither knockout hurts. ``acc`` is greedy class accuracy
("This shape is a" → "<colour> <shape>"); the same score on χ^{out,gt} is reported too.

The variants' recipes and their training live in :mod:`narrowgate_utils.training`
(:func:`~narrowgate_utils.training.recipes.variant_recipe`,
:func:`~narrowgate_utils.training.orchestration.train_variants`); this module measures the
trained models.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from ..data.sample import Sample
from ..metrics import neighborhood_overlap
from ..models.base import Adapter
from ..parallel import spawn_map
from ..toy.registry import TOY_METADATA
from ..tracing import collect_residual
from ..training.orchestration import trained_variant
from ..training.recipes import GateSize, GateVariant
from .attention import mean_attention_profile
from .common import batched
from .knockout import evaluate_tasks

#: the three knockouts a gate score needs
GATE_ABLATIONS = ("none", "eoi", "img_to_text")
#: the planted known-answer toy models and the gate score they should get
CALIBRATION_MODELS = {"toy-gated": 1.0, "toy-distributed": 0.0}


def gate_score(drop_eoi: float, drop_img: float, tol: float = 1e-9) -> float:
    """max(d_eoi,0) / (max(d_eoi,0) + max(d_img,0)); NaN when neither knockout hurts (see module doc)."""
    d_eoi, d_img = max(float(drop_eoi), 0.0), max(float(drop_img), 0.0)
    if d_eoi + d_img <= tol:
        return float("nan")
    return d_eoi / (d_eoi + d_img)


@torch.no_grad()
def eoi_chi(adapter: Adapter, samples: Sequence[Sample], prompt: str, layer: int, k: int = 30,
            batch_size: int = 32) -> float:
    """χ^{l,gt} (eq. 3) of the [EOI] residual at ``layer`` with the class labels."""
    parts = []
    for chunk in batched(samples, batch_size):
        batch = adapter.build_batch([s.image for s in chunk], [prompt] * len(chunk))
        parts.append(collect_residual(adapter, batch, "eoi", layers=[layer])[0, :, 0])
    return float(neighborhood_overlap(torch.cat(parts).numpy(), [s.label for s in samples], k=k))


def gate_measurements(adapter: Adapter, samples: Sequence[Sample], class_prompt: str, class_names: Sequence[str],
                      k: int = 30, batch_size: int = 32, seed: int = 0) -> dict[str, float]:
    """Everything the gate analysis needs from one model: class accuracy and χ^{out,gt} under each
    of :data:`GATE_ABLATIONS` (all layers), their drops and gate scores, the [EOI] share f_[EOI]
    of text→image attention (eq. 2, mean over layers) and [EOI]'s χ at the last layer."""
    layers = adapter.check_layers(None)
    row: dict[str, float] = {}
    for ablation in GATE_ABLATIONS:
        scores = evaluate_tasks(adapter, samples, ["classification"], ablation, layers, class_prompt, class_names,
                                seed=seed, k=k, batch_size=batch_size, max_new_tokens={"classification": 4})
        row[f"acc_{ablation}"], row[f"chi_out_{ablation}"] = scores["class_accuracy"], scores["chi_out"]
    for metric in ("acc", "chi_out"):
        drop_eoi = row[f"{metric}_none"] - row[f"{metric}_eoi"]
        drop_img = row[f"{metric}_none"] - row[f"{metric}_img_to_text"]
        row[f"{metric}_drop_eoi"], row[f"{metric}_drop_img"] = drop_eoi, drop_img
        row["gate_score" if metric == "acc" else "gate_score_chi"] = gate_score(drop_eoi, drop_img)
    profile, names, _ = mean_attention_profile(adapter, samples, class_prompt, layers, batch_size)
    row["eoi_attention"] = float(profile[:, names.index("[EOI]")].mean())
    row["eoi_chi_last"] = eoi_chi(adapter, samples, class_prompt, layers[-1], k, batch_size)
    return row


def measure_model(model_id: str | Path, samples: Sequence[Sample], class_prompt: str, class_names: Sequence[str],
                  k: int = 30, batch_size: int = 32, seed: int = 0) -> dict[str, float]:
    """Load a checkpoint (toy name or directory) and run :func:`gate_measurements` on it."""
    from ..models import load

    return gate_measurements(load(str(model_id)), samples, class_prompt, class_names, k, batch_size, seed)


def _variant_row(variant: str, seed: int, directory: str, samples: Sequence[Sample], class_prompt: str,
                 class_names: Sequence[str], k: int, batch_size: int) -> dict:
    start = time.perf_counter()
    meta = json.loads((Path(directory) / TOY_METADATA).read_text())
    v = GateVariant.parse(variant)
    row = {"model": f"{variant}-s{seed}", "variant": variant, "tokenizer": v.tokenizer, "objective": v.objective,
           "init": v.init, "seed": seed, "train_seconds": meta["train_seconds"]}
    row.update(measure_model(directory, samples, class_prompt, class_names, k, batch_size, seed))
    row["wall_seconds"] = time.perf_counter() - start
    return row


def gate_factor_table(variants: Sequence[str], seeds: Sequence[int], cache_root: str | Path,
                      samples: Sequence[Sample], class_prompt: str, class_names: Sequence[str],
                      size: GateSize = GateSize(), k: int = 30, batch_size: int = 32, workers: int = 1) -> pd.DataFrame:
    """One row per (variant, seed): :func:`gate_measurements` of the model trained by
    :func:`narrowgate_utils.training.train_variants` (same ``cache_root`` and ``size``); a missing
    or stale model is an error. With ``workers > 1`` the models are measured in parallel CPU
    processes (one thread each)."""
    jobs = []
    for seed in seeds:
        for variant in variants:
            directory = trained_variant(variant, int(seed), cache_root, size)
            if directory is None:
                raise ValueError(f"Factorial model {variant}-s{seed} with this size is not trained in {cache_root}: "
                                 "train it first with narrowgate_utils.training.train_variants(...).")
            jobs.append((variant, int(seed), str(directory), list(samples), class_prompt, list(class_names), k,
                         batch_size))
    return pd.DataFrame(spawn_map(_variant_row, jobs, workers))


def calibration_table(samples: Sequence[Sample], class_prompt: str, class_names: Sequence[str], k: int = 30,
                      batch_size: int = 32, names: Sequence[str] = tuple(CALIBRATION_MODELS)) -> pd.DataFrame:
    """The gate measurements of the planted known-answer toy models (expected score in ``expected``)."""
    rows = [{"model": name, "variant": name, "expected_gate_score": CALIBRATION_MODELS[name],
             **measure_model(name, samples, class_prompt, class_names, k, batch_size)} for name in names]
    return pd.DataFrame(rows)


SUMMARY_METRICS = ("acc_none", "acc_eoi", "acc_img_to_text", "gate_score", "gate_score_chi", "eoi_attention",
                   "eoi_chi_last")


def summarize(table: pd.DataFrame, min_accuracy: float = 0.5) -> pd.DataFrame:
    """Mean, std and count over seeds per variant. Models whose baseline class accuracy is below
    ``min_accuracy`` did not learn the task; their gate scores are left out (``n_learned``)."""
    table = table.copy()
    unlearned = table["acc_none"] < min_accuracy
    table.loc[unlearned, ["gate_score", "gate_score_chi"]] = np.nan
    keys = [c for c in ("variant", "tokenizer", "objective", "init") if c in table.columns]
    grouped = table.groupby(keys, sort=False, dropna=False)
    summary = grouped[list(SUMMARY_METRICS)].agg(["mean", "std"])
    summary.columns = [f"{metric}_{stat}" for metric, stat in summary.columns]
    summary["n_seeds"] = grouped.size()
    summary["n_learned"] = grouped["acc_none"].apply(lambda s: int((s >= min_accuracy).sum()))
    return summary.reset_index()


def factor_effects(table: pd.DataFrame, metric: str = "gate_score") -> pd.DataFrame:
    """Main effect of each factor on ``metric``: mean(level a) − mean(level b) over the models of the
    feasible cells that differ only in that factor (tokenizer: text objective only)."""
    rows = []
    for factor, a, b, within in (("objective", "all", "text", table.tokenizer == "vq"),
                                 ("tokenizer", "vq", "continuous", table.objective == "text"),
                                 ("init", "scratch", "text", pd.Series(True, index=table.index))):
        sub = table[within]
        va, vb = sub.loc[sub[factor] == a, metric].dropna(), sub.loc[sub[factor] == b, metric].dropna()
        rows.append({"factor": factor, "level_a": a, "level_b": b, "mean_a": va.mean(), "mean_b": vb.mean(),
                     "effect": va.mean() - vb.mean(), "n_a": len(va), "n_b": len(vb)})
    return pd.DataFrame(rows)


def plot_gate_factors(table: pd.DataFrame, calibration: pd.DataFrame | None = None,
                      metrics: Sequence[tuple[str, str]] = (("gate_score", "gate score (class accuracy)"),
                                                            ("gate_score_chi", "gate score (χ_out)"),
                                                            ("eoi_attention", "[EOI] share of text→image attention"),
                                                            ("eoi_chi_last", "[EOI] χ at the last layer"))) -> plt.Figure:
    """Mean ± std over seeds per variant (bars), single seeds (dots), calibration models (stars)."""
    variants = list(dict.fromkeys(table["variant"]))
    extra = [] if calibration is None else list(calibration["variant"])
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 4.2), squeeze=False)
    colors = {"vq": "tab:blue", "continuous": "tab:orange"}
    for ax, (metric, title) in zip(axes[0], metrics):
        for i, variant in enumerate(variants):
            values = table.loc[table.variant == variant, metric].astype(float)
            tokenizer = variant.split("-")[0]
            ax.bar(i, values.mean(), yerr=values.std() if values.count() > 1 else 0, color=colors[tokenizer],
                   alpha=0.55, capsize=4, hatch="//" if variant.endswith("-text") else None)
            ax.scatter(np.full(len(values), i), values, color="k", s=12, zorder=3)
        for j, name in enumerate(extra):
            value = float(calibration.loc[calibration.variant == name, metric].iloc[0])
            ax.scatter(len(variants) + j, value, marker="*", s=160, color="tab:green", zorder=3)
        ax.set_xticks(range(len(variants) + len(extra)), variants + extra, rotation=60, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        if metric.startswith("gate_score"):
            ax.set_ylim(-0.05, 1.05)
            ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    fig.suptitle("What makes a narrow gate: blue = VQ tokens, orange = continuous encoder; "
                 "hatched = text-pretrained init; green stars = planted calibration models", fontsize=10)
    fig.tight_layout()
    return fig
