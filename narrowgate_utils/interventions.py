"""Causal interventions: attention knockout (paper Sec. 4.3) and activation patching (Sec. 4.4).

* :func:`knockout_attention` is a context manager around *any* forward or ``generate`` call
  (plain HF, an adapter method, or an nnsight trace opened inside it). It swaps the language
  model's attention for an implementation that blocks attention from query positions
  ``targets`` to key positions ``sources`` in the chosen layers, all heads: an eager one
  (materialised weights, the reference) or a fused one (``scaled_dot_product_attention``).
* :func:`patch_activation` writes the activation of a *source* input at a named position
  into the forward pass of a *base* input (two nnsight traces) and returns the base logits.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask
from transformers.models.llama.modeling_llama import repeat_kv

from .layout import Batch
from .models.base import Adapter
from .tracing import (PositionSpec, check_site, collect_residual, envoy_of, first_hidden_input, hidden_of, index_on,
                      model_inputs, replace_hidden_input, resolve_positions, site_module, trace, traced)

KNOCKOUT_MODES = ("post_softmax", "pre_softmax")
#: ``auto``: fused unless the model was loaded with eager attention
KNOCKOUT_KERNELS = ("auto", "eager", "fused")
#: name under which the eager knockout attention (and its eager-style mask) is registered in transformers
KNOCKOUT_IMPL = "narrowgate_knockout"
#: name of the fused knockout attention (with SDPA's boolean mask, or none where ``is_causal`` suffices)
KNOCKOUT_FUSED_IMPL = "narrowgate_knockout_fused"
#: attention extras our re-implementations do not reproduce
_UNSUPPORTED_KWARGS = ("sinks", "s_aux", "softcap", "position_bias")


# ------------------------------------------------------------------------------ knockout
@dataclass(frozen=True, eq=False)  # identity: two knockouts with equal fields are still two
class _KnockoutSpec:
    """One active knockout: which attention modules, which (query, key) pairs, how.

    The per-position vectors (``parts``) and the blocked-pair mask of the eager kernel
    (``masks``) are built once per ``(rows, q_len, k_len, device)`` and reused by every layer and
    every forward inside the knockout context, directly on the device of the attention they mask.
    """

    module_ids: frozenset[int]
    sources: torch.Tensor   # bool [rows, prompt_len]: blocked key positions
    targets: torch.Tensor   # bool [rows, prompt_len]: blocked query positions
    block_generated: bool   # queries beyond the prompt (generated tokens) are targets too
    mode: str
    parts: dict[tuple[int, int, int, torch.device], tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, compare=False)
    masks: dict[tuple[int, int, int, torch.device], torch.Tensor] = field(default_factory=dict, compare=False)

    def vectors(self, rows: int, q_len: int, k_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Bool (targets ``[rows, q_len]``, sources ``[rows, k_len]``); queries are the last ``q_len``
        of ``k_len`` positions (KV cache)."""
        n_rows, prompt_len = self.targets.shape
        if rows != n_rows:
            raise ValueError(f"The knockout was set up for a batch of {n_rows} rows but the model ran {rows} rows; "
                             "run the forward/generate on the same batch (no beam search or extra rows).")
        key = (rows, q_len, k_len, torch.device(device))
        if key not in self.parts:
            query_pos = torch.arange(k_len - q_len, k_len)
            in_prompt = query_pos < prompt_len
            targets = torch.full((rows, q_len), self.block_generated, dtype=torch.bool)
            targets[:, in_prompt] = self.targets[:, query_pos[in_prompt]]
            sources = torch.zeros(rows, k_len, dtype=torch.bool)
            width = min(k_len, prompt_len)
            sources[:, :width] = self.sources[:, :width]
            self.parts[key] = (targets.to(device), sources.to(device))
        return self.parts[key]

    def block(self, rows: int, q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
        """Bool ``[rows, 1, q_len, k_len]``: the blocked (query, key) pairs, targets × sources."""
        key = (rows, q_len, k_len, torch.device(device))
        if key not in self.masks:
            targets, sources = self.vectors(rows, q_len, k_len, device)
            self.masks[key] = targets[:, None, :, None] & sources[:, None, None, :]
        return self.masks[key]


def check_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`KNOCKOUT_MODES`, else a ValueError naming them."""
    if mode not in KNOCKOUT_MODES:
        raise ValueError(f"Unknown knockout mode '{mode}'; use one of {KNOCKOUT_MODES}.")
    return mode


def check_kernel(kernel: str) -> str:
    """``kernel`` if it is one of :data:`KNOCKOUT_KERNELS`, else a ValueError naming them."""
    if kernel not in KNOCKOUT_KERNELS:
        raise ValueError(f"Unknown knockout kernel '{kernel}'; use one of {KNOCKOUT_KERNELS}.")
    return kernel


_ACTIVE: list[_KnockoutSpec] = []
#: id(config) -> [config, original implementation, knockout implementations of the open contexts (innermost last)]
_SWAPPED: dict[int, list[Any]] = {}


def _additive_mask(attention_mask: torch.Tensor | None, scores: torch.Tensor) -> torch.Tensor | None:
    """An eager-style float mask (0 / finfo.min), whatever form the mask arrived in."""
    minimum = torch.finfo(scores.dtype).min
    if attention_mask is None:
        q_len, k_len = scores.shape[-2:]
        if q_len == 1:
            return None
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril(k_len - q_len)
        return torch.zeros(q_len, k_len, dtype=scores.dtype, device=scores.device).masked_fill(~causal, minimum)
    if attention_mask.dtype == torch.bool:
        return torch.zeros_like(attention_mask, dtype=scores.dtype).masked_fill(~attention_mask, minimum)
    return attention_mask


def _family_eager(module: torch.nn.Module) -> Callable[..., tuple[torch.Tensor, torch.Tensor]] | None:
    return getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)


def _specs_of(module: torch.nn.Module, kwargs: dict[str, Any]) -> list[_KnockoutSpec]:
    """The active knockouts of ``module``; raises on attention extras the re-implementations lack."""
    unsupported = [name for name in _UNSUPPORTED_KWARGS if kwargs.get(name) is not None]
    if unsupported:
        raise ValueError(f"Knockout attention does not implement {unsupported}; this family's attention is not plain "
                         "eager/SDPA attention.")
    return [spec for spec in _ACTIVE if id(module) in spec.module_ids]


def _knockout_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                                **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention (same operations as HF's ``eager_attention_forward``) with knockout: the reference."""
    specs = _specs_of(module, kwargs)
    family_eager = _family_eager(module)
    if not specs and family_eager is not None:
        return family_eager(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    rows, _, q_len, _ = query.shape
    k_len = key.shape[-2]
    pre = [spec.block(rows, q_len, k_len, query.device) for spec in specs if spec.mode == "pre_softmax"]
    post = [spec.block(rows, q_len, k_len, query.device) for spec in specs if spec.mode == "post_softmax"]
    key_states = repeat_kv(key, module.num_key_value_groups)
    value_states = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    mask = _additive_mask(attention_mask, attn_weights)
    if mask is not None:
        attn_weights = attn_weights + mask
    for block in pre:
        attn_weights = attn_weights.masked_fill(block, torch.finfo(attn_weights.dtype).min)
    attn_weights = torch.nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    for block in post:
        attn_weights = attn_weights.masked_fill(block, 0.0)
    attn_weights = torch.nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states)
    return attn_output.transpose(1, 2).contiguous(), attn_weights


def _fused_mask(attention_mask: torch.Tensor | None, block: torch.Tensor | None, q_len: int, k_len: int,
                device: torch.device) -> tuple[torch.Tensor | None, bool]:
    """(SDPA ``attn_mask``, ``is_causal``): the model's mask with the ``block`` pairs removed.

    SDPA's mask skip (``None``) means causal when ``q_len == k_len``, and no mask for one query;
    any other case, or a block to add, materialises the causal mask (queries are the last
    ``q_len`` of ``k_len`` positions). A bool mask is True where attention is allowed; a float
    mask is additive (the blocked scores get the most negative float, as in the eager kernel).
    """
    if attention_mask is None and (block is not None or q_len not in (1, k_len)):
        attention_mask = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)
    if block is not None:
        if attention_mask.dtype == torch.bool:
            attention_mask = attention_mask & ~block
        else:
            attention_mask = attention_mask.masked_fill(block, torch.finfo(attention_mask.dtype).min)
    return attention_mask, attention_mask is None and q_len > 1


