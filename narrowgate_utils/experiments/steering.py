"""Sec. 4.4 / Fig. 6, Fig. A2: steering the image's class by activation patching.

For a (base, target) class pair, the activation of a target-class image at one position is
written into the forward pass of a base-class image, and the next-token distribution after
the class prompt is compared with that of the target image: Σ_i min(q_i, p_i) (eq. 4).
Sites: the residual stream at one layer l ('resid': output x^l; 'resid_in': input x^{l-1},
embeddings included, the authors' choice), and the attention-block input at every layer from
l to the last ('attn_in'). Two switch rates per layer:

- ``switch_rate`` (Fig. A2, the authors' count): over all pairs, the share where
  logit(target-class token) - logit(base-class token) at the last position changes sign
  between the unpatched and the patched base input
  (:func:`~narrowgate_utils.metrics.logit_sign_flips`);
- ``switch_rate_argmax``: over the pairs whose unpatched predictions differ, the share whose
  patched argmax prediction becomes the target image's argmax prediction.

A class's token is the first token of its word as it follows the prompt (" dog" after
"This animal is a"); :data:`IMAGENET_CLASS_WORDS` holds the words the authors scored for the
ImageNet patching classes, other classes use their own name.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..data.sample import Sample
from ..interventions import patch_activation
from ..metrics import logit_sign_flips, patching_similarity
from ..models.base import Adapter
from ..tracing import last_logits
from .common import Cache, per_batch

#: the word whose first token stands for each ImageNet patching class in the authors' logit
#: differences (their token map: e.g. "crocodile" for the alligator, "fossil" for the
#: trilobite, "dog" for the husky); classes not listed use their own name
IMAGENET_CLASS_WORDS: dict[str, str] = {
    "american alligator": "crocodile", "arabian camel": "camel", "bald eagle": "bald", "barn spider": "spider",
    "bee eater": "bee", "cheetah": "cheetah", "flamingo": "flamingo", "great grey owl": "owl",
    "green mamba": "snake", "grey whale": "whale", "hippopotamus": "hippopotamus", "jaguar": "Jaguar",
    "king penguin": "king", "kit fox": "fox", "lionfish": "lion", "macaw": "macaw",
    "proboscis monkey": "monkey", "siberian husky": "dog", "tailed frog": "frog", "trilobite": "fossil",
}


def paired_samples(samples: Sequence[Sample], pairs: Sequence[tuple[str, str]],
                   per_pair: int) -> list[tuple[Sample, Sample]]:
    """Up to ``per_pair`` (base image, target image) couples for every (base class, target class)."""
    by_class: dict[str, list[Sample]] = {}
    for sample in samples:
        by_class.setdefault(sample.class_name, []).append(sample)
    couples = []
    for base, target in pairs:
        n = min(per_pair, len(by_class.get(base, [])), len(by_class.get(target, [])))
        couples.extend(zip(by_class.get(base, [])[:n], by_class.get(target, [])[:n]))
    if not couples:
        raise ValueError("No sample of any patching pair was found; raise n_samples or check the class names of the pairs.")
    return couples


def class_token_id(tokenizer: Any, prompt: str, word: str) -> int:
    """Id of the first token of ``word`` where it follows ``prompt`` after a space (" dog").

    Tokenising the prompt with and without the word (no special tokens) gives the token the
    model predicts there, whatever the tokenizer's handling of a leading space.
    """
    if not word.strip():
        raise ValueError("The class word is empty; give every class a non-empty name or class word.")
    head = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(f"{prompt} {word.strip()}", add_special_tokens=False)["input_ids"])
    if len(full) <= len(head) or full[:len(head)] != head:
        raise ValueError(f"The tokenizer merges the prompt {prompt!r} with the class word {word!r}, so the word's "
                         "first token is not defined; end the prompt with a whole word.")
    return int(full[len(head)])


def class_token_ids(adapter: Adapter, couples: Sequence[tuple[Sample, Sample]], prompt: str,
                    class_words: Mapping[str, str]) -> dict[str, int]:
    """{class name: first token id of its word} for every class in ``couples``."""
    names = sorted({s.class_name for couple in couples for s in couple})
    return {name: class_token_id(adapter.tokenizer, prompt, class_words.get(name, name)) for name in names}


def _pair_token_ids(couples: Sequence[tuple[Sample, Sample]], ids: Mapping[str, int],
                    unknown: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base ids, target ids, scorable) per pair; a pair is scorable when its two class tokens
    are known and distinct, so that their logit difference means something."""
    base = np.array([ids[b.class_name] for b, _ in couples], dtype=np.int64)
    target = np.array([ids[t.class_name] for _, t in couples], dtype=np.int64)
    scorable = base != target
    if unknown is not None:
        scorable &= (base != unknown) & (target != unknown)
    return base, target, scorable


