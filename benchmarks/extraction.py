"""Benchmark 1: cost of nnsight extraction and of the attention knockout vs plain HF forwards.

* ``collect_residual`` of every layer at [EOI] + the last token vs one HF forward with
  ``output_hidden_states=True`` indexed at the same positions (target ≤ 1.15×);
* a forward inside ``knockout_attention(adapter, batch, "eoi", "text")`` vs a plain eager
  forward (target ≤ 1.2×);
* (informational) ``cross_modal_attention_profile`` (eq. 2, reduced inside the trace) vs a
  forward with ``output_attentions=True``.

Runs on the mid-size random model and, once it is trained, on ``toy-native`` (``--model``
takes a comma-separated list instead).

``python benchmarks/extraction.py [--quick] [--profile] [--model midsize-llava,toy-native]``
"""
from __future__ import annotations

import cProfile
import io
import pstats
import sys
from collections.abc import Callable, Sequence

import benchlib
import torch

from narrowgate_utils.interventions import knockout_attention
from narrowgate_utils.tracing import (
    collect_residual,
    cross_modal_attention_profile,
    model_inputs,
)

TARGETS = {"extraction": 1.15, "knockout": 1.2}
#: (what, baseline path, narrowgate path, target key)
PAIRS = [("all-layer residuals at [EOI] + last token", "hf_hidden_states", "collect_residual", "extraction"),
         ("forward with [EOI]→text knockout, all layers", "hf_forward", "knockout_forward", "knockout"),
         ("cross-modal attention profile (eq. 2)", "hf_output_attentions", "attention_profile", None)]
PROMPT = "What color is the shape?"


def eoi_and_last(batch) -> list[list[int]]:
    """[EOI] and the last token of every row, as explicit positions."""
    return [[layout.eoi, layout.seq_len - 1] for layout in batch.layouts]


def plain_hidden_states(model: torch.nn.Module, inputs: dict, positions: list[list[int]]) -> torch.Tensor:
    """``output_hidden_states`` of one HF forward at ``positions``: [L, batch, n_pos, d] float32.

    Entry ``l + 1`` of HF's tuple is the output of layer ``l`` (the last one after the final norm).
    """
    hidden = model(**inputs, output_hidden_states=True).hidden_states[1:]
    index = torch.tensor(positions, dtype=torch.long)
    rows = torch.arange(index.shape[0])[:, None]
    return torch.stack([h[rows, index].to(torch.float32) for h in hidden])


def profile_top(fn: Callable[[], object], limit: int = 12) -> str:
    """cProfile of one call of ``fn``: the functions with the most own time."""
    profiler = cProfile.Profile()
    profiler.enable()
    fn()
    profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(limit)
    return stream.getvalue()


