"""Reading activations out of a VLM with nnsight: residual stream, attention input, attention.

Every function talks to the model through an :class:`~narrowgate_utils.models.base.Adapter`
(module paths) and a :class:`~narrowgate_utils.layout.Batch` (named positions), so the code
is the same for every family. Only the selected positions leave the trace, as float32 CPU
tensors, so large models and long prompts stay cheap.

Conventions (paper Sec. 3.1):

* ``site="resid"``: x^l, the residual stream *output* of decoder layer ``l`` (eq. 1).
  ``include_embeddings=True`` prepends x^0, the input of layer 0 (token + image embeddings).
  HF's ``output_hidden_states`` gives L+1 entries with ``hidden_states[l + 1] == x^l`` for
  every layer except the last: its final entry is taken *after* the final norm, whereas
  ``collect_residual`` returns the raw residual of the last layer.
* ``site="resid_in"``: x^{l-1}, the residual stream *input* of decoder layer ``l`` (layer 0's
  input is the embedding output x^0), the site the authors patch in Fig. 6 (left) / A2.
  ``resid_in`` at ``l`` equals ``resid`` at ``l - 1`` for ``l >= 1``.
* ``site="attn_in"``: x_in^l, what self-attention of layer ``l`` reads (its hidden-states
  input, i.e. the output of ``input_layernorm`` in pre-norm layers). It is taken from the
  attention module's own input, whether passed positionally or by keyword.

Index tensors are built on the device of the tensor they index: with ``device_map="auto"``
later layers (and their hidden states) sit on other GPUs than the inputs.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from nnsight import NNsight

from .console import progress_bar
from .layout import Batch
from .models.base import Adapter

SITES = ("resid", "resid_in", "attn_in")
#: a named position (resolved per row by the layouts) or explicit absolute indices per row
PositionSpec = str | Sequence[Sequence[int]]

_NNSIGHT_ATTR = "_narrowgate_nnsight"


# ----------------------------------------------------------------------------- plumbing
def traced(adapter: Adapter) -> NNsight:
    """The nnsight wrapper of ``adapter.model``, built once and cached on the adapter.

    A remote adapter (``adapter.remote``) gets nnsight's ``HuggingFaceModel`` wrapper, which
    carries the checkpoint identity a remote backend needs; a local one a plain ``NNsight``.
    """
    wrapper = adapter.__dict__.get(_NNSIGHT_ATTR)
    if wrapper is None or wrapper._module is not adapter.model:
        if adapter.remote:
            from nnsight.modeling.huggingface import HuggingFaceModel
            wrapper = HuggingFaceModel(adapter.model)
        else:
            wrapper = NNsight(adapter.model)
        setattr(adapter, _NNSIGHT_ATTR, wrapper)
    return wrapper


def trace(adapter: Adapter, inputs: dict[str, torch.Tensor]) -> Any:
    """An nnsight trace of one forward over ``inputs``, without KV cache (nothing kept alive),
    executed where ``adapter.remote`` says (here, on NDIF, or nnsight's local simulation)."""
    options = {"remote": adapter.remote} if adapter.remote else {}
    return traced(adapter).trace(**inputs, use_cache=False, **options)


def envoy_of(adapter: Adapter, module: torch.nn.Module) -> Any:
    """The nnsight envoy wrapping ``module`` (a submodule of ``adapter.model``)."""
    for name, candidate in adapter.model.named_modules():
        if candidate is module:
            return traced(adapter).get(name) if name else traced(adapter)
    raise ValueError(f"Module {type(module).__name__} is not part of the model wrapped by this adapter.")


def model_inputs(adapter: Adapter, batch: Batch) -> dict[str, torch.Tensor]:
    """Batch inputs on the model's device, pixels cast to the model's dtype."""
    device = next(adapter.model.parameters()).device
    if device.type == "meta":  # remote adapter: the inputs travel with the request
        device = torch.device("cpu")
    return batch.to(device, adapter.model.dtype).inputs


def check_site(site: str) -> str:
    if site not in SITES:
        raise ValueError(f"Unknown site '{site}'; use one of {SITES} ('resid' = layer output x^l, "
                         "'resid_in' = layer input x^{l-1}, 'attn_in' = attention-block input x_in^l).")
    return site


def hidden_of(value: Any) -> torch.Tensor:
    """Hidden states from a decoder layer's output (Chameleon returns a tuple, others a tensor)."""
    return value[0] if isinstance(value, (tuple, list)) else value


def first_hidden_input(inputs: tuple[tuple, dict]) -> torch.Tensor:
    """The ``hidden_states`` argument of a module call, positional or keyword."""
    args, kwargs = inputs
    if args:
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    raise ValueError(f"Could not find the hidden-states input among keyword arguments {sorted(kwargs)}.")


def replace_hidden_input(inputs: tuple[tuple, dict], hidden: torch.Tensor) -> tuple[tuple, dict]:
    """``inputs`` (args, kwargs) with the ``hidden_states`` argument (see :func:`first_hidden_input`) swapped."""
    args, kwargs = inputs
    if args:
        return (hidden, *args[1:]), kwargs
    if "hidden_states" in kwargs:
        return args, {**kwargs, "hidden_states": hidden}
    raise ValueError(f"Could not find the hidden-states input among keyword arguments {sorted(kwargs)}.")


def site_module(adapter: Adapter, layer: int, site: str) -> torch.nn.Module:
    """The module whose output (``resid``) or input (``resid_in``, ``attn_in``) holds ``site`` of ``layer``."""
    return adapter.attention(layer) if check_site(site) == "attn_in" else adapter.layers[layer]


def read_site(envoy: Any, site: str) -> torch.Tensor:
    """The hidden states of ``site`` from the envoy of :func:`site_module` (inside a trace)."""
    return hidden_of(envoy.output) if site == "resid" else first_hidden_input(envoy.inputs)


def resolve_positions(batch: Batch, positions: PositionSpec, rng: np.random.Generator | None = None,
                      *, seq_len: int | None = None) -> list[list[int]]:
    """Absolute positions per row: a named position resolved by each row's layout, or explicit lists.

    Positions must lie inside the sequence and outside the row's left padding.
    """
    if isinstance(positions, str):
        resolved = batch.positions(positions, rng)
    else:
        resolved = [[int(p) for p in row] for row in positions]
        if len(resolved) != len(batch):
            raise ValueError(f"Got explicit positions for {len(resolved)} rows but the batch has {len(batch)}; "
                             "give one list of positions per row.")
    length = batch.input_ids.shape[1] if seq_len is None else seq_len
    for row, (layout, row_positions) in enumerate(zip(batch.layouts, resolved)):
        if not row_positions:
            raise ValueError(f"Row {row} has no positions selected; every row needs at least one.")
        bad = [p for p in row_positions if not layout.pad_offset <= p < length]
        if bad:
            raise ValueError(f"Positions {bad} of row {row} lie outside the sequence: valid positions are "
                             f"{layout.pad_offset}..{length - 1} (left padding ends at {layout.pad_offset}).")
    return resolved


def _check_equal_counts(resolved: list[list[int]]) -> list[list[int]]:
    counts = {len(row) for row in resolved}
    if len(counts) != 1:
        raise ValueError(f"Rows select different numbers of positions ({sorted(counts)}); collect_residual stacks rows, "
                         "so choose a position that has the same count in every row (e.g. 'eoi', 'random_image:K').")
    return resolved


def index_on(tensor: torch.Tensor, positions: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, index)`` for ``tensor[rows, index]`` (one list of positions per batch row), built
    on ``tensor``'s own device, whatever device the inputs were on."""
    device = tensor.device
    return (torch.arange(len(positions), device=device)[:, None],
            torch.tensor(positions, dtype=torch.long, device=device))


def _gather(hidden: torch.Tensor, positions: list[list[int]]) -> torch.Tensor:
    rows, index = index_on(hidden, positions)
    return hidden[rows, index].detach().to(torch.float32).cpu()


@torch.no_grad()
def last_logits(adapter: Adapter, batch: Batch) -> torch.Tensor:
    """Float32 CPU logits ``[batch, vocab]`` at the last position, from an nnsight trace (so
    they can be computed remotely too)."""
    root = traced(adapter)
    logits: list[torch.Tensor] = []
    with trace(adapter, model_inputs(adapter, batch)):
        logits.append(root.output.logits[:, -1].detach().to(torch.float32).cpu())
    return logits[0]


# ---------------------------------------------------------------------------- residuals
@torch.no_grad()
def collect_residual(adapter: Adapter, batch: Batch, positions: PositionSpec, layers: Sequence[int] | None = None,
                     site: str = "resid", *, include_embeddings: bool = False,
                     rng: np.random.Generator | None = None) -> torch.Tensor:
    """Residual stream x^l (eq. 1), layer input x^{l-1} or attention input x_in^l at the selected positions.

    Returns a float32 CPU tensor ``[n_layers, batch, n_pos, d]`` (``n_layers + 1`` with
    ``include_embeddings``: x^0 comes first). Rows may select different absolute positions
    (e.g. [EOI] under left padding) but the same number of them.
    """
    check_site(site)
    if include_embeddings and site != "resid":
        raise ValueError("include_embeddings adds x^0 to the residual stream; it only applies to site='resid' "
                         "(site='resid_in' at layer 0 is x^0 already).")
    selected = sorted(set(adapter.check_layers(layers)))
    inputs = model_inputs(adapter, batch)
    resolved = _check_equal_counts(resolve_positions(batch, positions, rng))
    envoys = [envoy_of(adapter, site_module(adapter, l, site)) for l in selected]
    first_layer = envoy_of(adapter, adapter.layers[0])
    collected: list[torch.Tensor] = []
    with trace(adapter, inputs) as tracer:
        if include_embeddings:
            collected.append(_gather(first_hidden_input(first_layer.inputs), resolved))
        for envoy in envoys:
            collected.append(_gather(read_site(envoy, site), resolved))
        tracer.stop()
    return torch.stack(collected)


# ---------------------------------------------------------------------------- attention
def _attention_weights(output: Any, layer: int) -> torch.Tensor:
    weights = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
    if weights is None:
        raise ValueError(f"Layer {layer} returned no attention probabilities: load the model with "
                         "attn_implementation='eager' (sdpa/flash attention never materialise them).")
    return weights


@torch.no_grad()
def collect_attention(adapter: Adapter, batch: Batch, layers: Sequence[int] | None = None) -> torch.Tensor:
    """Post-softmax attention ``[n_layers, batch, heads, q, k]`` (float32, CPU), all heads.

    Equals ``output_attentions``; needs eager attention. Memory grows with q*k per layer:
    for long prompts prefer :func:`cross_modal_attention_profile`.
    """
    selected = sorted(set(adapter.check_layers(layers)))
    inputs = model_inputs(adapter, batch)
    envoys = [envoy_of(adapter, adapter.attention(l)) for l in selected]
    collected: list[torch.Tensor] = []
    with trace(adapter, inputs) as tracer:
        for layer, envoy in zip(selected, envoys):
            collected.append(_attention_weights(envoy.output, layer).detach().to(torch.float32).cpu())
        tracer.stop()
    return torch.stack(collected)


@torch.no_grad()
def cross_modal_attention_profile(adapter: Adapter, batch: Batch, layers: Sequence[int] | None = None,
                                  *, normalize: bool = True) -> np.ndarray:
    """Relative cross-modal attention f_j^l of every sample (paper eq. 2), ``[n_layers, batch, n_span]``.

    For each layer and sample: post-softmax attention averaged over all heads and over the
    text queries after [EOI] (``layout.text_positions``), restricted to the keys of the image
    span including [EOI] (``layout.image_span``), then rescaled to sum to 1 over the span
    (``normalize=False`` keeps the raw mean, to average over samples before normalising as
    the authors did). Reduced inside the trace, so full attention matrices are never kept.

    Variable-resolution images give rows spans of different lengths: ``n_span`` is then the
    longest, and each row is zero past the end of its own span (row j of the output is
    position ``layout.image_span[j]`` of that row).
    """
    selected = sorted(set(adapter.check_layers(layers)))
    spans = [layout.image_span for layout in batch.layouts]
    width = max(len(span) for span in spans)
    queries = [layout.text_positions for layout in batch.layouts]
    empty = [row for row, q in enumerate(queries) if not q]
    if empty:
        raise ValueError(f"Rows {empty} have no text after [EOI]; eq. 2 needs text queries (use order='image_first').")
    inputs = model_inputs(adapter, batch)
    envoys = [envoy_of(adapter, adapter.attention(l)) for l in selected]
    #: device -> one (query index, span index) per row (text lengths differ), built once per GPU
    indices: dict[torch.device, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    profiles: list[torch.Tensor] = []
    with trace(adapter, inputs) as tracer:
        for layer, envoy in zip(selected, envoys):
            weights = _attention_weights(envoy.output, layer)
            if weights.device not in indices:
                indices[weights.device] = []
                for query, span in zip(queries, spans):
                    indices[weights.device].append((torch.tensor(query, dtype=torch.long, device=weights.device),
                                                    torch.tensor(span, dtype=torch.long, device=weights.device)))
            rows = torch.zeros(len(spans), width, dtype=torch.float64)
            for row, (query_index, span_index) in enumerate(indices[weights.device]):
                share = weights[row][:, query_index][:, :, span_index].to(torch.float64).mean(dim=(0, 1))
                rows[row, :len(span_index)] = share.cpu()
            profiles.append(rows)
        tracer.stop()
    profile = torch.stack(profiles).numpy()
    if not normalize:
        return profile
    totals = profile.sum(axis=-1, keepdims=True)
    if np.any(totals <= 0):
        raise ValueError("Some text queries put zero attention on the image span; f_j^l cannot be normalised.")
    return profile / totals


# ------------------------------------------------------------------------------ batching
def iter_batches(adapter: Adapter, samples: Sequence[Any], texts: str | Sequence[str], batch_size: int,
                 order: str = "image_first", *, progress: bool = True) -> Iterator[tuple[list[Any], Batch]]:
    """Yield ``(samples_in_batch, Batch)`` over ``samples`` (``Sample`` objects or images).

    ``texts`` is one prompt text for all samples or one per sample; a tqdm bar shows progress.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
    samples = list(samples)
    text_list = [texts] * len(samples) if isinstance(texts, str) else list(texts)
    if len(text_list) != len(samples):
        raise ValueError(f"Got {len(samples)} samples but {len(text_list)} texts; pass one text or one per sample.")
    starts = range(0, len(samples), batch_size)
    for start in progress_bar(starts, f"{adapter.model_id or adapter.family}", show=progress):
        chunk = samples[start:start + batch_size]
        images = [getattr(sample, "image", sample) for sample in chunk]
        yield chunk, adapter.build_batch(images, text_list[start:start + batch_size], order)


__all__ = [
    "SITES",
    "PositionSpec",
    "collect_attention",
    "collect_residual",
    "cross_modal_attention_profile",
    "envoy_of",
    "iter_batches",
    "model_inputs",
    "resolve_positions",
    "traced",
]