def _post_softmax_values(value: torch.Tensor,
                         posts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Values of every target pattern side by side, and the pattern of each query.

    Pattern ``c`` (``0 <= c < 2**J`` for ``J`` post-softmax knockouts) is the set of knockouts
    whose targets include the query; its value block is ``V`` with the rows of the union of
    those knockouts' sources zeroed. Returns (``[rows, heads, k, 2**J * d]``, long ``[rows, q]``).
    """
    blocks, pattern = [], torch.zeros_like(posts[0][0], dtype=torch.long)
    for code in range(2 ** len(posts)):
        blocked = torch.zeros_like(posts[0][1])
        for bit, (_, sources) in enumerate(posts):
            if code >> bit & 1:
                blocked = blocked | sources
        blocks.append(value.masked_fill(blocked[:, None, :, None], 0.0))
    for bit, (targets, _) in enumerate(posts):
        pattern = pattern | (targets.long() << bit)
    return torch.cat(blocks, dim=-1), pattern


def _fused_knockout_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                            **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Knockout (paper Sec. 4.3) on fused attention (``scaled_dot_product_attention``); returns no weights.

    With p_qk = softmax_k(q·k_k · scaling + mask_qk) and the blocked pairs b_qk = t_q s_k
    (target query q, source key k):

    * pre-softmax: the mask also excludes the blocked pairs (mask_qk = -inf where b_qk), one SDPA call;
    * post-softmax (zeroing without renormalisation, the eager reference's
      o_q = Σ_k p_qk (1 - b_qk) v_k): for a target query o_q = Σ_k p_qk ((1 - s_k) v_k), the
      unchanged softmax over *all* keys applied to values whose source rows are zeroed. This
      equals (1 - m_q) · ô_q, with m_q = Σ_k p_qk s_k the blocked mass and ô_q the attention
      renormalised over the unblocked keys, but needs neither: one SDPA call over the values
      [V ‖ (1 - s) ⊙ V] (one block per target pattern) shares q·k and the softmax between
      target and other queries, and each query keeps its own block. Query and key are padded
      with zero columns to the value width (scores unchanged, ``scale`` passed explicitly),
      since fused backends want equal head dims; the mask keeps SDPA's causal skip where the
      model has no padding. This costs one call at twice the head dim: cheaper than the two
      calls (renormalised output + blocked mass) of the (1 - m_q) · ô_q route, independent of
      the number of blocked keys (one value column per blocked key would grow with it), and
      free of the cancellation in o_q = Σ_k p_qk v_k - Σ_{k blocked} p_qk v_k when the blocked
      keys hold most of the mass (an attention sink such as [EOI]).

    Pre- and post-softmax knockouts may be active together (the pre-softmax ones shape p_qk).
    Layers without a knockout run HF's own SDPA attention.
    """
    specs = _specs_of(module, kwargs)
    if not specs:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    rows, _, q_len, head_dim = query.shape
    k_len = key.shape[-2]
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    pre = [spec.block(rows, q_len, k_len, query.device) for spec in specs if spec.mode == "pre_softmax"]
    posts = [spec.vectors(rows, q_len, k_len, query.device) for spec in specs if spec.mode == "post_softmax"]
    block = None
    for pairs in pre:
        block = pairs if block is None else block | pairs
    mask, is_causal = _fused_mask(attention_mask, block, q_len, k_len, query.device)
    scale = head_dim ** -0.5 if scaling is None else scaling
    if not posts:
        output = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout,
                                                                  scale=scale, is_causal=is_causal)
        return output.transpose(1, 2).contiguous(), None
    values, pattern = _post_softmax_values(value, posts)
    width = values.shape[-1] - head_dim
    output = torch.nn.functional.scaled_dot_product_attention(
        torch.nn.functional.pad(query, (0, width)), torch.nn.functional.pad(key, (0, width)), values,
        attn_mask=mask, dropout_p=dropout, scale=scale, is_causal=is_causal)
    output = output.unflatten(-1, (-1, value.shape[-1]))  # [rows, heads, q, patterns, d]
    index = pattern[:, None, :, None, None].expand(*output.shape[:3], 1, output.shape[-1])
    return output.gather(3, index).squeeze(3).transpose(1, 2).contiguous(), None


