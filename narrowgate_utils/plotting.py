"""One plotting function per paper figure style; all take tidy DataFrames.

Each function returns the matplotlib Figure; :func:`save_figure` writes PNG (small, for the
book) and SVG (for papers) into an output directory and, given a caption, shows the figure
with it (:func:`figure_html`).
"""
from __future__ import annotations

import base64
import html
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import MaxNLocator

from .atomic import atomic_path

PALETTE = ("#1f77b4", "#d62728", "#e6a000", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _colors(n: int) -> list:
    """``n`` distinct colours: the paper-style palette, or tab20 when more series are needed."""
    return list(PALETTE[:n]) if n <= len(PALETTE) else [plt.cm.tab20(i % 20) for i in range(n)]


def _require(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} needs columns {columns}; missing {missing}.")


def _panels(n: int, width: float = 4.6, height: float = 3.2) -> tuple[plt.Figure, list[plt.Axes]]:
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, list(axes[0])


def figure_html(png: bytes, caption: str, name: str) -> str:
    """A ``<figure>`` holding the PNG (inline, as a data URI) and ``caption`` (plain text) as its
    ``<figcaption>``; its id ``figure-<name>`` is a link target in the book."""
    text = html.escape(caption)
    source = base64.b64encode(png).decode("ascii")
    return (f'<figure class="narrowgate-figure" id="figure-{html.escape(name)}">'
            f'<img src="data:image/png;base64,{source}" alt="{text}" style="max-width: 100%; height: auto;">'
            f"<figcaption>{text}</figcaption></figure>")


def save_figure(fig: plt.Figure, output_dir: str | Path, name: str, dpi: int = 90,
                caption: str | None = None) -> Path:
    """Write ``name.png`` and ``name.svg`` atomically; returns the PNG path.

    With ``caption`` (what is plotted, and which paper figure it mirrors) the saved PNG is
    displayed with the caption below it, in Jupyter and in the book, and ``fig`` is closed so
    that the inline backend does not show it a second time.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for suffix, kwargs in ((".png", {"dpi": dpi}), (".svg", {})):
        with atomic_path(output_dir / f"{name}{suffix}") as tmp:
            fig.savefig(tmp, bbox_inches="tight", format=suffix[1:], **kwargs)
    png = output_dir / f"{name}.png"
    if caption:
        from IPython.display import display

        display({"text/html": figure_html(png.read_bytes(), caption, name), "text/plain": f"Figure: {caption}"},
                raw=True)
        plt.close(fig)
    return png


def plot_modality_gap(gap: pd.DataFrame, homogeneity: pd.DataFrame | None = None) -> plt.Figure:
    """Fig. 2 style: median cosine image vs text per layer with the q1–q3 band (left) and
    ADP cluster homogeneity w.r.t. modality (right)."""
    _require(gap, ("model", "layer", "q1", "median", "q3"), "plot_modality_gap")
    fig, axes = _panels(2 if homogeneity is not None else 1)
    for color, (model, part) in zip(_colors(gap["model"].nunique()), gap.groupby("model", sort=False)):
        depth = part["layer"] / max(part["layer"].max(), 1)
        axes[0].plot(depth, part["median"], color=color, label=model, marker="o", ms=3)
        axes[0].fill_between(depth, part["q1"], part["q3"], color=color, alpha=0.2)
    axes[0].set(xlabel="relative depth", ylabel="median cosine, image vs text", title="Modality gap")
    axes[0].legend(fontsize=8)
    if homogeneity is not None:
        _require(homogeneity, ("model", "layer", "homogeneity"), "plot_modality_gap (homogeneity)")
        for color, (model, part) in zip(_colors(homogeneity["model"].nunique()), homogeneity.groupby("model", sort=False)):
            depth = part["layer"] / max(part["layer"].max(), 1)
            axes[1].plot(depth, part["homogeneity"], color=color, label=model, marker="o", ms=3)
        axes[1].set(xlabel="relative depth", ylabel="cluster homogeneity (modality)", ylim=(-0.05, 1.05),
                    title="ADP clusters")
    fig.tight_layout()
    return fig


def plot_attention_shares(shares: pd.DataFrame) -> plt.Figure:
    """Fig. 3 style: stacked share of text→image attention per token group and layer, one panel per model."""
    _require(shares, ("model", "layer", "token", "share"), "plot_attention_shares")
    models = list(dict.fromkeys(shares["model"]))
    fig, axes = _panels(len(models))
    for ax, model in zip(axes, models):
        table = shares[shares["model"] == model].pivot_table(index="layer", columns="token", values="share", aggfunc="sum")
        table = table[table.mean().sort_values(ascending=False).index]
        ax.stackplot(table.index, table.T.values, labels=table.columns, colors=_colors(len(table.columns)), alpha=0.85)
        ax.set(xlabel="layer", ylabel="share of text→image attention", ylim=(0, 1), title=model)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def plot_overlap(overlap: pd.DataFrame) -> plt.Figure:
    """Fig. 4 style: neighborhood overlap χ^{l,gt} per layer for each token group, one panel per model."""
    _require(overlap, ("model", "layer", "token", "chi"), "plot_overlap")
    models = list(dict.fromkeys(overlap["model"]))
    fig, axes = _panels(len(models))
    for ax, model in zip(axes, models):
        part = overlap[overlap["model"] == model]
        for color, (token, rows) in zip(_colors(part["token"].nunique()), part.groupby("token", sort=False)):
            ax.plot(rows["layer"], rows["chi"], color=color, marker="o", ms=3, label=token)
        ax.set(xlabel="layer", ylabel=r"$\chi^{l,gt}$ (class)", ylim=(-0.02, 1.02), title=model)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_progressive_knockout(knockout: pd.DataFrame) -> plt.Figure:
    """Fig. 5 style: χ^{out,gt} at the last token vs number of knocked-out final layers."""
    _require(knockout, ("model", "window", "ablation", "chi"), "plot_progressive_knockout")
    models = list(dict.fromkeys(knockout["model"]))
    fig, axes = _panels(len(models))
    colors = {"eoi": "#2ca02c", "img_to_text": "#c2188b"}
    for ax, model in zip(axes, models):
        part = knockout[knockout["model"] == model]
        for ablation, rows in part.groupby("ablation", sort=False):
            ax.plot(rows["window"], rows["chi"], marker="o", ms=3, color=colors.get(ablation), label=ablation)
        ax.set(xlabel="knocked-out final layers", ylabel=r"$\chi^{out,gt}$", ylim=(-0.02, 1.02), title=model)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_steering(steering: pd.DataFrame) -> plt.Figure:
    """Fig. 6 style: Σmin(q_patched, p_target) vs relative depth, one panel per patching site;
    the dashed line is the unpatched base-vs-target similarity."""
    _require(steering, ("model", "site", "position", "relative_depth", "similarity", "baseline"), "plot_steering")
    sites = list(dict.fromkeys(steering["site"]))
    fig, axes = _panels(len(sites))
    for ax, site in zip(axes, sites):
        part = steering[steering["site"] == site]
        groups = part.groupby(["model", "position"], sort=False)
        for color, ((model, position), rows) in zip(_colors(groups.ngroups), groups):
            ax.plot(rows["relative_depth"], rows["similarity"], color=color, marker="o", ms=3, label=f"{model} · {position}")
            ax.axhline(rows["baseline"].mean(), color=color, ls="--", lw=0.8)
        ax.set(xlabel="relative depth of patched layer", ylabel=r"$\sum_i \min(q_i, p_i)$", ylim=(-0.02, 1.02),
               title={"resid": "residual stream (single layer)", "attn_in": "attention input (layers l..L)"}.get(site, site))
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_image_grid(images: list, titles: list[str], columns: int = 6) -> plt.Figure:
    """A grid of small images with one title each (the toy world's samples)."""
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(title, fontsize=7)
    fig.tight_layout()
    return fig


def plot_training_curves(curves: pd.DataFrame) -> plt.Figure:
    """Loss vs step for every model and training stage (log scale)."""
    _require(curves, ("model", "stage", "step", "loss"), "plot_training_curves")
    fig, axes = _panels(1, width=6.0)
    groups = curves.groupby(["model", "stage"], sort=False)
    for color, ((model, stage), part) in zip(_colors(groups.ngroups), groups):
        axes[0].plot(part["step"], part["loss"], color=color, ls="-" if stage == "main" else ":", label=f"{model} ({stage})")
    axes[0].set(xlabel="step", ylabel="training loss (cross-entropy)", yscale="log", title="Toy-model training")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig
