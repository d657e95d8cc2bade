"""Attention knockout and activation patching on tiny models of every family."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from tiny_models import TEXTS, images, tiny
from torch.overrides import TorchFunctionMode

import narrowgate_utils
from narrowgate_utils import interventions, tracing
from narrowgate_utils.interventions import (
    KNOCKOUT_IMPL,
    knockout_attention,
    patch_activation,
)
from narrowgate_utils.tiny import TINY_FAMILIES
from narrowgate_utils.tracing import collect_attention, collect_residual, cross_modal_attention_profile

PACKAGE_DIR = str(Path(narrowgate_utils.__file__).parent)


def padded_batch(family: str, seed: int = 0, texts: list[str] = TEXTS):
    adapter = tiny(family)
    return adapter, adapter.build_batch(images(family, len(texts), seed), texts)


def image_pair(family: str):
    """(adapter, base, source): the same text twice, over two different random images (equal lengths)."""
    adapter, text = tiny(family), ["this animal is a"] * 2
    return adapter, adapter.build_batch(images(family, 2, seed=0), text), adapter.build_batch(images(family, 2, seed=1), text)


@torch.no_grad()
def run(adapter, batch, **kwargs):
    return adapter.model(**batch.inputs, **kwargs)


# ------------------------------------------------------------------------------ knockout
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_post_softmax_knockout_zeroes_exactly_the_blocked_weights(family):
    adapter, batch = padded_batch(family)
    plain = run(adapter, batch, output_attentions=True)
    with knockout_attention(adapter, batch, sources="eoi", targets="text"):
        blocked = run(adapter, batch, output_attentions=True)
        traced = collect_attention(adapter, batch)  # the same context works around nnsight traces
    assert torch.equal(traced, torch.stack(blocked.attentions))
    for row, layout in enumerate(batch.layouts):
        text, eoi = list(layout.text_positions), layout.eoi
        for layer in range(adapter.num_layers):
            weights, reference = blocked.attentions[layer][row], plain.attentions[layer][row]
            assert torch.all(weights[:, text, eoi] == 0)
            assert torch.all(reference[:, text, eoi] > 0)
            # queries that are not targets are untouched, bit for bit
            assert torch.equal(weights[:, : eoi + 1], reference[:, : eoi + 1])
        # first layer: target rows keep every other weight and are not renormalised
        first, reference = blocked.attentions[0][row], plain.attentions[0][row]
        others = [k for k in range(layout.seq_len) if k != eoi]
        assert torch.equal(first[:, text][:, :, others], reference[:, text][:, :, others])
        torch.testing.assert_close(first[:, text].sum(-1), 1 - reference[:, text, eoi])
    assert (blocked.logits[:, -1] - plain.logits[:, -1]).abs().max() > 1e-4


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_pre_softmax_knockout_renormalises(family):
    adapter, batch = padded_batch(family)
    plain = run(adapter, batch, output_attentions=True)
    with knockout_attention(adapter, batch, sources="image", targets="text", mode="pre_softmax"):
        blocked = run(adapter, batch, output_attentions=True)
    for row, layout in enumerate(batch.layouts):
        text, image = list(layout.text_positions), list(layout.image_positions)
        for layer in range(adapter.num_layers):
            weights = blocked.attentions[layer][row]
            assert torch.all(weights[:, text][:, :, image] == 0)
            torch.testing.assert_close(weights[:, text].sum(-1), torch.ones(weights.shape[0], len(text)))
            assert torch.equal(weights[:, : layout.eoi + 1], plain.attentions[layer][row][:, : layout.eoi + 1])
    assert (blocked.logits[:, -1] - plain.logits[:, -1]).abs().max() > 1e-4


@pytest.mark.parametrize("family", ["chameleon", "llava"])
def test_knockout_only_touches_selected_layers_and_restores_the_model(family):
    adapter, batch = padded_batch(family)
    config = adapter.attention(0).config
    before = config._attn_implementation
    plain = run(adapter, batch, output_attentions=True)
    eoi = [[layout.eoi] for layout in batch.layouts]
    with knockout_attention(adapter, batch, sources=eoi, targets="text", layers=[2, 3]):
        assert config._attn_implementation == KNOCKOUT_IMPL
        blocked = run(adapter, batch, output_attentions=True)
    assert config._attn_implementation == before
    for layer in (0, 1):
        assert torch.equal(blocked.attentions[layer], plain.attentions[layer])
    for row, layout in enumerate(batch.layouts):
        assert torch.all(blocked.attentions[2][row][:, list(layout.text_positions), layout.eoi] == 0)
    with pytest.raises(RuntimeError, match="boom"):
        with knockout_attention(adapter, batch, "eoi", "text"):
            raise RuntimeError("boom")
    assert config._attn_implementation == before
    assert torch.equal(run(adapter, batch).logits, plain.logits)


def greedy_without_cache(adapter, batch, steps: int) -> torch.Tensor:
    """Reference decoding: recompute the whole sequence at every step (no KV cache)."""
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    extra = {k: v for k, v in batch.inputs.items() if k not in ("input_ids", "attention_mask")}
    for _ in range(steps):
        with torch.no_grad():
            logits = adapter.model(input_ids=ids, attention_mask=mask, use_cache=False, **extra).logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        # per-token extras (e.g. Qwen2-VL's mm_token_type_ids) grow with text tokens (type 0)
        extra = {k: torch.cat([v, torch.zeros_like(v[:, :1])], dim=1) if v.shape[:2] == mask[:, :-1].shape else v
                 for k, v in extra.items()}
    return ids[:, batch.input_ids.shape[1]:]


def until_eos(tokens: torch.Tensor, eos: int | None) -> list[list[int]]:
    rows = []
    for row in tokens.tolist():
        rows.append(row[: row.index(eos) + 1] if eos in row else row)
    return rows


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_knockout_blocks_generated_tokens(family):
    adapter, batch = padded_batch(family)
    steps, prompt_len = 4, batch.input_ids.shape[1]
    options = dict(max_new_tokens=steps, do_sample=False, output_attentions=True, return_dict_in_generate=True,
                   pad_token_id=adapter.tokenizer.pad_token_id)
    with knockout_attention(adapter, batch, sources="eoi", targets="text"):
        with torch.no_grad():
            generated = adapter.model.generate(**batch.inputs, **options)
        reference = greedy_without_cache(adapter, batch, steps)
        texts = adapter.generate(batch, max_new_tokens=steps)
    new_tokens = generated.sequences[:, prompt_len:]
    eos = adapter.tokenizer.eos_token_id
    assert until_eos(new_tokens, eos) == until_eos(reference, eos)
    assert texts == [t.strip() for t in adapter.decode(generated.sequences[:, prompt_len:])]
    assert len(generated.attentions) == steps
    for step in generated.attentions[1:]:  # decoding steps: one new query per row
        for layer in step:
            assert layer.shape[2] == 1
            for row, layout in enumerate(batch.layouts):
                assert torch.all(layer[row, :, 0, layout.eoi] == 0)
    # with block_generated=False the new queries read [EOI] again
    with knockout_attention(adapter, batch, sources="eoi", targets="text", block_generated=False):
        with torch.no_grad():
            free = adapter.model.generate(**batch.inputs, **options)
    assert all(free.attentions[1][0][row, :, 0, layout.eoi].min() > 0 for row, layout in enumerate(batch.layouts))


def test_knockout_bad_inputs():
    adapter, batch = padded_batch("chameleon")
    with pytest.raises(ValueError, match="Unknown knockout mode"):
        with knockout_attention(adapter, batch, "eoi", "text", mode="zero"):
            pass
    with pytest.raises(ValueError, match="out of range"):
        with knockout_attention(adapter, batch, "eoi", "text", layers=[-adapter.num_layers - 1]):
            pass
    with pytest.raises(ValueError, match="outside the sequence"):
        with knockout_attention(adapter, batch, [[500], [5]], "text"):
            pass
    with pytest.raises(ValueError, match="Unknown position name"):
        with knockout_attention(adapter, batch, "eoi", "texts"):
            pass
    other = adapter.build_batch(images("chameleon", 1), TEXTS[:1])
    with pytest.raises(ValueError, match="batch of 2 rows"):
        with knockout_attention(adapter, batch, "eoi", "text"):
            run(adapter, other)
    assert adapter.attention(0).config._attn_implementation == "eager"


# ------------------------------------------------------------------------------- patching
def manual_patch(adapter, base, source, layer: int, site: str) -> torch.Tensor:
    """Reference patch with plain torch hooks: source activation at [EOI] -> base forward at [EOI]."""
    stored = {}

    def site_module():
        return adapter.input_layernorm(layer) if site == "attn_in" else adapter.layers[layer]

    def hidden(output):
        return output[0] if isinstance(output, tuple) else output

    def save(module, inputs, output):
        stored["value"] = torch.stack([hidden(output)[row, layout.eoi] for row, layout in enumerate(source.layouts)])

    def write(module, inputs, output):
        for row, layout in enumerate(base.layouts):
            hidden(output)[row, layout.eoi] = stored["value"][row]

    for hook_fn, batch in ((save, source), (write, base)):
        handle = site_module().register_forward_hook(hook_fn)
        try:
            logits = run(adapter, batch).logits[:, -1]
        finally:
            handle.remove()
    return logits


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("site", ["resid", "attn_in"])
def test_patch_takes_source_activations_into_the_base(family, site):
    """(d) would catch base/source swapped: result must equal the hook reference A<-B only."""
    adapter, base = padded_batch(family, seed=0)
    _, source = padded_batch(family, seed=1, texts=TEXTS[::-1])  # other padding: [EOI] moves
    assert base.layouts[0].eoi != source.layouts[0].eoi
    patched = patch_activation(adapter, base, source, "eoi", layers=[1], site=site)
    expected = manual_patch(adapter, base, source, layer=1, site=site)
    torch.testing.assert_close(patched, expected, rtol=0, atol=1e-5)
    swapped = manual_patch(adapter, source, base, layer=1, site=site)
    assert (patched - swapped).abs().max() > 1e-4
    assert (patched - run(adapter, base).logits[:, -1]).abs().max() > 1e-5


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_last_layer_residual_patch_only_changes_eoi(family):
    """(a) the last-layer residual at [EOI] reaches no other position."""
    adapter, base = padded_batch(family, seed=0)
    _, source = padded_batch(family, seed=1, texts=TEXTS[::-1])
    last = adapter.num_layers - 1
    patched = patch_activation(adapter, base, source, "eoi", layers=[last], full_logits=True)
    base_logits, source_logits = run(adapter, base).logits, run(adapter, source).logits
    torch.testing.assert_close(patched[:, -1], base_logits[:, -1], rtol=0, atol=1e-6)
    for row in range(2):
        b_eoi, s_eoi = base.layouts[row].eoi, source.layouts[row].eoi
        assert b_eoi != base.layouts[row].text_last
        torch.testing.assert_close(patched[row, b_eoi], source_logits[row, s_eoi], rtol=0, atol=1e-5)
        assert (base_logits[row, b_eoi] - source_logits[row, s_eoi]).abs().max() > 1e-4


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_patching_every_position_at_layer_zero_gives_the_source_output(family):
    """(b) equal-length prompts, all positions patched after layer 0 -> the source's logits."""
    adapter, base, source = image_pair(family)
    assert base.input_ids.shape == source.input_ids.shape
    everything = [list(range(base.input_ids.shape[1]))] * 2
    patched = patch_activation(adapter, base, source, everything, layers=[0], full_logits=True)
    torch.testing.assert_close(patched, run(adapter, source).logits, rtol=0, atol=1e-5)
    assert (run(adapter, base).logits - run(adapter, source).logits).abs().max() > 1e-4


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_attn_in_patch_at_eoi_changes_base_output(family):
    """(c) identical text, different images: [EOI]'s attention input in every layer carries the image."""
    adapter, base, source = image_pair(family)
    layers = range(adapter.num_layers)
    base_logits = run(adapter, base).logits[:, -1]
    patched = patch_activation(adapter, base, source, "eoi", layers=layers, site="attn_in")
    assert (patched - base_logits).abs().max() > 1e-4
    unchanged = patch_activation(adapter, base, base, "eoi", layers=layers, site="attn_in")
    torch.testing.assert_close(unchanged, base_logits, rtol=0, atol=1e-6)


