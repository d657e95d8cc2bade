"""Sec. 4.4 / Fig. 6, Fig. A2: steering the image's class by activation patching.

For a (base, target) class pair, the activation of a target-class image at one position is
written into the forward pass of a base-class image, and the next-token distribution after
the class prompt is compared with that of the target image: Σ_i min(q_i, p_i) (eq. 4).
Two sites: the residual stream at one layer l, and the attention-block input at every layer
from l to the last. A switch is counted when the patched prediction becomes the target's
prediction (over pairs whose unpatched predictions differ).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..data.sample import Sample
from ..interventions import patch_activation
from ..metrics import patching_similarity
from ..models.base import Adapter
from ..tracing import last_logits
from .common import Cache, per_batch


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


def steering_profile(adapter: Adapter, couples: Sequence[tuple[Sample, Sample]], prompt: str, position: str,
                     site: str, layers: Sequence[int], batch_size: int = 16, cache: Cache = False) -> pd.DataFrame:
    """Similarity and switch rate for every patched layer l (site 'resid': layer l only;
    'attn_in': layers l..L-1). ``position`` is a fixed named position ("eoi", "last_image",
    "image_index:N"), resolved in the base and the target image alike. With ``cache`` the
    per-pair results of every batch are stored as they finish (a killed run resumes)."""
    n_layers = adapter.num_layers
    layers = adapter.check_layers(layers)

    def run(i: int, chunk: list[tuple[Sample, Sample]]) -> dict[str, np.ndarray]:
        base = adapter.build_batch([b.image for b, _ in chunk], [prompt] * len(chunk))
        target = adapter.build_batch([t.image for _, t in chunk], [prompt] * len(chunk))
        p_base = torch.softmax(last_logits(adapter, base), -1)
        p_target = torch.softmax(last_logits(adapter, target), -1)
        target_pred = p_target.argmax(-1)
        similarity, switched = [], []
        for layer in layers:
            patched_layers = [layer] if site == "resid" else list(range(layer, n_layers))
            q = torch.softmax(patch_activation(adapter, base, target, position, patched_layers, site), -1)
            similarity.append(patching_similarity(q.numpy(), p_target.numpy()))
            switched.append((q.argmax(-1) == target_pred).numpy())
        return {"baseline": patching_similarity(p_base.numpy(), p_target.numpy()),
                "switchable": (p_base.argmax(-1) != target_pred).numpy(),
                "similarity": np.stack(similarity, axis=1), "switched": np.stack(switched, axis=1)}  # [B, n_layers]

    params = {"prompt": prompt, "position": position, "site": site, "layers": list(layers)}
    pairs = per_batch(adapter, list(couples), "steering", params, run, batch_size, cache,
                      f"{adapter.model_id} · {site} · {position}", ids=[f"{b.uid}>{t.uid}" for b, t in couples])
    switchable = pairs["switchable"].astype(bool)
    totals = {layer: (float(pairs["similarity"][:, j].sum()), int((pairs["switched"][:, j] & switchable).sum()),
                      int(switchable.sum())) for j, layer in enumerate(layers)}
    baseline_sum = float(pairs["baseline"].sum())
    n = len(couples)
    return pd.DataFrame([{
        "site": site, "position": position, "layer": layer, "relative_depth": layer / max(n_layers - 1, 1),
        "similarity": sim / n, "baseline": baseline_sum / n,
        "switch_rate": switches / switchable if switchable else float("nan"),
    } for layer, (sim, switches, switchable) in totals.items()])
