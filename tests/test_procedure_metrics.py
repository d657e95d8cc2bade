"""Paper-faithful procedures in the experiments: pooled χ of internal image tokens (Fig. 4),
the logit-sign switch rate (Fig. A2) and the cross-pair modality gap (Fig. 2), on tiny models."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import images, tiny

from narrowgate_utils.data.sample import Sample
from narrowgate_utils.experiments import modality_gap, overlap, steering
from narrowgate_utils.interventions import patch_activation
from narrowgate_utils.layout import TokenLayout
from narrowgate_utils.metrics import switch_rate
from narrowgate_utils.tracing import collect_residual, last_logits

PROMPT = "this animal is a"


def samples(family: str, names: list[str]) -> list[Sample]:
    return [Sample(uid=f"s{i}", image=Image.fromarray(array), label=i, class_name=name, captions=("a red shape",))
            for i, (array, name) in enumerate(zip(images(family, len(names), seed=5), names))]


# ---------------------------------------------------------------- pooled χ (Fig. 4)
def test_overlap_positions_pool_every_internal_token_except_the_probed_ones() -> None:
    layout = TokenLayout(seq_len=12, image_positions=(2, 3, 5, 6, 7, 8), eoi=9, soi=1, row_separators=(4,),
                         text_positions=(10, 11))
    pooled = overlap.overlap_positions(layout, extra=["first_image"])
    assert pooled == {"[EOI]": [9], "last image": [8], "first_image": [2], overlap.INTERNAL_GROUP: [3, 5, 6, 7]}
    per_token = overlap.overlap_positions(layout, extra=["first_image"], max_internal=2, internal="per_token")
    assert len(per_token[overlap.INTERNAL_GROUP]) == 2 and set(per_token[overlap.INTERNAL_GROUP]) <= {3, 5, 6, 7}
    with pytest.raises(ValueError, match="internal must be"):
        overlap.overlap_positions(layout, internal="mean")


def test_pooled_chi_differs_from_the_mean_of_per_token_chi_by_hand() -> None:
    # 4 images (labels A A B B), 2 internal tokens, 1-D residuals, k = 1
    tokens = np.array([[0.0, 0.0], [1.0, -0.8], [1.5, 8.5], [5.0, 5.2]])  # [image, token]
    labels = ["A", "A", "B", "B"]
    # token 0: 0->1 (A ok), 1->1.5 (B, wrong), 1.5->1 (wrong), 5->1.5 (ok): chi 1/2
    # token 1: 0->-.8 ok, -.8->0 ok, 8.5->5.2 ok, 5.2->8.5 ok: chi 1 -> mean of per-token chi 3/4
    per_token = overlap.overlap_profile({"g": tokens[None, :, :, None]}, labels, [0], k=1)
    assert per_token.chi.item() == pytest.approx(0.75)
    # pooled: means 0, .1, 5, 5.1 -> every nearest neighbour shares the label: chi 1
    pooled = overlap.overlap_profile({"g": tokens.mean(axis=1)[None, :, None, None]}, labels, [0], k=1)
    assert pooled.chi.item() == pytest.approx(1.0)


@pytest.mark.parametrize("family", ["chameleon", "llava"])
def test_pooled_residual_is_the_mean_of_the_collected_tokens(family) -> None:
    adapter = tiny(family)
    batch = adapter.build_batch(images(family, 3, seed=1), [PROMPT] * 3)
    layers = adapter.check_layers(None)
    groups = [layout.image_positions[:-1] for layout in batch.layouts]
    uneven = [layout.image_positions[: 2 + row] for row, layout in enumerate(batch.layouts)]
    pooled = overlap.pooled_residual(adapter, batch, [groups, uneven], layers)
    assert pooled.shape == (len(layers), 2, 3, adapter.model.config.get_text_config().hidden_size)
    full = collect_residual(adapter, batch, groups, layers)
    torch.testing.assert_close(pooled[:, 0], full.mean(dim=2), rtol=1e-5, atol=1e-5)
    for row, positions in enumerate(uneven):
        one = collect_residual(adapter, batch, [positions] * 3, layers)[:, row]
        torch.testing.assert_close(pooled[:, 1, row], one.mean(dim=1), rtol=1e-5, atol=1e-5)


def test_overlap_batch_pooled_equals_the_per_token_mean() -> None:
    adapter = tiny("chameleon")
    chunk = samples("chameleon", ["red", "blue", "red"])
    pooled = overlap.overlap_batch(adapter, chunk, PROMPT)
    per_token = overlap.overlap_batch(adapter, chunk, PROMPT, max_internal=10_000, internal="per_token")
    assert pooled.keys() == per_token.keys()
    for name in pooled:
        assert pooled[name].shape[2] == 1
        np.testing.assert_allclose(pooled[name][:, :, 0], per_token[name].mean(axis=2), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- switch rate (Fig. A2)
def test_class_token_id_is_the_first_token_after_the_prompt() -> None:
    tokenizer = tiny("chameleon").tokenizer
    red = tokenizer.convert_tokens_to_ids("red")
    assert steering.class_token_id(tokenizer, PROMPT, "red circle") == red
    with pytest.raises(ValueError, match="empty"):
        steering.class_token_id(tokenizer, PROMPT, " ")


def test_steering_switch_rate_is_the_logit_sign_count() -> None:
    adapter = tiny("chameleon")
    data = samples("chameleon", ["red circle", "blue square", "red circle", "blue square", "green circle", "red square"])
    couples = [(data[0], data[1]), (data[3], data[2]), (data[4], data[5])]
    profile = steering.steering_profile(adapter, couples, PROMPT, "eoi", "resid", [0, 1], batch_size=2)
    assert {"switch_rate", "switch_rate_argmax", "similarity", "baseline"} <= set(profile.columns)
    vocab = adapter.tokenizer.convert_tokens_to_ids
    base_ids, target_ids = [vocab(w) for w in ("red", "blue", "green")], [vocab(w) for w in ("blue", "red", "red")]
    base = adapter.build_batch([b.image for b, _ in couples], [PROMPT] * 3)
    target = adapter.build_batch([t.image for _, t in couples], [PROMPT] * 3)
    clean = last_logits(adapter, base)
    for layer, rate in zip([0, 1], profile.switch_rate):
        patched = patch_activation(adapter, base, target, "eoi", [layer], "resid")
        assert rate == pytest.approx(switch_rate(clean, patched, base_ids, target_ids))


def test_steering_leaves_unscorable_pairs_out_with_a_warning() -> None:
    adapter = tiny("chameleon")
    data = samples("chameleon", ["c0", "c1", "red circle", "red square"])  # unknown words; a shared first token
    with pytest.warns(UserWarning, match="2 of 2 pairs"):
        profile = steering.steering_profile(adapter, [(data[0], data[1]), (data[2], data[3])], PROMPT, "eoi",
                                            "resid", [0])
    assert np.isnan(profile.switch_rate.item())
    # a class word map fixes them
    words = {"c0": "red", "c1": "blue", "red square": "square"}
    fixed = steering.steering_profile(adapter, [(data[0], data[1]), (data[2], data[3])], PROMPT, "eoi", "resid", [0],
                                      class_words=words)
    assert 0.0 <= fixed.switch_rate.item() <= 1.0


@pytest.mark.parametrize(("site", "expected"), [("resid", [[1]]), ("resid_in", [[1]]), ("attn_in", [[1, 2, 3]])])
def test_steering_patches_one_layer_for_residual_sites(site, expected, monkeypatch) -> None:
    adapter = tiny("chameleon")
    calls = []

    def fake_patch(adapter, base, target, position, layers, site):
        calls.append(list(layers))
        return torch.zeros(len(base), adapter.model.config.get_text_config().vocab_size)

    monkeypatch.setattr(steering, "patch_activation", fake_patch)
    data = samples("chameleon", ["red circle", "blue square"])
    steering.steering_profile(adapter, [(data[0], data[1])], PROMPT, "eoi", site, [1])
    assert calls == expected and adapter.num_layers == 4


# ---------------------------------------------------------------- modality gap (Fig. 2)
def test_modality_gap_defaults_to_cross_pairs() -> None:
    rng = np.random.default_rng(2)
    image, text = rng.normal(size=(2, 60, 6)), rng.normal(size=(2, 60, 6))
    text[:, :, 0] += 3 * image[:, :, 0]  # same-sample pairs correlate; cross pairs do not
    gap, homogeneity = modality_gap.modality_gap(image, text, [3, 7], min_cluster_size=5, maxk=32)
    paired, _ = modality_gap.modality_gap(image, text, [3, 7], min_cluster_size=5, maxk=32, pairing="paired")
    assert gap.layer.tolist() == [3, 7] and list(homogeneity.layer) == [3, 7]
    assert (gap["median"] < paired["median"]).all()
    with pytest.raises(ValueError, match="layers"):
        modality_gap.modality_gap(image, text, [3])
