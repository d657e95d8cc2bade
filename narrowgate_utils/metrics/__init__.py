"""Metrics: pure functions of arrays and strings (no model code).

- geometry: modality gap (|cosine| quartiles), ADP-cluster homogeneity, neighbourhood overlap (eq. 3)
- attention: cross-modal attention shares f_j^l (eq. 2), streaming mean, tidy aggregation
- patching: distribution similarity (eq. 4) and switch rates (logit-sign flips, argmax)
- vqa: official VQA answer normalisation and accuracy
- captioning: CIDEr-D without Java (simple or raw captions)
- classification: first class name mentioned in a completion
"""
from .attention import RunningMean, aggregate_attention_shares, cross_modal_attention, span_token_names
from .captioning import caption_tokenize, cider, cider_scores
from .classification import classification_accuracy, first_class_mention
from .geometry import (
    ADPResult,
    cosine_quartiles,
    cosine_values,
    adp_clusters,
    adp_homogeneity,
    modality_gap_profile,
    neighborhood_overlap,
)
from .patching import logit_sign_flips, patching_similarity, switch_rate, switch_rate_argmax
from .vqa import normalize_vqa_answer, vqa_accuracy, vqa_accuracy_batch

__all__ = [
    "ADPResult",
    "RunningMean",
    "cosine_quartiles",
    "cosine_values",
    "adp_clusters",
    "adp_homogeneity",
    "aggregate_attention_shares",
    "caption_tokenize",
    "cider",
    "cider_scores",
    "classification_accuracy",
    "cross_modal_attention",
    "first_class_mention",
    "logit_sign_flips",
    "modality_gap_profile",
    "neighborhood_overlap",
    "normalize_vqa_answer",
    "patching_similarity",
    "span_token_names",
    "switch_rate",
    "switch_rate_argmax",
    "vqa_accuracy",
    "vqa_accuracy_batch",
]