def test_patch_bad_inputs():
    adapter, base = padded_batch("llava")
    single = adapter.build_batch(images("llava", 1), TEXTS[:1])
    with pytest.raises(ValueError, match="Unknown site"):
        patch_activation(adapter, base, base, "eoi", layers=[0], site="mlp")
    with pytest.raises(ValueError, match="out of range"):
        patch_activation(adapter, base, base, "eoi", layers=[adapter.num_layers])
    with pytest.raises(ValueError, match="layers is empty"):
        patch_activation(adapter, base, base, "eoi", layers=[])
    with pytest.raises(ValueError, match="pairs row i"):
        patch_activation(adapter, base, single, "eoi", layers=[0])
    with pytest.raises(ValueError, match="outside the sequence"):
        patch_activation(adapter, base, base, [[100], [3]], layers=[0])


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_resid_in_patch_equals_resid_patch_of_the_previous_layer(family):
    """Fig. 6 left / A2 site: the input x^{l-1} of layer l is the output of layer l - 1."""
    adapter, base = padded_batch(family, seed=0)
    _, source = padded_batch(family, seed=1, texts=TEXTS[::-1])
    for layer in (1, adapter.num_layers - 1):
        patched_in = patch_activation(adapter, base, source, "eoi", layers=[layer], site="resid_in", full_logits=True)
        patched_out = patch_activation(adapter, base, source, "eoi", layers=[layer - 1], site="resid", full_logits=True)
        torch.testing.assert_close(patched_in, patched_out, rtol=0, atol=1e-6)
    assert (patched_in - run(adapter, base).logits).abs().max() > 1e-4


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_resid_in_patch_at_layer_zero_replaces_the_embeddings(family):
    """Layer 0's input is the embedding output: patching it everywhere gives the source's run."""
    adapter, base, source = image_pair(family)
    everything = [list(range(base.input_ids.shape[1]))] * 2
    patched = patch_activation(adapter, base, source, everything, layers=[0], site="resid_in", full_logits=True)
    torch.testing.assert_close(patched, run(adapter, source).logits, rtol=0, atol=1e-5)
    image_only = patch_activation(adapter, base, source, "image", layers=[0], site="resid_in")
    assert (image_only - run(adapter, base).logits[:, -1]).abs().max() > 1e-5
    # the write went into a copy: a later plain run of the base is unchanged
    torch.testing.assert_close(patch_activation(adapter, base, base, "eoi", layers=[0], site="resid_in"),
                               run(adapter, base).logits[:, -1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["chameleon", "llava"])
def test_knockout_mask_is_built_once_per_shape_and_device(family):
    adapter, batch = padded_batch(family)
    with knockout_attention(adapter, batch, sources="eoi", targets="text"):
        spec = interventions._ACTIVE[-1]
        run(adapter, batch)
        run(adapter, batch)
        prompt = batch.input_ids.shape[1]
        assert list(spec.masks) == [(2, prompt, prompt, torch.device("cpu"))]  # all layers, both calls
        mask = spec.masks[(2, prompt, prompt, torch.device("cpu"))]
        assert spec.block(2, prompt, prompt, torch.device("cpu")) is mask
        assert mask.shape == (2, 1, prompt, prompt) and mask.dtype == torch.bool
        for row, layout in enumerate(batch.layouts):
            assert mask[row, 0].nonzero().tolist() == [[q, layout.eoi] for q in layout.text_positions]
        with torch.no_grad():
            adapter.model.generate(**batch.inputs, max_new_tokens=3, do_sample=False,
                                   pad_token_id=adapter.tokenizer.pad_token_id)
        decoding = sorted(key for key in spec.masks if key[1] == 1)
        assert decoding == [(2, 1, prompt + 1, torch.device("cpu")), (2, 1, prompt + 2, torch.device("cpu"))]
    assert interventions._ACTIVE == []


class _ElsewhereTensor(torch.Tensor):
    """A CPU tensor that reports the meta device, standing in for inputs that live on another
    GPU than the hidden states (device_map='auto'). Results of operations on it are plain tensors."""

    @property
    def device(self) -> torch.device:
        return torch.device("meta")

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))


