"""Shared pieces of the benchmark scripts: models, samples, timing and the results file.

Every script imports this module (``benchmarks/`` is on ``sys.path`` when a script runs) and
writes one section of ``benchmarks/results.md`` through :func:`write_section`, atomically.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results.md"
#: sections of results.md in reading order (a section is written by the script of that name)
SECTIONS = ("extraction", "memory", "cache", "book", "gpu", "overlap_memory", "fused")
HEADER = """# narrowgate benchmarks

Written by `benchmarks/*.py` (`make bench` runs them all; see `benchmarks/README.md`).
Do not edit by hand: each script replaces its own section. Ratios compare two code paths on
the same model, in the same process, with the measurements interleaved.
"""
MIDSIZE = "midsize-llava"


# --------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class MidsizeSpec:
    """A random LLaVA-1.5-style model built from config: a Llama LM behind a small CLIP tower.

    ``image_size // patch`` squared image tokens (128 px / 8 px = 256 tokens by default);
    ``intermediate`` defaults to 4 × hidden and ``vocab`` to the word tokenizer's size.
    """

    hidden: int = 256
    layers: int = 8
    image_size: int = 128
    patch: int = 8
    intermediate: int | None = None
    head_dim: int = 32
    vocab: int | None = None

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch) ** 2

    def describe(self, dtype: torch.dtype = torch.float32) -> str:
        return (f"{MIDSIZE} (random weights; Llama LM hidden {self.hidden}, {self.layers} layers, "
                f"{self.image_tokens} image tokens; CLIP tower hidden 64, 2 layers; "
                f"{str(dtype).removeprefix('torch.')}, eager attention)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model/--hidden/--layers/--image-size/--patch``: which model a benchmark runs on."""
    parser.add_argument("--model", default=MIDSIZE,
                        help=f"'{MIDSIZE}' (random, built from config) or a model id for narrowgate's load() "
                             "(e.g. toy-native once trained)")
    defaults = MidsizeSpec()
    parser.add_argument("--hidden", type=int, default=defaults.hidden, help="midsize model: LM hidden size")
    parser.add_argument("--layers", type=int, default=defaults.layers, help="midsize model: LM decoder layers")
    parser.add_argument("--image-size", type=int, default=defaults.image_size, help="midsize model: image side (px)")
    parser.add_argument("--patch", type=int, default=defaults.patch, help="midsize model: CLIP patch size (px)")


def build_midsize(spec: MidsizeSpec, seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """The :class:`MidsizeSpec` model wrapped in narrowgate's LLaVA adapter (eval mode, eager),
    initialised directly on ``device`` and then cast to ``dtype``."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from narrowgate_utils.data.toy import toy_vocabulary_words
    from narrowgate_utils.models.llava import IMAGE_PLACEHOLDER, LlavaAdapter
    from narrowgate_utils.tiny.common import seeded_init, word_tokenizer

    if spec.image_size % spec.patch:
        raise ValueError(f"image_size {spec.image_size} must be a multiple of patch {spec.patch}.")
    if spec.hidden % spec.head_dim:
        raise ValueError(f"hidden {spec.hidden} must be a multiple of head_dim {spec.head_dim}.")
    tokenizer = word_tokenizer([IMAGE_PLACEHOLDER], extra_tokens=toy_vocabulary_words())
    vocab = tokenizer.get_vocab()
    if spec.vocab is not None and spec.vocab < len(vocab):
        raise ValueError(f"vocab {spec.vocab} is smaller than the word tokenizer's {len(vocab)} tokens.")
    heads = spec.hidden // spec.head_dim
    text = LlamaConfig(vocab_size=spec.vocab or len(vocab), hidden_size=spec.hidden,
                       intermediate_size=spec.intermediate or 4 * spec.hidden, num_hidden_layers=spec.layers,
                       num_attention_heads=heads, num_key_value_heads=heads, head_dim=spec.head_dim,
                       max_position_embeddings=spec.image_tokens + 512,
                       bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"])
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                              image_size=spec.image_size, patch_size=spec.patch, projection_dim=64)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=vocab[IMAGE_PLACEHOLDER],
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    with torch.device(device):
        model = seeded_init(LlavaForConditionalGeneration, config, seed).to(dtype)
    size = {"height": spec.image_size, "width": spec.image_size}
    processor = LlavaProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": spec.image_size},
                                                                     crop_size=size),
                               tokenizer=tokenizer, patch_size=spec.patch, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1)
    return LlavaAdapter(model, processor, model_id=MIDSIZE)


def load_model(args: argparse.Namespace, model_id: str | None = None):
    """``(adapter, description)`` for ``model_id`` (default ``args.model``), see :func:`add_model_arguments`."""
    model_id = model_id or args.model
    if model_id == MIDSIZE:
        spec = MidsizeSpec(args.hidden, args.layers, args.image_size, args.patch)
        return build_midsize(spec), spec.describe()
    from narrowgate_utils.models.registry import load

    adapter = load(model_id)
    n_params = sum(p.numel() for p in adapter.model.parameters())
    return adapter, f"{model_id} ({adapter.family}, {adapter.num_layers} layers, {n_params / 1e6:.1f}M parameters)"


def toy_samples(n: int, seed: int = 0):
    """``n`` toy-world test samples (32 px images with captions; processors resize them)."""
    from narrowgate_utils.data.toy import toy_dataset

    return toy_dataset("test", n, seed)


# -------------------------------------------------------------------------------- timing
@dataclass(frozen=True)
class Timing:
    """Medians over the repeats of wall time and process CPU time (seconds)."""

    wall: float
    cpu: float
    repeats: int


def _once(fn: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def compare(fns: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, Timing]:
    """Time several callables: ``warmup`` untimed calls each, then ``repeats`` interleaved rounds.

    Interleaving (A, B, A, B, ...) spreads the noise of a shared, busy machine over every
    candidate alike; the medians are robust to the occasional stalled round.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}.")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(_once(fn))
    return {name: Timing(statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs), repeats)
            for name, runs in samples.items()}


