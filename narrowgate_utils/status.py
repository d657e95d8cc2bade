"""The reproduction-status table: every figure/table of the paper, the paper's values, the value
measured in the toy world (read from the notebooks' saved results), and the command that
re-runs it on a real checkpoint.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

NOT_RUN = "not run yet (execute the chapter)"


@dataclass(frozen=True)
class StatusRow:
    key: str
    item: str
    paper: str
    command: str


ROWS: tuple[StatusRow, ...] = (
    StatusRow(
        'fig2_left',
        '**Fig. 2 (left)**: Median cosine between text and image residual streams of different samples, per layer',
        'Chameleon-7B and -34B stay below 0.1 at every layer; Pixtral-12B rises from about 0.2 to about 0.4 (paper, Sec. 4.1)',
        '`papermill notebooks/01_modality_gap.ipynb out.ipynb -p model_id facebook/chameleon-7b -p preset paper -p data_dir /data/flickr30k -p device cuda`',
    ),
    StatusRow(
        'fig2_right',
        '**Fig. 2 (right)**: ADP cluster homogeneity w.r.t. modality, per layer',
        'Chameleon: 1 at every layer; Pixtral: from about 1 down to about 0.5 in the second half of the network (paper, Sec. 4.1)',
        'same notebook as Fig. 2 (left)',
    ),
    StatusRow(
        'fig3',
        '**Fig. 3**: Cross-modal attention $f_j^l$ per image position',
        'Chameleon-7B: [EOI] takes over 40 % in layers 2–6, 8–12 % in the middle, over 37 % in the last two layers; the token at absolute position 32 peaks above 60 % in layers 8–11. Pixtral-12B: the token at absolute position 1025 takes 17–46 % from layer 4 on, end-of-line tokens about 20 % in layers 20–35 (paper, Sec. 4.2)',
        '`papermill notebooks/02_cross_modal_attention.ipynb out.ipynb -p model_id facebook/chameleon-7b -p preset paper -p data_dir /data/imagenet -p device cuda`',
    ),
    StatusRow(
        'fig4',
        '**Fig. 4**: Neighbourhood overlap $\\chi^{l,gt}$ of selected positions with the class label',
        'Chameleon-7B: [EOI] near 0 in the first five layers, above 0.4 from layer 9 on; 32nd and last image tokens near 0 throughout; internal image tokens peak near 0.2 at layer 8 and fall below 0.1 after layer 15. Pixtral-12B: internal image tokens rise from 0.24 to 0.44 (paper, Sec. 4.2)',
        '`papermill notebooks/03_neighborhood_overlap.ipynb out.ipynb -p model_id facebook/chameleon-7b -p preset paper -p data_dir /data/imagenet -p device cuda`',
    ),
    StatusRow(
        'figA1',
        '**Fig. A1**: Figs. 3 and 4 for Chameleon-34B',
        '[EOI], first and last image tokens dominate the attention; only [EOI] has $\\chi^{l,gt} > 0.4$ (after layer 16), all other positions stay below 0.25 (paper, Supp. Sec. 9 and Sec. 4.2)',
        'the two commands above with `-p model_id facebook/chameleon-30b -p device auto` (two 40 GB GPUs)',
    ),
    StatusRow(
        'fig5',
        '**Fig. 5**: $\\chi^{out,gt}$ under progressive knockout of the last $w$ layers',
        'Chameleon-7B / -34B: baseline 0.46 / 0.43, falling to about 0 as the [EOI] knockout window grows; image→text knockout leaves it at baseline. Pixtral-12B: the reverse, about 0.6 under [EOI] knockout, down to 0 under image→text knockout (paper, Sec. 4.3)',
        '`papermill notebooks/04_knockout.ipynb out.ipynb -p model_id facebook/chameleon-7b -p preset paper -p dataset imagenet -p data_dir /data/imagenet -p device cuda`',
    ),
    StatusRow(
        'table1',
        '**Table 1**: VQAv2 accuracy, Flickr30k and COCO CIDEr, ImageNet $\\chi^{out,gt}$ under knockout in all layers',
        'Chameleon-7B: VQAv2 0.51 → 0.25 with [EOI] blocked (0.40 image→text, 0.51 random); Flickr 0.23 → 0.04; COCO 0.35 → 0.03; $\\chi^{out,gt}$ 0.46 → 0.01. Chameleon-34B: VQAv2 0.59 → 0.39. Pixtral-12B: VQAv2 0.79 → 0.77 with [EOI] blocked but 0.37 with image→text blocked; Flickr 0.51 → 0.00 and COCO 0.60 → 0.01 under image→text (paper, Sec. 4.3)',
        '`papermill notebooks/04_knockout.ipynb out.ipynb -p model_id facebook/chameleon-7b -p preset paper -p data_dir /data/vqav2 -p device cuda` (then `-p dataset flickr30k -p split all` and `-p dataset coco_karpathy`)',
    ),
    StatusRow(
        'tableA2',
        '**Table A2**: Table 1 for other special positions',
        'Chameleon-7B, last image token blocked: VQAv2 0.42, Flickr 0.17, COCO 0.25, $\\chi^{out,gt}$ 0.46; 32nd token: no change. Chameleon-34B, last and first image tokens: at most 0.02 below baseline on VQAv2. Pixtral-12B: blocking the last image token, the 1025th token or the end-of-line tokens gives 0.76–0.77 on VQAv2 against a baseline of 0.79 (paper, Supp. Sec. 10)',
        'same as Table 1',
    ),
    StatusRow(
        'fig6',
        '**Fig. 6**: Similarity $\\sum_v \\min(q_v, p_v)$ after patching [EOI]: residual stream at one layer (left), attention input from a layer on (right)',
        'Residual patching in Chameleon-7B becomes effective after relative depth 0.3, peaks at 0.86 at layer 15 and returns to baseline at the last layer. Cumulative attention-input patching starts near 0.95 (7B) and 0.87 (34B), stays above 0.75 up to relative depth 0.6 and reaches baseline after about 0.8 (paper, Sec. 4.4)',
        '`papermill notebooks/05_steering.ipynb out.ipynb -p model_id facebook/chameleon-7b -p preset paper -p data_dir /data/imagenet -p device cuda`',
    ),
    StatusRow(
        'figA2',
        '**Fig. A2**: Switch rate (patched prediction = target class) per layer',
        "Residual patching of [EOI] alone changes Chameleon-7B's prediction from the base to the target class in 75 % of cases at its best layer (paper, Sec. 4.4 and Supp. Sec. 11)",
        'same notebook as Fig. 6',
    ),
    StatusRow(
        'finetune',
        '**Masked fine-tuning table**: Knockout results after LoRA fine-tuning with [EOI] masked from the text',
        'Not in the version of the paper used here (arXiv v1); a later version reports that after fine-tuning Chameleon-7B and Emu3 with [EOI] hidden, ablating [EOI] no longer collapses performance. Setup there: one epoch of LoRA (rank 128, alpha 256) on 15k samples, half LLaVA-Instruct-150K and half VQAv2 train',
        '`papermill notebooks/06_masked_finetuning.ipynb out.ipynb -p model_id facebook/chameleon-7b -p preset paper -p train_data_dir /data/llava_instruct+/data/vqav2 -p data_dir /data/vqav2 -p device cuda`',
    ),
    StatusRow(
        "open_q2",
        "**Beyond the paper — open question 2**: which training factor makes a narrow gate (chapter 07)",
        "Open in the paper: multimodal output objective, training from scratch and a low-level VQ tokenizer are confounded in every native model studied (paper, Sec. 5)",
        "toy world only (`notebooks/07_what_makes_a_gate.ipynb`)",
    ),
    StatusRow(
        "open_q1",
        "**Beyond the paper — open question 1**: a text→image bottleneck token (chapter 08)",
        "Not evaluated in the paper (paper, Limitations)",
        "toy world only (`notebooks/08_text_to_image.ipynb`)",
    ),
)


def _read(results: Path, notebook: str, name: str) -> pd.DataFrame | None:
    path = results / notebook / name
    return pd.read_csv(path) if path.exists() else None


def _per_model(frame: pd.DataFrame, column: str, fmt: str = "{:.2f}") -> str:
    return "; ".join(f"{model}: {fmt.format(value)}" for model, value in frame.set_index("model")[column].items())


def _gap(results: Path) -> str | None:
    summary = _read(results, "01_modality_gap", "summary.csv")
    return None if summary is None else "max median cosine — " + _per_model(summary, "max_median_cos")


def _homogeneity(results: Path) -> str | None:
    summary = _read(results, "01_modality_gap", "summary.csv")
    return None if summary is None else "lowest homogeneity — " + _per_model(summary, "min_homogeneity")


def _attention(results: Path) -> str | None:
    summary = _read(results, "02_cross_modal_attention", "summary.csv")
    return None if summary is None else "[EOI] share, mean over layers — " + _per_model(summary, "mean [EOI] share", "{:.0%}")


def _overlap(results: Path) -> str | None:
    summary = _read(results, "03_neighborhood_overlap", "summary.csv")
    if summary is None:
        return None
    return ("max χ of [EOI] — " + _per_model(summary, "max χ · [EOI]") + " · max χ of internal image tokens — "
            + _per_model(summary, "max χ · internal image (mean)"))


def _progressive(results: Path) -> str | None:
    frame = _read(results, "04_knockout", "progressive_knockout.csv")
    if frame is None:
        return None
    full = frame[frame["window"] == frame.groupby("model")["window"].transform("max")]
    base = frame[frame["window"] == 0].groupby("model")["chi"].first()
    parts = [f"{model}: baseline {base[model]:.2f} → [EOI] {row.get('eoi', float('nan')):.2f} / img→text "
             f"{row.get('img_to_text', float('nan')):.2f}"
             for model, row in full.pivot_table(index="model", columns="ablation", values="chi").iterrows()]
    return "χ^out with all layers knocked out — " + "; ".join(parts)


def _knockout(results: Path, ablations: tuple[str, ...]) -> str | None:
    table = _read(results, "04_knockout", "knockout_table.csv")
    if table is None:
        return None
    metric = "vqa_accuracy" if "vqa_accuracy" in table else table.columns[1]
    table = table[table["ablation"].isin(ablations)].pivot_table(index="model", columns="ablation", values=metric)
    parts = [f"{model}: " + ", ".join(f"{a} {row[a]:.2f}" for a in ablations if a in row) for model, row in table.iterrows()]
    return f"{metric} — " + "; ".join(parts)


def _steering(results: Path, column: str, label: str) -> str | None:
    summary = _read(results, "05_steering", "summary.csv")
    if summary is None:
        return None
    part = summary[summary["position"] == "eoi"]
    return f"{label} at [EOI] — " + "; ".join(f"{r.model} ({r.site}): {getattr(r, column):.2f}" for r in part.itertuples())


def _finetune(results: Path) -> str | None:
    table = _read(results, "06_masked_finetuning", "before_after.csv")
    if table is None:
        return None
    metric = "class_accuracy" if "class_accuracy" in table else "vqa_accuracy"
    if "mode" in table:
        table = table[table["mode"] == "post_softmax"]  # the evaluation knockout of Table 1
    wide = table.pivot_table(index=["model", "variant"], columns="ablation", values=metric)
    return f"{metric} with [EOI] knocked out — " + "; ".join(
        f"{model} {variant}: {row['eoi']:.2f} (baseline {row['none']:.2f})" for (model, variant), row in wide.iterrows())


def _gate_factors(results: Path) -> str | None:
    summary = _read(results, "07_what_makes_a_gate", "gate_factors_summary.csv")
    if summary is None:
        return None
    return "gate score (mean over seeds) — " + "; ".join(
        f"{r.variant}: {r.gate_score_mean:.2f}" for r in summary.itertuples())


def _text_to_image(results: Path) -> str | None:
    effects = _read(results, "08_text_to_image", "bottleneck_effects.csv")
    if effects is None:
        return None
    part = effects[effects["mode"] == "pre_softmax"]
    return "share of the caption's effect lost by blocking the candidate — " + "; ".join(
        f"{r.candidate}: {r.necessity:.0%}" for r in part.itertuples())


TOY_VALUES: dict[str, Callable[[Path], str | None]] = {
    "fig2_left": _gap,
    "fig2_right": _homogeneity,
    "fig3": _attention,
    "fig4": _overlap,
    "figA1": lambda results: "no 34B analogue in the toy world",
    "fig5": _progressive,
    "table1": lambda results: _knockout(results, ("none", "eoi", "img_to_text", "random")),
    "tableA2": lambda results: _knockout(results, ("none", "last_image")),
    "fig6": lambda results: _steering(results, "peak_similarity", "peak similarity"),
    "figA2": lambda results: _steering(results, "peak_switch_rate", "peak switch rate"),
    "finetune": _finetune,
    "open_q2": _gate_factors,
    "open_q1": _text_to_image,
}


def status_table(results_dir: str | Path = "results") -> pd.DataFrame:
    """One row per paper item: item, paper value, toy-world value (from the saved results), command."""
    results = Path(results_dir)
    return pd.DataFrame([{"Paper item": row.item, "Paper's values": row.paper,
                          "Toy world (this book)": TOY_VALUES[row.key](results) or NOT_RUN,
                          "Re-run on a real checkpoint": row.command} for row in ROWS])


def status_markdown(results_dir: str | Path = "results") -> str:
    """The status table as a Markdown pipe table (rendered by the book)."""
    table = status_table(results_dir)
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(v).replace("\n", " ") for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)
