"""Benchmark 7: fused attention (SDPA) for residual reads and knockout; the ADP step of chapter 01.

1. A random mid-size stand-in loaded with SDPA (LLaVA built from config: Llama LM hidden 1024,
   16 layers, head dim 64, MLP 4096; 256 px images in 8 px patches → 1,024 image tokens):
   ``collect_residual`` (every layer at [EOI] + last token) vs a plain SDPA forward (target
   ≤ 1.1×); a forward inside ``knockout_attention(adapter, batch, "eoi", "text")`` on the fused
   kernel vs the plain SDPA forward (post-softmax, target ≤ 1.3×; pre-softmax shown too), and
   the eager knockout kernel (the reference, what every knockout ran before) for comparison.
   Before timing, the fused knockout's logits are checked against the eager kernel's.
2. One layer's knockout attention alone at that length: SDPA, the fused kernels, the eager
   kernel, and the two-call route of the post-softmax knockout (SDPA with the blocked keys
   masked + SDPA reading the blocked mass from an indicator value column).
3. ADP homogeneity (Fig. 2 right, as chapter 01 runs it: maxk 128, clusters under 50 points
   dropped) on modality-like vectors of 4,096 dims at 2k / 4k / 8k points: the time, its
   growth exponent, and the extrapolation to 20,000 points × 33 layers (target ≤ 15 min); the
   cosine kNN step against dadapy's own (sklearn brute force), whose neighbours it must equal.
4. GPU: part 1 in bf16 on CUDA with peak memory, when a GPU is present (else "skipped").

``python benchmarks/fused.py [--quick] [--adp-full 20000]``
"""
from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Sequence

import benchlib
import numpy as np
import torch

from narrowgate_utils import interventions
from narrowgate_utils.interventions import knockout_attention
from narrowgate_utils.metrics.geometry import _cosine_knn, _dadapy, _unit_rows, adp_homogeneity
from narrowgate_utils.tracing import collect_residual, model_inputs

PROMPT = "What color is the shape?"
TARGETS = {"collect_residual": 1.1, "fused_knockout": 1.3}
#: (path, what it is) in table order; every path is compared with the plain SDPA forward
PATHS = [("collect_residual", "all-layer residuals at [EOI] + last token (nnsight)"),
         ("fused_knockout", "[EOI]→text knockout, post-softmax, fused kernel"),
         ("fused_knockout_pre", "[EOI]→text knockout, pre-softmax, fused kernel"),
         ("eager_knockout", "[EOI]→text knockout, post-softmax, eager kernel (before)")]
#: chapter 01 at paper scale: 10,000 images + 10,000 texts, every layer of a 32-layer model (+ embeddings)
PAPER_POINTS, PAPER_LAYERS, ADP_TARGET_MIN = 20_000, 33, 15.0
MAXK = 128


# ------------------------------------------------------------------------- model part
def build(args, device: str, dtype: torch.dtype):
    """``(adapter, description)``: the stand-in loaded with SDPA attention."""
    spec = benchlib.MidsizeSpec(args.hidden, args.layers, args.image_size, args.patch, head_dim=args.head_dim)
    adapter = benchlib.build_midsize(spec, device=device, dtype=dtype)
    adapter.model.set_attn_implementation("sdpa")
    return adapter, spec.describe(dtype).replace("eager attention", "SDPA attention") + f", head dim {args.head_dim}"


def knockout_forward(adapter, batch, inputs: dict, **options) -> Callable[[], object]:
    def run() -> object:
        with knockout_attention(adapter, batch, "eoi", "text", **options):
            return adapter.model(**inputs)
    return run


@torch.no_grad()
def model_paths(adapter, batch, device: str) -> dict[str, Callable[[], object]]:
    """The timed paths, after checking the fused knockout against the eager kernel."""
    inputs = model_inputs(adapter, batch)
    positions = [[layout.eoi, layout.seq_len - 1] for layout in batch.layouts]
    paths = {"sdpa_forward": lambda: adapter.model(**inputs),
             "collect_residual": lambda: collect_residual(adapter, batch, positions),
             "fused_knockout": knockout_forward(adapter, batch, inputs),
             "fused_knockout_pre": knockout_forward(adapter, batch, inputs, mode="pre_softmax"),
             "eager_knockout": knockout_forward(adapter, batch, inputs, kernel="eager")}
    fused, eager = paths["fused_knockout"]().logits.float(), paths["eager_knockout"]().logits.float()
    tolerance = 1e-4 if adapter.model.dtype == torch.float32 else 3e-2
    if (fused - eager).abs().max() > tolerance * eager.abs().max():
        raise RuntimeError("The fused and the eager knockout disagree: the benchmark would compare different things.")
    return {name: benchlib.synchronized(fn, device) for name, fn in paths.items()}


