"""Benchmark 5 (GPU): extraction and knockout at 7B width, extrapolated to the full depth.

A random LLaVA-1.5-style model with Llama-7B dimensions (hidden 4096, MLP 11008, 32 heads,
vocab 32000, 576 image tokens, bf16, eager attention) is built with 2 and with 4 decoder
layers. Per-layer cost = (t(4) − t(2)) / 2; a 32-layer forward is estimated as
t(2) + 30 × per-layer. Achieved TFLOP/s compare the per-layer time with the FLOP-bound
estimate 2 × layer parameters × tokens (attention-score FLOPs, a few percent at this
length, are left out), and with the card's dense bf16 peak where it is known.

Without CUDA it writes "no GPU: skipped". ``--device cpu`` runs the same measurement on the
CPU (only useful at small sizes, e.g. to check the script).

``python benchmarks/gpu.py [--quick] [--peak-tflops 989]``
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

import benchlib
import torch

from narrowgate_utils.interventions import knockout_attention
from narrowgate_utils.tracing import collect_residual, model_inputs

PROMPT = "What color is the shape?"
#: dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by substring of the device name
PEAK_BF16 = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 70.0}
#: what each narrowgate path is compared with
BASELINES = {"collect_residual": "hidden_states", "knockout": "forward"}
LLAMA_7B = {"hidden": 4096, "intermediate": 11008, "head_dim": 128, "vocab": 32000, "image_size": 336, "patch": 14}


def layer_parameters(spec: benchlib.MidsizeSpec) -> int:
    """Weights of one Llama decoder layer: q, k, v, o (full heads) + gate, up, down (norms ignored)."""
    return 4 * spec.hidden * spec.hidden + 3 * spec.hidden * (spec.intermediate or 4 * spec.hidden)


@torch.no_grad()
def time_depth(spec: benchlib.MidsizeSpec, args) -> tuple[dict[str, benchlib.Timing], int]:
    """Timings of the three paths on a ``spec`` model; also the number of tokens per forward."""
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    adapter = benchlib.build_midsize(spec, device=args.device, dtype=dtype)
    samples = benchlib.toy_samples(args.batch_size)
    batch = adapter.build_batch([s.image for s in samples], [PROMPT] * len(samples))
    inputs = model_inputs(adapter, batch)
    positions = [[layout.eoi, layout.seq_len - 1] for layout in batch.layouts]

    def knockout() -> object:
        with knockout_attention(adapter, batch, "eoi", "text"):
            return adapter.model(**inputs)

    candidates = {"forward": lambda: adapter.model(**inputs),
                  "hidden_states": lambda: adapter.model(**inputs, output_hidden_states=True),
                  "collect_residual": lambda: collect_residual(adapter, batch, positions),
                  "knockout": knockout}
    timings = benchlib.compare({k: benchlib.synchronized(v, args.device) for k, v in candidates.items()}, args.repeats)
    return timings, int(batch.input_ids.numel())


def run(args) -> str:
    header = ["path", f"t({args.depths[0]} layers)", f"t({args.depths[1]} layers)", "per layer",
              f"est. {args.full_layers}-layer forward", "vs baseline", "achieved TFLOP/s (per layer)", "% of peak"]
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no GPU: skipped")
        return "\n".join(["## 5. GPU: 7B-width extraction and knockout", "",
                          benchlib.table(header, [["no GPU: skipped"] + ["—"] * (len(header) - 1)]), "",
                          benchlib.machine_info()])
    dims = {key: getattr(args, key) for key in LLAMA_7B}
    small, large = (benchlib.MidsizeSpec(layers=n, **dims) for n in args.depths)
    t_small, tokens = time_depth(small, args)
    if args.device == "cuda":
        torch.cuda.empty_cache()  # the first model is gone; release its blocks before the second
    t_large, _ = time_depth(large, args)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16.items() if k in name), None)
    flop_per_layer = 2 * layer_parameters(small) * tokens
    extra_layers = args.full_layers - args.depths[0]
    per_layer = {path: (t_large[path].wall - t_small[path].wall) / (args.depths[1] - args.depths[0])
                 for path in t_small}
    full = {path: t_small[path].wall + extra_layers * per_layer[path] for path in t_small}
    rows = []
    for path in t_small:
        tflops = flop_per_layer / per_layer[path] / 1e12 if per_layer[path] > 0 else float("nan")
        baseline = BASELINES.get(path)
        rows.append([f"`{path}`", benchlib.seconds(t_small[path].wall), benchlib.seconds(t_large[path].wall),
                     benchlib.seconds(per_layer[path]), benchlib.seconds(full[path]),
                     f"{benchlib.ratio_text(full[path] / full[baseline])} `{baseline}`" if baseline else "—",
                     f"{tflops:.1f}", f"{100 * tflops / peak:.0f}%" if peak else "n/a"])
    bound = flop_per_layer * args.full_layers / (peak * 1e12) if peak else None
    lines = [
        "## 5. GPU: 7B-width extraction and knockout",
        "",
        (f"Device: {name}; {small.describe(torch.bfloat16 if args.device == 'cuda' else torch.float32)} at "
         f"{args.depths[0]} and {args.depths[1]} layers; batch {args.batch_size}, {tokens} tokens per forward; "
         f"median of {args.repeats} interleaved repeats after one warm-up."),
        "",
        benchlib.table(header, rows),
        "",
        f"FLOP-bound estimate: 2 × {layer_parameters(small) / 1e6:.1f}M parameters per layer × {tokens} tokens = "
        f"{flop_per_layer / 1e12:.2f} TFLOP per layer"
        + (f"; at the {peak:g} TFLOP/s bf16 peak a {args.full_layers}-layer forward takes at least "
           f"{benchlib.seconds(bound)}." if bound else " (peak unknown for this device: pass --peak-tflops)."),
        "",
        benchlib.machine_info(),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchlib.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="where to run (default cuda)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per forward (default 8; 2 with --quick)")
    parser.add_argument("--depths", type=int, nargs=2, default=(2, 4), help="two layer counts to extrapolate from")
    parser.add_argument("--full-layers", type=int, default=32, help="depth to extrapolate to (Llama-7B: 32)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the card (TFLOP/s)")
    for key, value in LLAMA_7B.items():  # Llama-7B / LLaVA-1.5 by default; smaller only to check the script
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=value, help=f"default {value}")
    args = parser.parse_args(argv)
    args.batch_size = args.batch_size or (2 if args.quick else 8)
    if args.depths[1] <= args.depths[0]:
        raise ValueError(f"--depths must be increasing, got {args.depths}.")
    benchlib.setup(args)
    return benchlib.publish("gpu", run(args), args)


if __name__ == "__main__":
    sys.exit(main())