AttentionInterface.register(KNOCKOUT_IMPL, _knockout_attention_forward)
AttentionInterface.register(KNOCKOUT_FUSED_IMPL, _fused_knockout_forward)
# without a mask function for each new name, transformers would build no causal mask
AttentionMaskInterface.register(KNOCKOUT_IMPL, eager_mask)
AttentionMaskInterface.register(KNOCKOUT_FUSED_IMPL, sdpa_mask)


def _position_mask(batch: Batch, spec: PositionSpec, rng: np.random.Generator | None, what: str) -> torch.Tensor:
    length = batch.input_ids.shape[1]
    try:
        resolved = resolve_positions(batch, spec, rng)
    except ValueError as error:
        raise ValueError(f"Knockout {what}: {error}") from error
    mask = torch.zeros(len(batch), length, dtype=torch.bool)
    for row, positions in enumerate(resolved):
        mask[row, positions] = True
    return mask


@contextmanager
def knockout_attention(adapter: Adapter, batch: Batch, sources: PositionSpec, targets: PositionSpec,
                       layers: Sequence[int] | None = None, mode: str = "post_softmax", *,
                       rng: np.random.Generator | None = None,
                       block_generated: bool | None = None, kernel: str = "auto") -> Iterator[None]:
    """Block attention from ``targets`` (queries) to ``sources`` (keys) in ``layers``, all heads.

    ``mode="post_softmax"`` (the authors' choice) zeroes the selected post-softmax weights
    without renormalising; ``"pre_softmax"`` sets their scores to the most negative float, so
    softmax renormalises over the remaining keys. ``sources``/``targets`` are named positions
    ("eoi", "image", "text", "last_image", "random_image:K" with ``rng``) resolved in each row
    of ``batch``, or explicit absolute positions per row. Generated tokens are text: with
    ``block_generated`` (default: True when ``targets == "text"``) every query beyond the
    prompt is a target too, during cached decoding or full recomputation alike.

    ``kernel="eager"`` runs the reference implementation (weights materialised, returned with
    ``output_attentions``); ``"fused"`` runs ``scaled_dot_product_attention`` (no weights; see
    :func:`_fused_knockout_forward`); ``"auto"`` picks eager only when the model was loaded with
    eager attention. Nested knockouts run under the innermost context's kernel.

    Usage: ``with knockout_attention(adapter, batch, "eoi", "text"): adapter.generate(batch)``.
    Works around plain HF calls and nnsight traces; ``layers=None`` means all layers.
    """
    check_mode(mode)
    check_kernel(kernel)
    adapter.require_weights("Attention knockout (a registered attention function)")
    selected = adapter.check_layers(layers)
    if not selected:
        raise ValueError("layers is empty; pass at least one layer to knock out (None means all layers).")
    spec = _KnockoutSpec(
        module_ids=frozenset(id(adapter.attention(layer)) for layer in selected),
        sources=_position_mask(batch, sources, rng, "sources"),
        targets=_position_mask(batch, targets, rng, "targets"),
        block_generated=(isinstance(targets, str) and targets == "text") if block_generated is None else bool(block_generated),
        mode=mode,
    )
    configs = {id(adapter.attention(layer).config): adapter.attention(layer).config for layer in range(adapter.num_layers)}
    entries = [_SWAPPED.setdefault(key, [config, config._attn_implementation_internal, []])
               for key, config in configs.items()]
    if kernel == "auto":
        kernel = "eager" if entries[0][1] in (None, "eager") else "fused"  # None: HF falls back to eager
    implementation = KNOCKOUT_IMPL if kernel == "eager" else KNOCKOUT_FUSED_IMPL
    for config, _, stack in entries:
        stack.append(implementation)
        config._attn_implementation_internal = implementation
    _ACTIVE.append(spec)
    try:
        yield
    finally:
        _ACTIVE.remove(spec)
        for key, (config, original, stack) in zip(configs, entries):
            stack.pop()
            config._attn_implementation_internal = stack[-1] if stack else original
            if not stack:
                del _SWAPPED[key]


