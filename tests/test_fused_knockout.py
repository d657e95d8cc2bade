"""Knockout on fused attention (SDPA) against the eager reference, and residual-only chapters under SDPA."""
from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import TEXTS, images, tiny

from narrowgate_utils import interventions
from narrowgate_utils.interventions import (
    KNOCKOUT_FUSED_IMPL,
    KNOCKOUT_IMPL,
    knockout_attention,
    patch_activation,
)
from narrowgate_utils.models.chameleon import ChameleonAdapter
from narrowgate_utils.tiny import TINY_FAMILIES, build_tiny
from narrowgate_utils.tiny.common import seeded_init
from narrowgate_utils.tracing import collect_residual

#: (mode, sources): the paper's [EOI] knockout and the all-image one, in both modes
CASES = [("post_softmax", "eoi"), ("pre_softmax", "eoi"), ("post_softmax", "image"), ("pre_softmax", "image")]
_SDPA: dict[str, object] = {}


def sdpa_twin(family: str):
    """The tiny model of ``family`` (same seed, same weights) loaded with SDPA attention."""
    if family not in _SDPA:
        tiny(family)  # skips families that do not build
        adapter = build_tiny(family)
        adapter.model.set_attn_implementation("sdpa")
        _SDPA[family] = adapter
    return _SDPA[family]


def batch_of(family: str):
    adapter = tiny(family)
    return adapter.build_batch(images(family, len(TEXTS)), TEXTS)


def real_positions(batch) -> torch.Tensor:
    """Bool ``[rows, seq]``: positions after the left padding (padded queries differ by design:
    eager spreads them uniformly, SDPA returns zeros)."""
    return batch.inputs["attention_mask"].bool()


@torch.no_grad()
def knocked_logits(adapter, batch, mode: str, sources: str, **options) -> torch.Tensor:
    with knockout_attention(adapter, batch, sources, "text", mode=mode, **options):
        return adapter.model(**batch.inputs).logits


# ------------------------------------------------------------------------ hand check
def attention_inputs(rows: int = 2, heads: int = 4, kv_heads: int = 2, q_len: int = 5, k_len: int = 7, d: int = 8):
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(rows, heads, q_len, d, generator=generator)
    key = torch.randn(rows, kv_heads, k_len, d, generator=generator)
    value = torch.randn(rows, kv_heads, k_len, d, generator=generator)
    return query, key, value


class FakeAttention(torch.nn.Module):
    num_key_value_groups = 2


def run_kernels(module, spec, query, key, value, mask):
    """(eager output, eager weights, fused output) of ``module`` under the knockout ``spec``."""
    interventions._ACTIVE.append(spec)
    try:
        eager, weights = interventions._knockout_attention_forward(module, query, key, value, mask, scaling=0.3)
        fused, none = interventions._fused_knockout_forward(module, query, key, value, mask, scaling=0.3)
    finally:
        interventions._ACTIVE.remove(spec)
    assert none is None
    return eager, weights, fused


