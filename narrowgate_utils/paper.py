"""Reference values reported by the paper (Serra et al., arXiv 2412.06646), for side-by-side tables.

Every number here is transcribed from the paper and labelled with its source; nothing is
computed. Notebooks print these beside our own measurements.
"""
from __future__ import annotations

import pandas as pd

CITATION = "Serra et al., The Narrow Gate (arXiv 2412.06646)"

#: Table 1 and Table A2: task scores under attention knockout (VQAv2 accuracy, CIDEr on
#: Flickr30k and MS-COCO, and χ^{out,gt} on the ImageNet prompt). The paper's "32nd" and
#: "1025" tokens are absolute sequence positions (BOS = 0), hence the ``abs:N`` names:
#: Chameleon-7B's position 32 is its 31st VQ code ([SOI] sits at 1); Pixtral's 1025 counts
#: BOS and the [IMG_BREAK] tokens.
_TABLE1 = [
    # model, ablation, vqav2, flickr, coco, imagenet_chi
    ("Chameleon-7B", "none", 0.51, 0.23, 0.35, 0.46),
    ("Chameleon-7B", "eoi", 0.25, 0.04, 0.03, 0.01),
    ("Chameleon-7B", "img_to_text", 0.40, 0.13, 0.21, 0.47),
    ("Chameleon-7B", "last_image", 0.42, 0.17, 0.25, 0.46),
    ("Chameleon-7B", "abs:32", 0.51, 0.23, 0.34, 0.46),
    ("Chameleon-7B", "random", 0.51, 0.21, 0.31, 0.46),
    ("Chameleon-34B", "none", 0.59, 0.38, 0.42, 0.43),
    ("Chameleon-34B", "eoi", 0.39, 0.02, 0.02, 0.04),
    ("Chameleon-34B", "img_to_text", 0.50, 0.25, 0.28, 0.42),
    ("Chameleon-34B", "last_image", 0.58, 0.35, 0.40, 0.41),
    ("Chameleon-34B", "first_image", 0.57, 0.35, 0.39, 0.42),
    ("Chameleon-34B", "random", 0.58, 0.34, 0.38, 0.42),
    ("Pixtral-12B", "none", 0.79, 0.51, 0.60, 0.63),
    ("Pixtral-12B", "eoi", 0.77, 0.53, 0.58, 0.61),
    ("Pixtral-12B", "img_to_text", 0.37, 0.00, 0.01, 0.06),
    ("Pixtral-12B", "last_image", 0.77, 0.49, 0.59, 0.62),
    ("Pixtral-12B", "abs:1025", 0.77, 0.46, 0.55, 0.61),
    ("Pixtral-12B", "row_separators", 0.76, 0.46, 0.54, 0.61),
    ("Pixtral-12B", "random", 0.77, 0.46, 0.55, 0.61),
]


def knockout_table() -> pd.DataFrame:
    """Paper Table 1 + Table A2 as a tidy frame (one row per model × ablation)."""
    frame = pd.DataFrame(_TABLE1, columns=["model", "ablation", "vqav2", "flickr30k_cider", "coco_cider", "imagenet_chi_out"])
    frame["source"] = "paper Table 1 / Table A2"
    return frame


#: Headline values quoted in the text of Sec. 4.1–4.4, keyed by figure.
HEADLINES: dict[str, list[tuple[str, str]]] = {
    "fig2_modality_gap": [
        ("Chameleon-7B/34B median |cos| image vs text", "< 0.10 at every layer"),
        ("Pixtral-12B median |cos| image vs text", "≈ 0.2 in early layers rising to ≈ 0.4"),
        ("Chameleon ADP homogeneity w.r.t. modality", "1.0 at every layer"),
        ("Pixtral-12B ADP homogeneity", "≈ 1 early, ≈ 0.5 in the second half"),
    ],
    "fig3_cross_modal_attention": [
        ("Chameleon-7B [EOI] share of text→image attention", "> 40% in layers 2–6; 8–12% mid; > 37% in the last two"),
        ("Chameleon-7B token at absolute position 32 (the 31st VQ code)", "> 60% in layers 8–11"),
        ("Pixtral-12B token at absolute position 1025 (BOS and [EOL]s counted)",
         "17–46% from layer 4 on; [EOL]s ≈ 20% in layers 20–35"),
    ],
    "fig4_neighborhood_overlap": [
        ("Chameleon-7B χ of [EOI]", "≈ 0 in layers 0–4, > 0.4 from layer 9 on"),
        ("Chameleon-7B χ of internal image tokens", "peaks ≈ 0.2 at layer 8, < 0.1 after layer 15"),
        ("Pixtral-12B χ of internal image tokens", "0.24 at layer 0 rising to 0.44"),
        ("Chameleon-34B χ of [EOI] (Fig. A1)", "> 0.4 after layer 16; other tokens < 0.25"),
    ],
    "fig5_progressive_knockout": [
        ("Chameleon-7B / 34B baseline χ^{out,gt}", "0.46 / 0.43, → ≈ 0 when [EOI]→text is blocked in all layers"),
        ("Chameleon img→text knockout", "χ^{out,gt} stays at baseline"),
        ("Pixtral-12B", "[EOI] knockout keeps ≈ 0.6; img→text knockout drives χ to 0"),
    ],
    "fig6_steering": [
        ("Chameleon-7B residual patching of [EOI], peak similarity", "0.86 at layer 15 (relative depth 0.5)"),
        ("Chameleon-7B class switch rate (residual patch)", "≈ 75%"),
        ("Chameleon-7B / 34B attention-input patching from layer 0", "similarity ≈ 0.95 / 0.87, > 0.75 until depth 0.6"),
    ],
}


def headlines(figure: str) -> pd.DataFrame:
    """The paper's quoted values for one figure as a two-column frame."""
    if figure not in HEADLINES:
        raise ValueError(f"Unknown figure '{figure}'. Known: {', '.join(HEADLINES)}.")
    return pd.DataFrame(HEADLINES[figure], columns=["quantity", "paper value"]).assign(source=CITATION)