# ------------------------------------------------------------------------------- patching
@torch.no_grad()
def patch_activation(adapter: Adapter, base_batch: Batch, source_batch: Batch, position: PositionSpec = "eoi",
                     layers: Sequence[int] = (), site: str = "resid", *, rng: np.random.Generator | None = None,
                     full_logits: bool = False) -> torch.Tensor:
    """Logits of the BASE input after writing the SOURCE input's activation at ``position``.

    ``site="resid"``: the residual stream x^l of the source replaces the base's at each layer
    in ``layers`` (usually one layer l; it then propagates through the residual connection).
    ``site="resid_in"``: the layer *input* x^{l-1} is replaced (the authors' Fig. 6 left / A2
    site; at l = 0 that is the embedding output), i.e. ``resid`` at l - 1 for l >= 1.
    ``site="attn_in"``: the attention-block input x_in^l (what attention reads at that
    position: its query, key and value) is replaced in every layer of ``layers`` (the paper
    uses l..L-1), while the base residual stream itself is left alone. Module inputs are
    cloned before the write and handed to the module in place of the original, positional or
    keyword: the original tensor is shared (the previous layer's output or the embeddings;
    in Chameleon-30B's swin layers the attention input *is* the residual stream).

    ``position`` is resolved separately in each batch (different lengths and padding are
    fine); row i of the base is paired with row i of the source and both must select the same
    number of positions. Returns float32 CPU logits ``[batch, vocab]`` at the last position,
    or ``[batch, seq, vocab]`` with ``full_logits=True``.
    """
    check_site(site)
    selected = sorted(set(adapter.check_layers(layers)))
    envoys = [envoy_of(adapter, site_module(adapter, l, site)) for l in selected]
    if not selected:
        raise ValueError("layers is empty; pass the layer(s) to patch, e.g. layers=[l] or range(l, n_layers).")
    if len(base_batch) != len(source_batch):
        raise ValueError(f"Base batch has {len(base_batch)} rows but source batch has {len(source_batch)}; "
                         "patching pairs row i of the base with row i of the source.")
    base_positions = resolve_positions(base_batch, position, rng)
    source_positions = resolve_positions(source_batch, position, rng)
    for row, (base_row, source_row) in enumerate(zip(base_positions, source_positions)):
        if len(base_row) != len(source_row):
            raise ValueError(f"Row {row}: position '{position}' selects {len(base_row)} base positions but "
                             f"{len(source_row)} source positions; they must match one to one.")
    # activations of the SOURCE input, [n_layers, batch, n_pos, d]
    source_values = collect_residual(adapter, source_batch, source_positions, selected, site)
    inputs = model_inputs(adapter, base_batch)
    root = traced(adapter)
    logits: list[torch.Tensor] = []
    with trace(adapter, inputs):
        for k, envoy in enumerate(envoys):
            if site == "resid":  # the layer's own fresh output tensor: written in place
                hidden = hidden_of(envoy.output)
            else:
                module_inputs = envoy.inputs
                hidden = first_hidden_input(module_inputs).clone()
            rows, index = index_on(hidden, base_positions)
            hidden[rows, index] = source_values[k].to(device=hidden.device, dtype=hidden.dtype)
            if site != "resid":
                envoy.inputs = replace_hidden_input(module_inputs, hidden)
        output_logits = root.output.logits
        logits.append((output_logits if full_logits else output_logits[:, -1]).detach().to(torch.float32).cpu())
    return logits[0]


__all__ = ["KNOCKOUT_FUSED_IMPL", "KNOCKOUT_IMPL", "KNOCKOUT_KERNELS", "KNOCKOUT_MODES", "check_kernel", "check_mode",
           "knockout_attention", "patch_activation"]