@pytest.mark.parametrize("q_len", [7, 3, 1])  # whole prompt, a chunk over a KV cache, one decoding step
def test_blocked_mass_formula_by_hand(q_len):
    """Post-softmax zeroing = (1 - blocked mass) × the output renormalised over the unblocked keys,
    with the blocked mass read from SDPA itself (an indicator value column)."""
    module = FakeAttention()
    query, key, value = attention_inputs(q_len=q_len)
    k_len = key.shape[-2]
    padding = torch.ones(2, k_len, dtype=torch.bool)
    padding[1, :2] = False  # row 1 is left-padded
    allowed = torch.ones(q_len, k_len, dtype=torch.bool).tril(k_len - q_len) & padding[:, None, None, :]
    sources = torch.zeros(2, 7, dtype=torch.bool)
    sources[0, [1, 3]], sources[1, 4] = True, True
    targets = torch.zeros(2, 7, dtype=torch.bool)
    targets[:, 5:] = True
    specs = {mode: interventions._KnockoutSpec(frozenset({id(module)}), sources, targets, False, mode)
             for mode in interventions.KNOCKOUT_MODES}
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    post, weights, fused_post = run_kernels(module, specs["post_softmax"], query, key, value, allowed)
    pre, _, fused_pre = run_kernels(module, specs["pre_softmax"], query, key, value, additive)
    real = padding[:, -q_len:]  # padded queries: eager spreads them uniformly, SDPA returns zeros
    torch.testing.assert_close(fused_post[real], post[real], rtol=0, atol=1e-6)
    torch.testing.assert_close(fused_pre[real], pre[real], rtol=0, atol=1e-6)
    # the hand check: blocked mass m from SDPA over all keys with value = 1 on the sources
    keys = interventions.repeat_kv(key, 2)
    indicator = sources[:, None, -k_len:, None].float().expand(2, 4, k_len, 1)
    mass = torch.nn.functional.scaled_dot_product_attention(query, keys, indicator, attn_mask=allowed, scale=0.3)
    block = specs["post_softmax"].block(2, q_len, k_len, torch.device("cpu"))
    scores = (query @ keys.transpose(2, 3) * 0.3).masked_fill(~allowed, float("-inf")).softmax(-1)
    torch.testing.assert_close(mass[..., 0].transpose(1, 2)[real], (scores * sources[:, None, None, :]).sum(-1)
                               .transpose(1, 2)[real])
    is_target = block.any(-1)[..., None]  # [rows, 1, q, 1]
    expected = torch.where(is_target, (1 - mass) * pre.transpose(1, 2), pre.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(post[real], expected[real], rtol=0, atol=1e-6)
    assert torch.all(weights[block.expand_as(weights)] == 0)


# ------------------------------------------------------------------ every family
@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("mode,sources", CASES)
def test_fused_knockout_equals_eager_in_one_forward(family, mode, sources):
    eager = tiny(family)
    fused = sdpa_twin(family)
    batch = batch_of(family)
    reference = knocked_logits(eager, batch, mode, sources)  # auto: eager-loaded → eager kernel
    with knockout_attention(fused, batch, sources, "text", mode=mode):  # auto: sdpa-loaded → fused kernel
        assert fused.attention(0).config._attn_implementation == KNOCKOUT_FUSED_IMPL
        with torch.no_grad():
            result = fused.model(**batch.inputs).logits
    assert fused.attention(0).config._attn_implementation == "sdpa"
    real = real_positions(batch)
    torch.testing.assert_close(result[real], reference[real], rtol=0, atol=1e-5)
    # the same model, kernel chosen by hand
    forced = knocked_logits(eager, batch, mode, sources, kernel="fused")
    torch.testing.assert_close(forced[real], reference[real], rtol=0, atol=1e-5)
    with torch.no_grad():
        plain = eager.model(**batch.inputs).logits
    assert (plain[real] - reference[real]).abs().max() > 1e-4  # the knockout did something


@torch.no_grad()
def greedy(adapter, batch, mode: str, kernel: str, steps: int = 4):
    options = dict(max_new_tokens=steps, do_sample=False, return_dict_in_generate=True, output_logits=True,
                   pad_token_id=adapter.tokenizer.pad_token_id)
    with knockout_attention(adapter, batch, "eoi", "text", mode=mode, kernel=kernel):
        generated = adapter.model.generate(**batch.inputs, **options)
    return generated.sequences, torch.stack(generated.logits)


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("mode", ["post_softmax", "pre_softmax"])
def test_fused_knockout_equals_eager_in_cached_generation(family, mode):
    """One new query per step over a KV cache; the generated tokens are targets too."""
    batch = batch_of(family)
    eager_tokens, eager_logits = greedy(tiny(family), batch, mode, "eager")
    fused_tokens, fused_logits = greedy(sdpa_twin(family), batch, mode, "fused")
    assert torch.equal(fused_tokens, eager_tokens)
    torch.testing.assert_close(fused_logits, eager_logits, rtol=0, atol=1e-5)


def test_fused_knockout_on_chameleon_swin_layers():
    """Chameleon-30B's swin norm (norm after attention) under both kernels."""
    base = tiny("chameleon")
    config = copy.deepcopy(base.model.config)
    config.swin_norm = True
    adapter = ChameleonAdapter(seeded_init(type(base.model), config, 0), base.processor, model_id="tiny-swin")
    batch = batch_of("chameleon")
    real = real_positions(batch)
    for mode in interventions.KNOCKOUT_MODES:
        reference = knocked_logits(adapter, batch, mode, "eoi", kernel="eager")
        fused = knocked_logits(adapter, batch, mode, "eoi", kernel="fused")
        torch.testing.assert_close(fused[real], reference[real], rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["chameleon", "llava"])
def test_nested_knockouts_match_and_restore_the_kernel(family):
    """Two knockouts at once (2² target patterns post-softmax, or pre + post) equal the eager
    reference; leaving the inner context restores the outer one's kernel."""
    adapter, batch = tiny(family), batch_of(family)
    config = adapter.attention(0).config
    real = real_positions(batch)
    last_image = [[layout.image_positions[-1]] for layout in batch.layouts]
    early_text = [list(layout.text_positions[:2]) for layout in batch.layouts]
    for inner_mode in interventions.KNOCKOUT_MODES:
        logits = {}
        for kernel in ("eager", "fused"):
            with knockout_attention(adapter, batch, "eoi", "text", kernel=kernel):
                with knockout_attention(adapter, batch, last_image, early_text, mode=inner_mode, kernel=kernel,
                                        layers=[1, 2]):
                    with torch.no_grad():
                        logits[kernel] = adapter.model(**batch.inputs).logits
        torch.testing.assert_close(logits["fused"][real], logits["eager"][real], rtol=0, atol=1e-5)
    with knockout_attention(adapter, batch, "eoi", "text", kernel="fused"):
        with knockout_attention(adapter, batch, "image", "text", kernel="eager"):
            assert config._attn_implementation == KNOCKOUT_IMPL
        assert config._attn_implementation == KNOCKOUT_FUSED_IMPL
    assert config._attn_implementation == "eager" and interventions._SWAPPED == {}
    with pytest.raises(ValueError, match="Unknown knockout kernel"):
        with knockout_attention(adapter, batch, "eoi", "text", kernel="flash"):
            pass


def test_fused_pre_softmax_knockout_gradients_equal_eager():
    """Chapter 06 trains under the pre-softmax knockout: the fused kernel's gradients agree."""
    adapter, batch = tiny("chameleon"), batch_of("chameleon")
    weight = adapter.attention(1).q_proj.weight
    grads = {}
    for kernel in ("eager", "fused"):
        adapter.model.zero_grad()
        with knockout_attention(adapter, batch, "eoi", "text", mode="pre_softmax", kernel=kernel):
            adapter.model(**batch.inputs).logits[:, -1].logsumexp(-1).sum().backward()
        grads[kernel] = weight.grad.clone()
    adapter.model.zero_grad()
    torch.testing.assert_close(grads["fused"], grads["eager"], rtol=1e-4, atol=1e-6)


# ------------------------------------------------ residual-only chapters under SDPA
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_residuals_and_patching_under_sdpa_equal_eager(family):
    """Chapters 01/03/05 read residual streams only: SDPA gives the same vectors and patches."""
    eager, fused = tiny(family), sdpa_twin(family)
    base = batch_of(family)
    source = eager.build_batch(images(family, len(TEXTS), seed=1), TEXTS[::-1])
    torch.testing.assert_close(collect_residual(fused, base, "eoi", include_embeddings=True),
                               collect_residual(eager, base, "eoi", include_embeddings=True), rtol=0, atol=1e-5)
    for site, layers in (("resid", [1]), ("resid_in", [1]), ("attn_in", range(1, fused.num_layers))):
        torch.testing.assert_close(patch_activation(fused, base, source, "eoi", layers, site),
                                   patch_activation(eager, base, source, "eoi", layers, site), rtol=0, atol=1e-5)