def steering_profile(adapter: Adapter, couples: Sequence[tuple[Sample, Sample]], prompt: str, position: str,
                     site: str, layers: Sequence[int], batch_size: int = 16, cache: Cache = False, *,
                     class_words: Mapping[str, str] = IMAGENET_CLASS_WORDS) -> pd.DataFrame:
    """Similarity and switch rates for every patched layer l (sites 'resid' and 'resid_in': layer
    l only; 'attn_in': layers l..L-1). ``position`` is a fixed named position ("eoi",
    "last_image", "image_index:N"), resolved in the base and the target image alike.

    ``switch_rate`` is the logit-sign count over all pairs (Fig. A2), with the class tokens of
    ``class_words`` (see :func:`class_token_id`); pairs whose two classes share their first
    token (or have an unknown one) are left out of it with a warning, NaN when none is left.
    ``switch_rate_argmax`` is the argmax count (module docstring). With ``cache`` the per-pair
    results of every batch are stored as they finish (a killed run resumes).
    """
    n_layers = adapter.num_layers
    layers = adapter.check_layers(layers)
    token_ids = class_token_ids(adapter, couples, prompt, class_words)
    unknown = getattr(adapter.tokenizer, "unk_token_id", None)
    scorable = _pair_token_ids(couples, token_ids, unknown)[2]
    if not scorable.all():
        warnings.warn(f"{int((~scorable).sum())} of {len(couples)} pairs have class words with the same first token "
                      "or an unknown one; they are left out of switch_rate (pass class_words to fix).", stacklevel=2)

    def run(i: int, chunk: list[tuple[Sample, Sample]]) -> dict[str, np.ndarray]:
        base = adapter.build_batch([b.image for b, _ in chunk], [prompt] * len(chunk))
        target = adapter.build_batch([t.image for _, t in chunk], [prompt] * len(chunk))
        base_logits = last_logits(adapter, base)
        p_base = torch.softmax(base_logits, -1)
        p_target = torch.softmax(last_logits(adapter, target), -1)
        target_pred = p_target.argmax(-1)
        base_ids, target_ids, rows = _pair_token_ids(chunk, token_ids, unknown)
        similarity, switched, flipped = [], [], []
        for layer in layers:
            patched_layers = [layer] if site in ("resid", "resid_in") else list(range(layer, n_layers))
            logits = patch_activation(adapter, base, target, position, patched_layers, site)
            q = torch.softmax(logits, -1)
            similarity.append(patching_similarity(q.numpy(), p_target.numpy()))
            switched.append((q.argmax(-1) == target_pred).numpy())
            flips = np.zeros(len(chunk), dtype=bool)
            if rows.any():
                flips[rows] = logit_sign_flips(base_logits[rows].numpy(), logits[rows].numpy(), base_ids[rows],
                                               target_ids[rows])
            flipped.append(flips)
        return {"baseline": patching_similarity(p_base.numpy(), p_target.numpy()),
                "switchable": (p_base.argmax(-1) != target_pred).numpy(),
                "similarity": np.stack(similarity, axis=1), "switched": np.stack(switched, axis=1),
                "flipped": np.stack(flipped, axis=1)}  # [B, n_layers]

    params = {"prompt": prompt, "position": position, "site": site, "layers": list(layers), "class_token_ids": token_ids}
    pairs = per_batch(adapter, list(couples), "steering", params, run, batch_size, cache,
                      f"{adapter.model_id} · {site} · {position}", ids=[f"{b.uid}>{t.uid}" for b, t in couples])
    switchable = pairs["switchable"].astype(bool)
    flipped = pairs["flipped"].astype(bool)
    n_switchable, n_scorable = int(switchable.sum()), int(scorable.sum())
    return pd.DataFrame([{
        "site": site, "position": position, "layer": layer, "relative_depth": layer / max(n_layers - 1, 1),
        "similarity": float(pairs["similarity"][:, j].mean()), "baseline": float(pairs["baseline"].mean()),
        "switch_rate": float(flipped[scorable, j].mean()) if n_scorable else float("nan"),
        "switch_rate_argmax": float((pairs["switched"][:, j] & switchable).sum() / n_switchable)
        if n_switchable else float("nan"),
    } for j, layer in enumerate(layers)])