class _IndexDeviceSpy(TorchFunctionMode):
    """Records, for every indexing / masking op written in narrowgate_utils, the device of the
    indexed tensor and of its tensor indices."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[str, torch.device, list[torch.device]]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__, torch.Tensor.masked_fill):
            caller = sys._getframe(1).f_code
            if caller.co_filename.startswith(PACKAGE_DIR):
                index = args[1] if isinstance(args[1], tuple) else (args[1],)
                devices = [i.device for i in index if isinstance(i, torch.Tensor)]
                if devices:
                    self.seen.append((caller.co_name, args[0].device, devices))
        return func(*args, **(kwargs or {}))


def test_indices_are_built_on_the_device_of_the_indexed_tensor(monkeypatch):
    """With device_map='auto' the hidden states of later layers are not on the inputs' device:
    no index may be derived from the inputs' device (the old code took ``input_ids.device``)."""
    adapter, batch = padded_batch("chameleon")
    real = tracing.model_inputs

    def inputs_elsewhere(adapter, batch):
        inputs = dict(real(adapter, batch))
        inputs["input_ids"] = inputs["input_ids"].as_subclass(_ElsewhereTensor)
        return inputs

    monkeypatch.setattr(tracing, "model_inputs", inputs_elsewhere)
    monkeypatch.setattr(interventions, "model_inputs", inputs_elsewhere)
    with _IndexDeviceSpy() as spy:
        collect_residual(adapter, batch, "eoi", layers=[1, 2])
        cross_modal_attention_profile(adapter, batch, layers=[0], normalize=False)
        for site in ("resid", "resid_in", "attn_in"):
            patch_activation(adapter, batch, batch, "eoi", layers=[1], site=site)
        with knockout_attention(adapter, batch, sources="eoi", targets="text"):
            run(adapter, batch)
    assert {name for name, _, _ in spy.seen} >= {"_gather", "cross_modal_attention_profile", "patch_activation",
                                                 "_knockout_attention_forward"}
    wrong = [(name, indexed, devices) for name, indexed, devices in spy.seen if set(devices) != {indexed}]
    assert not wrong, f"indices on another device than the tensor they index: {wrong[:3]}"
