"""Benchmark 3: re-running an analysis from the activation cache vs from scratch.

``modality_vectors`` (the modality-gap extraction of Sec. 4.1, two traces per batch) goes
through ``cached_batches`` / ``ActivationStore``: the first call runs the forwards and stores
the arrays, a re-run with unchanged inputs only loads them (target ≥ 10× faster). The cache
lives in a temporary directory that is emptied before every from-scratch run.

``python benchmarks/cache.py [--quick]``
"""
from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import benchlib
import numpy as np

from narrowgate_utils.experiments.modality_gap import modality_vectors

TARGET = 10.0


def clear(directory: Path) -> None:
    """Remove every cache entry in ``directory``."""
    for path in directory.iterdir():
        path.unlink()


def run(args) -> str:
    adapter, description = benchlib.load_model(args)
    samples = benchlib.toy_samples(args.samples)
    layers = list(range(adapter.num_layers))
    with tempfile.TemporaryDirectory(prefix="narrowgate-bench-cache-") as tmp:
        root = Path(tmp)

        def from_scratch() -> dict[str, np.ndarray]:
            clear(root)
            return modality_vectors(adapter, samples, layers, batch_size=args.batch_size, cache_dir=str(root))

        def from_cache() -> dict[str, np.ndarray]:
            return modality_vectors(adapter, samples, layers, batch_size=args.batch_size, cache_dir=str(root))

        computed, loaded = from_scratch(), from_cache()
        if set(computed) != set(loaded) or not all(np.array_equal(computed[k], loaded[k]) for k in computed):
            raise RuntimeError("The cached arrays differ from the computed ones: the benchmark compares different things.")
        timings = benchlib.compare({"scratch": from_scratch, "cached": from_cache}, args.repeats, warmup=0)
        entry_bytes = sum(path.stat().st_size for path in root.iterdir())
    scratch, cached = timings["scratch"], timings["cached"]
    shapes = ", ".join(f"{name} {list(array.shape)}" for name, array in computed.items())
    rows = [[f"`modality_vectors`, {len(samples)} samples, all {len(layers)} layers",
             benchlib.seconds(scratch.wall), benchlib.seconds(cached.wall),
             benchlib.ratio_text(scratch.wall / cached.wall),
             benchlib.seconds(scratch.cpu), benchlib.seconds(cached.cpu),
             benchlib.ratio_text(scratch.cpu / cached.cpu, TARGET, at_least=True),
             f"{entry_bytes / 2 ** 20:.2f} MiB"]]
    lines = [
        "## 3. Re-running an analysis from the activation cache",
        "",
        (f"Model: {description}. Batches of {args.batch_size}; median of {args.repeats} interleaved repeats "
         "(each from-scratch run starts from an empty temporary cache directory, so it also pays for writing "
         "the entry: `.npz` + JSON sidecar with SHA-256). A cached run hashes the key, verifies the entry's "
         f"checksum and loads it. Arrays: {shapes}."),
        "",
        benchlib.table(["analysis", "scratch wall", "cached wall", "wall speed-up", "scratch CPU", "cached CPU",
                        "CPU speed-up (target)", "cache entry"], rows),
        "",
        benchlib.machine_info(),
        benchlib.CONTENTION,
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchlib.base_parser(__doc__.splitlines()[0])
    benchlib.add_model_arguments(parser)
    parser.add_argument("--samples", type=int, default=None, help="samples (default 64; 16 with --quick)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward")
    args = parser.parse_args(argv)
    args.samples = args.samples or (16 if args.quick else 64)
    benchlib.setup(args)
    return benchlib.publish("cache", run(args), args)


if __name__ == "__main__":
    sys.exit(main())
