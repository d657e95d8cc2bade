"""nnsight extraction equals what HF reports (hidden states, attentions), for every tiny family."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import TEXTS, images, tiny

from narrowgate_utils.tiny import TINY_FAMILIES
from narrowgate_utils.tracing import (
    collect_attention,
    collect_residual,
    cross_modal_attention_profile,
    iter_batches,
    resolve_positions,
)


def padded_batch(family: str):
    """Two rows of different text length: left padding puts [EOI] at different absolute positions."""
    adapter = tiny(family)
    batch = adapter.build_batch(images(family, 2), TEXTS)
    assert batch.layouts[0].eoi != batch.layouts[1].eoi
    assert batch.layouts[0].pad_offset > 0
    return adapter, batch


def final_norm(adapter) -> torch.nn.Module:
    for module in adapter.model.modules():
        if getattr(module, "layers", None) is adapter.layers:
            return module.norm
    raise AssertionError("no module owns the decoder layers")


def rows_at(tensor: torch.Tensor, positions: list[list[int]]) -> torch.Tensor:
    return torch.stack([tensor[row, pos] for row, pos in enumerate(positions)])


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_residual_equals_output_hidden_states(family):
    adapter, batch = padded_batch(family)
    n_layers = adapter.num_layers
    with torch.no_grad():
        hidden = adapter.model(**batch.inputs, output_hidden_states=True).hidden_states
    assert len(hidden) == n_layers + 1
    eoi = batch.positions("eoi")
    resid = collect_residual(adapter, batch, "eoi", include_embeddings=True)
    assert resid.shape == (n_layers + 1, 2, 1, adapter.text_config.hidden_size)
    assert resid.dtype == torch.float32
    for entry in range(n_layers):  # x^0 (embeddings) and x^l for l < L-1: exactly HF's entries
        assert torch.equal(resid[entry], rows_at(hidden[entry], eoi))
    # HF's last entry is after the final norm; ours is the raw residual of the last layer
    assert not torch.allclose(resid[n_layers], rows_at(hidden[n_layers], eoi), atol=1e-3)
    with torch.no_grad():
        torch.testing.assert_close(final_norm(adapter)(resid[n_layers]), rows_at(hidden[n_layers], eoi),
                                   rtol=1e-5, atol=1e-5)

    explicit = [[batch.layouts[0].pad_offset + 1, batch.layouts[0].eoi], [0, batch.layouts[1].last_image]]
    subset = collect_residual(adapter, batch, explicit, layers=[0, 2])
    assert subset.shape == (2, 2, 2, adapter.text_config.hidden_size)
    assert torch.equal(subset[0], rows_at(hidden[1], explicit))
    assert torch.equal(subset[1], rows_at(hidden[3], explicit))


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_attn_in_equals_input_layernorm_output(family):
    adapter, batch = padded_batch(family)
    captured = {}
    hooks = [adapter.input_layernorm(l).register_forward_hook(lambda m, i, o, l=l: captured.__setitem__(l, o))
             for l in range(adapter.num_layers)]
    try:
        with torch.no_grad():
            adapter.model(**batch.inputs)
    finally:
        for hook in hooks:
            hook.remove()
    text = batch.positions("text_last")
    attn_in = collect_residual(adapter, batch, "text_last", layers=[1, 3], site="attn_in")
    assert torch.equal(attn_in[0], rows_at(captured[1], text))
    assert torch.equal(attn_in[1], rows_at(captured[3], text))
    resid = collect_residual(adapter, batch, "text_last", layers=[1])
    assert not torch.allclose(attn_in[0], resid[0])


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_random_positions_are_seeded_and_exact(family):
    adapter, batch = padded_batch(family)
    first = collect_residual(adapter, batch, "random_image:3", layers=[1], rng=np.random.default_rng(7))
    again = collect_residual(adapter, batch, "random_image:3", layers=[1], rng=np.random.default_rng(7))
    assert torch.equal(first, again)
    positions = batch.positions("random_image:3", np.random.default_rng(7))
    with torch.no_grad():
        hidden = adapter.model(**batch.inputs, output_hidden_states=True).hidden_states
    assert torch.equal(first[0], rows_at(hidden[2], positions))


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_attention_equals_output_attentions(family):
    adapter, batch = padded_batch(family)
    with torch.no_grad():
        reference = torch.stack(adapter.model(**batch.inputs, output_attentions=True).attentions)
    attention = collect_attention(adapter, batch)
    assert attention.shape == reference.shape
    assert torch.equal(attention, reference)
    assert torch.equal(collect_attention(adapter, batch, layers=[2]), reference[2:3])


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_cross_modal_profile_is_eq2(family):
    adapter, batch = padded_batch(family)
    with torch.no_grad():
        attentions = adapter.model(**batch.inputs, output_attentions=True).attentions
    profile = cross_modal_attention_profile(adapter, batch)
    n_span = len(batch.layouts[0].image_span)
    assert profile.shape == (adapter.num_layers, 2, n_span)
    for layer in range(adapter.num_layers):
        for row, layout in enumerate(batch.layouts):
            block = attentions[layer][row].double()[:, list(layout.text_positions)][:, :, list(layout.image_span)]
            expected = block.sum(dim=(0, 1))  # sum over heads and text queries, then normalise (eq. 2)
            np.testing.assert_allclose(profile[layer, row], (expected / expected.sum()).numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(profile.sum(-1), 1.0, rtol=1e-12)
    raw = cross_modal_attention_profile(adapter, batch, layers=[1], normalize=False)
    layout = batch.layouts[1]
    block = attentions[1][1].double()[:, list(layout.text_positions)][:, :, list(layout.image_span)]
    np.testing.assert_allclose(raw[0, 1], block.mean(dim=(0, 1)).numpy(), rtol=1e-9)


def test_bad_inputs_raise_clear_errors():
    adapter, batch = padded_batch("chameleon")
    with pytest.raises(ValueError, match="out of range"):
        collect_residual(adapter, batch, "eoi", layers=[adapter.num_layers])
    with pytest.raises(ValueError, match="Unknown site"):
        collect_residual(adapter, batch, "eoi", site="mlp")
    with pytest.raises(ValueError, match="outside the sequence"):
        collect_residual(adapter, batch, [[999], [3]])
    with pytest.raises(ValueError, match="left padding"):
        collect_residual(adapter, batch, [[0], [3]])
    with pytest.raises(ValueError, match="different numbers"):
        collect_residual(adapter, batch, [[70, 71], [71]])
    with pytest.raises(ValueError, match="one list of positions per row"):
        resolve_positions(batch, [[70]])
    with pytest.raises(ValueError, match="include_embeddings"):
        collect_residual(adapter, batch, "eoi", site="attn_in", include_embeddings=True)
    with pytest.raises(ValueError, match="numpy Generator"):
        collect_residual(adapter, batch, "random_image:2")


def test_iter_batches_covers_every_sample_in_order():
    adapter = tiny("llava")
    pictures = images("llava", 5)
    chunks = list(iter_batches(adapter, pictures, "this animal is a", batch_size=2, progress=False))
    assert [len(batch) for _, batch in chunks] == [2, 2, 1]
    assert all(a is b for a, b in zip([s for chunk, _ in chunks for s in chunk], pictures))
    with pytest.raises(ValueError, match="one text or one per sample"):
        next(iter_batches(adapter, pictures, ["a", "b"], batch_size=2))
    with pytest.raises(ValueError, match="positive integer"):
        next(iter_batches(adapter, pictures, "a", batch_size=0))


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_resid_in_is_the_layer_input(family):
    """site='resid_in' at layer l is x^{l-1}: HF's hidden_states[l] (the embeddings at l = 0)."""
    adapter, batch = padded_batch(family)
    with torch.no_grad():
        hidden = adapter.model(**batch.inputs, output_hidden_states=True).hidden_states
    layers = list(range(adapter.num_layers))
    resid_in = collect_residual(adapter, batch, "eoi", layers=layers, site="resid_in")
    resid = collect_residual(adapter, batch, "eoi", include_embeddings=True)
    eoi = batch.positions("eoi")
    for layer in layers:
        assert torch.equal(resid_in[layer], rows_at(hidden[layer], eoi))
        assert torch.equal(resid_in[layer], resid[layer])  # = resid at l - 1; x^0 at l = 0
    with pytest.raises(ValueError, match="include_embeddings"):
        collect_residual(adapter, batch, "eoi", site="resid_in", include_embeddings=True)