def ratio_text(value: float, target: float | None = None, at_least: bool = False) -> str:
    """``1.07×`` plus, with a target, whether it is met (``≤ 1.15×: met``)."""
    text = f"{value:.2f}×" if value < 100 else f"{value:,.0f}×"
    if target is None:
        return text
    met = value >= target if at_least else value <= target
    return f"{text} ({'≥' if at_least else '≤'} {target:g}×: {'met' if met else 'NOT met'})"


def seconds(value: float) -> str:
    if value >= 1:
        return f"{value:.2f} s"
    return f"{value * 1e3:.1f} ms"


# ------------------------------------------------------------------------------- results
def machine_info() -> str:
    """One line: CPU count, torch version, threads, date (for every section)."""
    return (f"Machine: {os.cpu_count()} CPUs ({platform.machine()}), torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch thread(s), Python {platform.python_version()}; "
            f"run {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}.")


CONTENTION = ("CPU time (`time.process_time()`) is reported next to wall time because the machine's cores "
              "were shared with other busy processes during the run: wall-time ratios are noisier than "
              "CPU-time ratios, and absolute times are not representative of an idle machine.")


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


_SECTION = re.compile(r"<!-- section:(\w+) -->\n(.*?)<!-- /section:\1 -->\n", re.DOTALL)


def write_section(name: str, body: str, path: Path = RESULTS) -> Path:
    """Replace section ``name`` of the results file (creating it if needed), atomically.

    Other sections are kept; sections are written in :data:`SECTIONS` order.
    """
    if name not in SECTIONS:
        raise ValueError(f"Unknown results section '{name}'; use one of {SECTIONS}.")
    from narrowgate_utils.atomic import atomic_path

    path = Path(path)
    sections = dict(_SECTION.findall(path.read_text())) if path.exists() else {}
    sections[name] = body.rstrip("\n") + "\n"
    text = HEADER + "".join(f"\n<!-- section:{key} -->\n{sections[key]}<!-- /section:{key} -->\n"
                            for key in SECTIONS if key in sections)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def publish(name: str, section: str, args: argparse.Namespace) -> int:
    """Write ``section`` into ``args.results`` (see :func:`write_section`), print it; the exit code."""
    path = write_section(name, section, args.results)
    print(section)
    print(f"wrote {path}")
    return 0


def base_parser(description: str) -> argparse.ArgumentParser:
    """Parser with the options every script shares: ``--quick``, ``--repeats``, ``--results``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a fast look")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats after one warm-up (median reported)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="Markdown file to update")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    return parser


def setup(args: argparse.Namespace) -> None:
    """Offline, single-threaded (by default), seeded."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)


def synchronized(fn: Callable[[], object], device: str) -> Callable[[], object]:
    """``fn`` followed by a CUDA synchronise, so wall time covers the kernels."""
    def call() -> object:
        result = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return result
    return call