def peak_memory(fn: Callable[[], object]) -> int:
    """Peak CUDA memory (bytes) of one call of ``fn`` above what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def model_rows(timings: dict[str, benchlib.Timing], memory: dict[str, int] | None = None) -> list[list[str]]:
    """One row per path: its time and the ratio to the plain SDPA forward (CPU time on CPU)."""
    base = timings["sdpa_forward"]
    rows = []
    for name, what in PATHS:
        timing = timings[name]
        ratio = timing.cpu / base.cpu if memory is None else timing.wall / base.wall
        row = [f"`{name}`", what, benchlib.seconds(base.wall), benchlib.seconds(timing.wall),
               benchlib.ratio_text(timing.wall / base.wall), benchlib.ratio_text(ratio, TARGETS.get(name))]
        if memory is not None:
            row += [f"{memory['sdpa_forward'] / 2**20:,.0f} MiB", f"{memory[name] / 2**20:,.0f} MiB"]
        rows.append(row)
    return rows


def kernel_rows(adapter, batch, repeats: int) -> tuple[list[list[str]], int]:
    """One layer's attention at the prompt's length: the knockout kernels against plain SDPA."""
    module = adapter.attention(0)
    config = module.config
    rows, length = batch.input_ids.shape
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(rows, config.num_attention_heads, length, module.head_dim, generator=generator)
               for _ in range(3))
    scale = module.scaling
    sources = torch.zeros(length, dtype=torch.bool)
    sources[batch.layouts[0].eoi] = True
    targets = torch.zeros(length, dtype=torch.bool)
    targets[list(batch.layouts[0].text_positions)] = True
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    masked = causal & ~(targets[:, None] & sources[None, :])
    indicator = torch.zeros_like(v)
    indicator[..., sources, 0] = 1.0  # column 0: the blocked mass; the rest pads the value to the head dim
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def kernel(function: Callable[..., object], **options) -> Callable[[], object]:
        def run() -> object:
            with knockout_attention(adapter, batch, "eoi", "text", layers=[0], **options):
                return function(module, q, k, v, None, scaling=scale)
        return run

    candidates = {"sdpa": lambda: sdpa(q, k, v, is_causal=True, scale=scale),
                  "fused post-softmax (one call, values [V ‖ (1-s)⊙V])": kernel(interventions._fused_knockout_forward),
                  "fused pre-softmax (one masked call)": kernel(interventions._fused_knockout_forward,
                                                                mode="pre_softmax"),
                  "two calls: masked SDPA + blocked-mass SDPA": lambda: (sdpa(q, k, v, attn_mask=masked, scale=scale),
                                                                          sdpa(q, k, indicator, is_causal=True,
                                                                               scale=scale)),
                  "eager post-softmax (reference)": kernel(interventions._knockout_attention_forward)}
    timings = benchlib.compare(candidates, repeats)
    base = timings["sdpa"]
    return [[name, benchlib.seconds(t.wall), benchlib.ratio_text(t.cpu / base.cpu)] for name, t in timings.items()], length


# --------------------------------------------------------------------------- ADP part
def modality_like(n: int, dims: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` float32 vectors (half "image", half "text"): 8 clusters per modality on a 24-dim
    subspace, a modality offset and isotropic noise; and their modality labels."""
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(n // 2, dtype=int), np.ones(n - n // 2, dtype=int)]
    basis = rng.standard_normal((24, dims)).astype(np.float32) / np.sqrt(24)
    centres = 3 * rng.standard_normal((2, 8, 24))
    latent = centres[labels, rng.integers(0, 8, n)] + rng.standard_normal((n, 24))
    vectors = latent.astype(np.float32) @ basis + 0.3 * rng.standard_normal((n, dims)).astype(np.float32)
    vectors += 2 * labels[:, None].astype(np.float32) * basis[0]
    return vectors, labels


def dadapy_knn(unit: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """dadapy's own cosine kNN (sklearn brute force), what ``adp_clusters`` used before."""
    data = _dadapy().Data(coordinates=unit, maxk=k, verbose=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="There are points with neighbours at 0 distance")
        data.compute_distances(maxk=k, metric="cosine")
    return data.distances, data.dist_indices


def adp_measure(n: int, dims: int, repeats: int) -> dict[str, benchlib.Timing]:
    """Timings of ``adp_homogeneity`` and of both kNN steps at ``n`` points; checks the neighbours agree."""
    vectors, labels = modality_like(n, dims, seed=n)
    unit = _unit_rows(vectors.astype(np.float64), "vectors")
    k = min(MAXK, n - 1)
    ours, theirs = _cosine_knn(unit, np.arange(n), k), dadapy_knn(unit, k)
    if not (np.array_equal(ours[1], theirs[1]) and np.allclose(ours[0], theirs[0], rtol=0, atol=1e-12)):
        raise RuntimeError(f"At {n} points the cosine kNN differs from dadapy's: the timings compare different things.")
    return benchlib.compare({"adp_homogeneity": lambda: adp_homogeneity(vectors, labels, maxk=k),
                             "knn": lambda: _cosine_knn(unit, np.arange(n), k),
                             "knn_dadapy": lambda: dadapy_knn(unit, k)}, repeats, warmup=0)


def growth(sizes: Sequence[int], times: Sequence[float]) -> tuple[float, float]:
    """(least-squares exponent over all sizes, exponent between the two largest) of t ∝ n^α."""
    slope = float(np.polyfit(np.log(sizes), np.log(times), 1)[0])
    return slope, math.log(times[-1] / times[-2]) / math.log(sizes[-1] / sizes[-2])


def adp_row(label: str, timings: dict[str, benchlib.Timing]) -> list[str]:
    adp, knn, theirs = timings["adp_homogeneity"], timings["knn"], timings["knn_dadapy"]
    return [label, benchlib.seconds(adp.wall), benchlib.seconds(adp.cpu), benchlib.seconds(knn.wall),
            benchlib.seconds(theirs.wall), benchlib.ratio_text(theirs.cpu / knn.cpu)]


def adp_section(args) -> list[str]:
    from threadpoolctl import threadpool_limits

    _dadapy()  # its import (seconds) stays out of the timings
    with threadpool_limits(limits=args.adp_threads):
        measured = {n: adp_measure(n, args.adp_dims, args.adp_repeats) for n in args.adp_sizes}
        full = adp_measure(args.adp_full, args.adp_dims, args.adp_repeats) if args.adp_full else None
    sizes = list(measured)
    times = [measured[n]["adp_homogeneity"].wall for n in sizes]
    fitted, last = growth(sizes, times)
    per_layer = times[-1] * (PAPER_POINTS / sizes[-1]) ** last
    total_min = per_layer * PAPER_LAYERS / 60
    bound_min = times[-1] * (PAPER_POINTS / sizes[-1]) ** 2 * PAPER_LAYERS / 60
    rows = [adp_row(f"{n:,}", timings) for n, timings in measured.items()]
    if full:
        rows.append(adp_row(f"{args.adp_full:,} (measured)", full))
    met = "met" if total_min <= ADP_TARGET_MIN else "NOT met"
    lines = [
        f"### ADP homogeneity (chapter 01's analysis step), {args.adp_dims:,} dims",
        "",
        (f"Modality-like float32 vectors (`modality_like`), `adp_homogeneity(maxk={MAXK})`; {args.adp_threads} BLAS "
         f"thread(s); {args.adp_repeats} run(s) per size. `kNN`: `_cosine_knn` (float64 Gram blocks, each computed "
         "once for both its row and column block, running top-k); `dadapy kNN`: `Data.compute_distances("
         "metric='cosine')` (sklearn brute force), the path used before; both return the same neighbours "
         "(checked at every size). The target is on wall time, so it depends on what else runs on the cores."),
        "",
        benchlib.table(["points", "`adp_homogeneity` wall", "`adp_homogeneity` CPU", "kNN wall",
                        "dadapy kNN wall", "kNN speed-up (CPU)"], rows),
        "",
        (f"Growth of the wall time, t ∝ n^α: α = {fitted:.2f} (least squares), {last:.2f} between the two largest "
         f"sizes. Extrapolated with the latter to {PAPER_POINTS:,} points: {benchlib.seconds(per_layer)} per layer, "
         f"{total_min:.1f} min for {PAPER_LAYERS} layers (≤ {ADP_TARGET_MIN:g} min: {met}); with α = 2 (the Gram "
         f"matrix alone) {bound_min:.1f} min."),
    ]
    if full:
        lines.append(f"Measured at {args.adp_full:,} points: {full['adp_homogeneity'].wall * PAPER_LAYERS / 60:.1f} min "
                     f"for {PAPER_LAYERS} layers.")
    return lines


# ------------------------------------------------------------------------------ run
def cpu_section(args) -> list[str]:
    adapter, description = build(args, "cpu", torch.float32)
    batch = adapter.build_batch([s.image for s in benchlib.toy_samples(args.batch_size)], [PROMPT] * args.batch_size)
    timings = benchlib.compare(model_paths(adapter, batch, "cpu"), args.repeats)
    kernels, length = kernel_rows(adapter, batch, args.repeats)
    return [
        f"{description}; batch {args.batch_size}, {length} tokens per row; median of {args.repeats} interleaved "
        "repeats after one warm-up; targets judged on the CPU-time ratio.",
        "",
        benchlib.table(["path", "what", "SDPA forward wall", "path wall", "wall ratio", "CPU ratio (target)"],
                       model_rows(timings)),
        "",
        f"### One layer's attention ({adapter.attention(0).config.num_attention_heads} heads, {length} positions)",
        "",
        benchlib.table(["kernel", "wall", "CPU ratio to SDPA"], kernels),
    ]


def gpu_section(args) -> list[str]:
    header = ["path", "what", "SDPA forward wall", "path wall", "wall ratio", "ratio (target)", "SDPA forward peak",
              "path peak"]
    if not torch.cuda.is_available():
        print("no GPU: skipped")
        return [benchlib.table(header, [["no GPU: skipped"] + ["—"] * (len(header) - 1)])]
    adapter, description = build(args, "cuda", torch.bfloat16)
    samples = benchlib.toy_samples(args.gpu_batch_size)
    batch = adapter.build_batch([s.image for s in samples], [PROMPT] * len(samples))
    paths = model_paths(adapter, batch, "cuda")
    timings = benchlib.compare(paths, args.repeats)
    memory = {name: peak_memory(fn) for name, fn in paths.items()}
    return [f"Device: {torch.cuda.get_device_name()}; {description}; batch {args.gpu_batch_size}; ratios of wall time; "
            "peak: CUDA memory above the model during one call.", "", benchlib.table(header, model_rows(timings, memory))]


def run(args) -> str:
    lines = ["## 7. Fused attention: residual reads and knockout under SDPA; ADP at paper scale", "",
             *cpu_section(args), "", *adp_section(args), "", "### GPU", "", *gpu_section(args), "",
             benchlib.machine_info(), benchlib.CONTENTION]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchlib.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=None, help="LM hidden size (default 1024; 256 with --quick)")
    parser.add_argument("--layers", type=int, default=None, help="LM decoder layers (default 16; 4 with --quick)")
    parser.add_argument("--image-size", type=int, default=None, help="image side in px (default 256 → 1,024 tokens)")
    parser.add_argument("--patch", type=int, default=8, help="CLIP patch size (px)")
    parser.add_argument("--head-dim", type=int, default=64, help="attention head dim")
    parser.add_argument("--batch-size", type=int, default=1, help="images per CPU forward")
    parser.add_argument("--gpu-batch-size", type=int, default=8, help="images per GPU forward")
    parser.add_argument("--adp-sizes", type=int, nargs="+", default=None,
                        help="points for the ADP timings (default 2000 4000 8000; 500 1000 2000 with --quick)")
    parser.add_argument("--adp-dims", type=int, default=None, help="vector width (default 4096; 1024 with --quick)")
    parser.add_argument("--adp-repeats", type=int, default=1, help="runs per ADP size (median)")
    parser.add_argument("--adp-threads", type=int, default=2, help="BLAS threads for the ADP step (the machine's 2)")
    parser.add_argument("--adp-full", type=int, default=0, help="also time one layer at this many points (e.g. 20000)")
    parser.set_defaults(repeats=3)
    args = parser.parse_args(argv)
    args.hidden = args.hidden or (256 if args.quick else 1024)
    args.layers = args.layers or (4 if args.quick else 16)
    args.image_size = args.image_size or (128 if args.quick else 256)
    args.adp_sizes = args.adp_sizes or ([500, 1000, 2000] if args.quick else [2000, 4000, 8000])
    args.adp_dims = args.adp_dims or (1024 if args.quick else 4096)
    if len(args.adp_sizes) < 2 or sorted(args.adp_sizes) != args.adp_sizes:
        raise ValueError(f"--adp-sizes needs at least two increasing sizes, got {args.adp_sizes}.")
    benchlib.setup(args)
    return benchlib.publish("fused", run(args), args)


if __name__ == "__main__":
    sys.exit(main())