@torch.no_grad()
def measure(args, model_id: str) -> tuple[list[list[str]], str, list[str]]:
    """Table rows for one model, its description, and the paths that missed their target."""
    adapter, description = benchlib.load_model(args, model_id)
    samples = benchlib.toy_samples(args.batch_size)
    batch = adapter.build_batch([s.image for s in samples], [PROMPT] * len(samples))
    inputs = model_inputs(adapter, batch)
    model = adapter.model
    positions = eoi_and_last(batch)

    # the two paths must agree before their speed means anything (last layer: HF applies the final norm)
    traced = collect_residual(adapter, batch, positions)
    plain = plain_hidden_states(model, inputs, positions)
    if not torch.allclose(traced[:-1], plain[:-1], atol=1e-4, rtol=1e-4):
        raise RuntimeError("collect_residual and output_hidden_states disagree: the benchmark compares different things.")

    candidates: dict[str, Callable[[], object]] = {
        "hf_hidden_states": lambda: plain_hidden_states(model, inputs, positions),
        "collect_residual": lambda: collect_residual(adapter, batch, positions),
        "hf_forward": lambda: model(**inputs),
        "knockout_forward": lambda: _knockout_forward(adapter, batch, inputs),
        "hf_output_attentions": lambda: model(**inputs, output_attentions=True),
        "attention_profile": lambda: cross_modal_attention_profile(adapter, batch),
    }
    timings = benchlib.compare(candidates, args.repeats)
    rows = []
    missed: list[str] = []
    for label, base, ours, target_key in PAIRS:
        target = TARGETS.get(target_key) if target_key else None
        wall_ratio = timings[ours].wall / timings[base].wall
        cpu_ratio = timings[ours].cpu / timings[base].cpu
        if target is not None and cpu_ratio > target:
            missed.append(ours)
        rows.append([f"`{model_id}`", label, f"`{base}`", f"`{ours}`", benchlib.seconds(timings[base].wall),
                     benchlib.seconds(timings[ours].wall), benchlib.ratio_text(wall_ratio),
                     benchlib.seconds(timings[base].cpu), benchlib.seconds(timings[ours].cpu),
                     benchlib.ratio_text(cpu_ratio, target)])
    if missed or args.profile:
        for name in missed or ["collect_residual", "knockout_forward"]:
            print(f"--- cProfile of {name} on {model_id} ---\n{profile_top(candidates[name])}")
    description += f"; {batch.input_ids.shape[1]} tokens per row"
    return rows, description, [f"{ours} on {model_id}" for ours in missed]


def run(args) -> str:
    """Time the three comparisons on every model; returns the Markdown section."""
    rows: list[list[str]] = []
    descriptions: list[str] = []
    missed: list[str] = []
    for model_id in args.models:
        model_rows, description, model_missed = measure(args, model_id)
        rows += model_rows
        descriptions.append(f"- {description}")
        missed += model_missed
    lines = [
        "## 1. Extraction and knockout overhead",
        "",
        (f"Batch of {args.batch_size} toy-world images with the prompt \"{PROMPT}\", no gradients; median of "
         f"{args.repeats} interleaved repeats after one warm-up. Targets are judged on the CPU-time ratio. Models:"),
        "",
        *descriptions,
        "",
        benchlib.table(["model", "what", "baseline", "narrowgate", "baseline wall", "narrowgate wall", "wall ratio",
                        "baseline CPU", "narrowgate CPU", "CPU ratio (target)"], rows),
        "",
        ("`hf_hidden_states`: one forward with `output_hidden_states=True`, then the same positions indexed; "
         "`collect_residual`: nnsight trace keeping only those positions (stops after the last layer). "
         "`knockout_forward`: the same HF forward inside `knockout_attention(adapter, batch, 'eoi', 'text')` "
         "(post-softmax). `attention_profile`: `cross_modal_attention_profile`, reduced inside the trace."),
        "",
        f"Targets missed: {', '.join(missed) or 'none'}" + (" (cProfile printed to stdout)." if missed else "."),
        "",
        benchlib.machine_info(),
        benchlib.CONTENTION,
    ]
    return "\n".join(lines)


def _knockout_forward(adapter, batch, inputs: dict) -> object:
    with knockout_attention(adapter, batch, "eoi", "text"):
        return adapter.model(**inputs)


def default_models() -> list[str]:
    """The mid-size random model, plus the native toy model once it is trained (small: overhead-bound)."""
    from narrowgate_utils.toy.registry import is_trained

    return [benchlib.MIDSIZE] + (["toy-native"] if is_trained("toy-native") else [])


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchlib.base_parser(__doc__.splitlines()[0])
    benchlib.add_model_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=None, help="images per forward (default 8; 4 with --quick)")
    parser.add_argument("--profile", action="store_true", help="print cProfile of the narrowgate paths")
    parser.set_defaults(model="auto")
    args = parser.parse_args(argv)
    args.batch_size = args.batch_size or (4 if args.quick else 8)
    args.models = default_models() if args.model == "auto" else args.model.split(",")
    benchlib.setup(args)
    return benchlib.publish("extraction", run(args), args)


if __name__ == "__main__":
    sys.exit(main())
