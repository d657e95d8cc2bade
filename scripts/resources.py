"""Paper-scale resources of chapters 01–06: GPU memory, host memory and forward passes.

``python scripts/resources.py``                      the README table (``preset=paper``, A100-40GB)
``python scripts/resources.py --model config.json --image-tokens 1024``   any hub-like config
``python scripts/resources.py --check``              formulas vs measurements on a mid-size model

Notation: B batch, S tokens per sequence (image span + text), L layers, h hidden, H heads, d head
width, K key/value heads, I MLP width, V vocabulary, b bytes per element (bf16: 2). Chapters 01, 03,
04 and 05 load the language model with fused attention (sdpa: no score matrix is held; 04's
knockout runs on the fused kernel); the others
with eager attention (the registry's default), so one layer of their forward holds the scores of HF's ``eager_attention_forward``, their float32 softmax and its cast
copy at once (8 bytes per score, bf16 or float32 alike). Per GPU (weights split evenly):

- weights: b × [V h (2 untied) + L (2 h H d + 2 h K d + 3 h I + 2 h) + h + vision tower]
- forward (chapters 01–03; eq. 1 residuals, eq. 2 attention, eq. 3 vectors): the additive mask
  B S² b plus the larger of attention, B (8 H S² + 6 S h b), and MLP, B S (3 I + 3 h) b
- + logits B S V b (chapter 05: patching reads the last position of a full forward)
- + KV cache 2 L B K d (S + new) b (chapters 04/06: greedy generation)
- training (chapter 06: LoRA on the attention projections, float32 adapter + AdamW = 16 bytes per
  adapter weight, gradient checkpointing, logits only over the T answer tokens): checkpoints
  L B S h b plus the larger of the loss, B T V × 12 (float32 log-softmax, its gradient and the
  logits' gradient; 14 in bf16 with the cast copy), and one recomputed layer's backward,
  B (11 H S² + (4 h + 2 I) S b)

Host memory (``preset=paper``, activation cache on): a process baseline plus the largest
analysis step: chapters 01 and 03 read one layer of the memory-mapped cache at a time (float64
copies for the metrics, a kNN with sklearn's working memory), the other chapters hold one batch.
The coefficients were read off the transformers code and checked with ``--check`` on CPU float32
(``tests/test_resources.py``); bf16 on CUDA is not measured here.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from narrowgate_utils.presets import preset_values

GiB = 2 ** 30
#: A100-40GB; what a run may use of it: 5 % allocator fragmentation and 1 GiB CUDA context off
GPU_MEMORY = 40 * GiB
USABLE_FRACTION, CUDA_CONTEXT = 0.95, 1 * GiB
#: host RSS of a CUDA process with torch, transformers and nnsight imported and a model loaded
#: straight onto the GPU (``device_map=device``): an assumption, not measured here
PROCESS_BASELINE = 3 * GiB
#: sklearn's pairwise-distance chunks (``working_memory`` default, 1024 MiB) in every kNN
SKLEARN_WORKING = 1 * GiB
#: bytes per stored element: bf16 weights and activations on the GPU
BF16 = 2
#: bytes per LoRA weight: float32 value and gradient plus AdamW's two moments
LORA_BYTES = 16


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a checkpoint that set its memory (language model + a parameter count for the rest)."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    head_dim: int | None = None
    tied: bool = False
    #: parameters outside the language model: vision tower / VQ tokenizer and projector
    tower: int = 0
    #: image span (image tokens + separators + [SOI]/[EOI]) per square image side; None: natural size
    image_tokens: Mapping[int | None, int] = field(default_factory=dict)
    gpus: int = 1

    @property
    def width(self) -> int:
        """d, the width of one attention head."""
        return self.head_dim or self.hidden // self.heads

    @property
    def params(self) -> int:
        """Parameters: embeddings (and untied LM head), L decoder layers, final norm, tower."""
        h, d = self.hidden, self.width
        layer = 2 * h * self.heads * d + 2 * h * self.kv_heads * d + 3 * h * self.intermediate + 2 * h
        return self.vocab * h * (1 if self.tied else 2) + self.layers * layer + h + self.tower

    @property
    def lora_params(self) -> int:
        """Rank-1 LoRA parameters on q, k, v, o of every layer (times the rank)."""
        h, d = self.hidden, self.width
        return self.layers * (2 * (h + self.heads * d) + 2 * (h + self.kv_heads * d))

    def span(self, image_size: int | None) -> int:
        """Tokens of one image span at ``image_size`` (None: natural size)."""
        if image_size not in self.image_tokens:
            raise ValueError(f"{self.name}: no image-token count for image_size={image_size}; pass --image-tokens.")
        return self.image_tokens[image_size]

    @classmethod
    def from_config(cls, config: Mapping, name: str = "config", image_tokens: int = 0, gpus: int = 1) -> ModelShape:
        """From a hub ``config.json`` dict (language model at the top level or under ``text_config``);
        a ``vision_config`` counts as a ViT tower (4 h² + 2 h I per layer) plus a two-layer projector."""
        text = config.get("text_config") or config
        tower = 0
        vision = config.get("vision_config")
        if vision:
            hv, iv = vision["hidden_size"], vision["intermediate_size"]
            tower = vision["num_hidden_layers"] * (4 * hv * hv + 2 * hv * iv) + hv * text["hidden_size"] + text["hidden_size"] ** 2
        return cls(name=name, layers=text["num_hidden_layers"], hidden=text["hidden_size"],
                   heads=text["num_attention_heads"],
                   kv_heads=text.get("num_key_value_heads") or text["num_attention_heads"],
                   intermediate=text["intermediate_size"], vocab=text["vocab_size"], head_dim=text.get("head_dim"),
                   tied=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))), tower=tower,
                   image_tokens={size: image_tokens for size in (None, 256, 512)}, gpus=gpus)


#: the paper's models. Language-model sizes: the checkpoints' config.json on the Hugging Face hub
#: (facebook/chameleon-7b, facebook/chameleon-30b, mistral-community/pixtral-12b, BAAI/Emu3-Chat-hf,
#: llava-hf/llava-1.5-7b-hf; transformers 5.23's default ChameleonConfig / Emu3TextConfig are the
#: 7B / Emu3 ones). Towers: counted on the meta device from transformers 5.23's default sub-configs
#: (ChameleonVQVAE, Emu3VQVAE, PixtralVisionModel + projector, CLIP ViT-L/14-336 + projector).
#: Image spans: Chameleon 32×32 VQ codes + [SOI]/[EOI] at any size; Pixtral 16 px patches + one
#: [IMG_BREAK]/[IMG_END] per row; Emu3 8 px codes + one EOL per row + [BOI]/[EOI] and its size
#: text (256 px: min_pixels = max_pixels = 256²; natural: its 512² pixel floor); LLaVA-1.5 576
#: CLIP patches at 336 px. "Natural" is a Flickr30k photo of 500×375 px (chapter 01).
PRESETS: dict[str, ModelShape] = {
    "Chameleon-7B": ModelShape("Chameleon-7B", 32, 4096, 32, 32, 11008, 65536, tower=29_423_616,
                               image_tokens={None: 1026, 256: 1026, 512: 1026}),
    "Chameleon-30B": ModelShape("Chameleon-30B", 48, 8192, 64, 8, 22016, 65536, tower=29_423_616,
                                image_tokens={None: 1026, 256: 1026, 512: 1026}, gpus=2),
    "Pixtral-12B": ModelShape("Pixtral-12B", 40, 5120, 32, 8, 14336, 131072, head_dim=128,
                              tower=403_489_792 + 1024 * 5120 + 5120 * 5120 + 2 * 5120,
                              image_tokens={None: 32 * 24 + 24, 256: 16 * 16 + 16, 512: 32 * 32 + 32}),
    "Emu3-Chat": ModelShape("Emu3-Chat", 32, 4096, 32, 8, 14336, 184622, tower=270_740_287,
                            image_tokens={None: 74 * 55 + 55 + 7, 256: 32 * 32 + 32 + 7, 512: 64 * 64 + 64 + 7}),
    "LLaVA-1.5-7B": ModelShape("LLaVA-1.5-7B", 32, 4096, 32, 32, 11008, 32064,
                               tower=303_507_456 + 1024 * 4096 + 4096 * 4096 + 2 * 4096,
                               image_tokens={None: 576, 256: 576, 512: 576}),
}

#: text tokens around the image (BOS, chat markers, prompt): five Flickr30k captions (01), the
#: class prompt (02, 03, 05), the VQA prompt (04, 06 evaluation), a LLaVA-Instruct/VQAv2 turn (06)
TEXT_TOKENS = {"captions": 100, "class": 16, "vqa": 32, "instruction": 256}
#: answer tokens of the longest training example in a micro-batch (the loss's ``logits_to_keep``)
TARGET_TOKENS = 128
#: notebooks/04_knockout.ipynb's ablations (random is repeated ``random_repeats`` times)
KNOCKOUT_ABLATIONS = ("none", "eoi", "img_to_text", "last_image", "random")
#: chapter 06: variants × (baseline + ablations eoi, img_to_text in both knockout modes)
FINETUNE_EVAL_RUNS = 3 * (1 + 2 * 2)
#: the ten (base, target) class pairs of Sec. 4.4
PATCHING_PAIRS = 10
#: dadapy's neighbourhood size for ADP (chapter 01) and the modality-gap cross-pair cosines
ADP_MAXK = 128


@dataclass(frozen=True)
class Workload:
    """What one chapter asks of a model: the kind of pass, its batch and length, and the totals."""

    chapter: str
    kind: str  # "forward" | "logits" | "generate" | "train"
    batch: int
    seq: int
    new_tokens: int
    forwards: int
    host: int


def workload(model: ModelShape, chapter: str) -> Workload:
    """Chapter ``chapter`` (01–06) of ``model`` at the ``paper`` preset (presets.py) and the notebooks' defaults."""
    p = preset_values(chapter, "paper")
    n, batch, h, layers = p["n_samples"], p["batch_size"], model.hidden, model.layers
    batches = math.ceil(n / batch)
    if chapter == "01":  # two traces per batch (image-first, text-first); per layer: float64 copies, cosines, ADP
        host = 2 * n * h * (8 + 4 + 4) + 4 * n * (n - 1) // 2 + 2 * n * ADP_MAXK * 16 + SKLEARN_WORKING
        return Workload(chapter, "forward", batch, model.span(None) + TEXT_TOKENS["captions"], 0, 2 * batches, host)
    if chapter in ("02", "03"):  # one trace per batch; 03 reads one [n, d] slice as float32 and float64
        host = batch * layers * model.span(p["image_size"]) * 8 if chapter == "02" else \
            n * h * (4 + 8) + n * (p["k"] + 1) * 16 + SKLEARN_WORKING
        return Workload(chapter, "forward", batch, model.span(p["image_size"]) + TEXT_TOKENS["class"], 0, batches, host)
    if chapter == "04":  # every ablation generates max_new_tokens_vqa (20) tokens per batch; host: χ_out vectors
        runs = len(KNOCKOUT_ABLATIONS) - 1 + p["random_repeats"]
        return Workload(chapter, "generate", batch, model.span(p["image_size"]) + TEXT_TOKENS["vqa"], 20,
                        runs * batches * 20, n * h * 12)
    if chapter == "05":  # per batch two clean forwards, then per probed layer a source trace and a patched
        # forward; host: a few float32 copies of the batch's last-position logits
        couples = PATCHING_PAIRS * p["per_pair"]
        probed = math.ceil(layers / p["layer_step"])
        forwards = len(p["sites"]) * len(p["positions"]) * math.ceil(couples / batch) * (2 + 2 * probed)
        return Workload(chapter, "logits", batch, model.span(p["image_size"]) + TEXT_TOKENS["class"], 0, forwards,
                        batch * model.vocab * 4 * 6)
    if chapter == "06":  # two LoRA runs (masked, control) over both datasets, then the evaluation of chapter 04
        from narrowgate_utils.training.lora import FinetuneConfig

        config = FinetuneConfig.paper()
        micro_batches = 2 * math.ceil(2 * p["n_train"] / config.batch_size)  # forward + checkpoint recompute each
        evaluation = FINETUNE_EVAL_RUNS * batches * 20
        return Workload(chapter, "train", config.batch_size, model.span(p["image_size"]) + TEXT_TOKENS["instruction"],
                        0, 2 * micro_batches + evaluation, n * h * 12)
    raise ValueError(f"Chapter {chapter!r} has no resource model; chapters 01–06 run on real checkpoints.")


#: chapters that load the language model with fused attention (sdpa): they read no attention weights
FUSED_CHAPTERS = frozenset({"01", "03", "04", "05"})


def forward_layer(model: ModelShape, batch: int, seq: int, b: int, fused: bool = False) -> int:
    """Peak of one decoder layer of a forward (without the mask): attention or MLP. Eager attention
    holds the scores (8 bytes each, see the module docstring); fused attention (sdpa) holds no
    score matrix, only its projections, B 6 S h b (not measured by ``--check``, which runs eager)."""
    scores = 0 if fused else 8 * model.heads * seq * seq
    attention = batch * (scores + 6 * seq * model.hidden * b)
    mlp = batch * seq * (3 * model.intermediate + 3 * model.hidden) * b
    return max(attention, mlp)


def activation_peak(model: ModelShape, work: Workload, b: int = BF16, gpus: int = 1, rank: int = 1) -> int:
    """Peak activation memory (bytes) on the busiest GPU of ``gpus`` for ``work`` (see the module docstring)."""
    B, S, h = work.batch, work.seq, model.hidden
    mask = B * S * S * b
    if work.kind == "train":
        checkpoints = model.layers * B * S * h * b
        loss = (12 if b == 4 else 14) * B * min(TARGET_TOKENS, S) * model.vocab
        layer = B * (11 * model.heads * S * S + (4 * h + 2 * model.intermediate) * S * b)
        return math.ceil(checkpoints / gpus) + mask + max(loss, layer) + model.lora_params * rank * LORA_BYTES // gpus
    peak = mask + forward_layer(model, B, S, b, fused=work.chapter in FUSED_CHAPTERS)
    if work.kind == "logits":
        peak = max(peak, mask + B * S * (model.vocab + 2 * h) * b)
    if work.kind == "generate":
        cache = 2 * model.layers * B * model.kv_heads * model.width * (S + work.new_tokens) * b
        peak += math.ceil(cache / gpus) + B * S * S  # + the knockout's boolean block mask
    return peak


def gpu_budget(gpu_memory: int = GPU_MEMORY) -> int:
    return int(gpu_memory * USABLE_FRACTION) - CUDA_CONTEXT


def chapter_row(model: ModelShape, chapter: str, gpu_memory: int = GPU_MEMORY) -> dict[str, object]:
    """One table row: the chapter's peak per GPU, whether it fits, the largest batch that would."""
    from narrowgate_utils.training.lora import FinetuneConfig

    work = workload(model, chapter)
    rank = FinetuneConfig.paper().rank if work.kind == "train" else 1
    weights = model.params * BF16 / model.gpus
    peak = weights + activation_peak(model, work, gpus=model.gpus, rank=rank)
    budget = gpu_budget(gpu_memory)
    zero, one = (weights + activation_peak(model, replace(work, batch=size), gpus=model.gpus, rank=rank) for size in (0, 1))
    largest = int((budget - zero) // (one - zero)) if budget > zero else 0
    return {"model": model.name, "gpus": model.gpus, "weights": weights * model.gpus, "chapter": chapter,
            "batch": work.batch, "seq": work.seq, "peak": peak, "fits": peak <= budget, "largest": largest,
            "host": PROCESS_BASELINE + work.host, "forwards": work.forwards}


def markdown_table(models: Sequence[ModelShape], gpu_memory: int = GPU_MEMORY) -> str:
    """The README's table: every model × chapter 01–06 at ``preset=paper`` on A100-40GB cards."""
    header = ["model (A100-40GB)", "weights, bf16", "chapter", "batch × tokens", "peak GPU memory per card",
              "`paper` batch fits?", "largest batch that fits", "host memory", "forward passes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in models:
        for chapter in ("01", "02", "03", "04", "05", "06"):
            r = chapter_row(model, chapter, gpu_memory)
            cards = f"{r['gpus']} cards" if r["gpus"] > 1 else "1 card"
            lines.append(f"| {model.name}, {cards} | {r['weights'] / GiB:.1f} GiB | {chapter} | {r['batch']} × {r['seq']:,} "
                         f"| {r['peak'] / GiB:.1f} GiB | {'yes' if r['fits'] else '**no**'} | {r['largest']} "
                         f"| {r['host'] / GiB:.1f} GiB | {r['forwards']:,} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- measurement
def _status(key: str) -> int:
    """A ``/proc/self/status`` figure in bytes (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}: the measurement needs Linux.")


def return_freed_blocks() -> None:
    """Make glibc return every freed block over 128 KiB to the OS (a fixed ``M_MMAP_THRESHOLD``),
    so that freed tensors leave the RSS; call it before the first allocation that is measured."""
    ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)


def peak_growth(fn: Callable[[], None]) -> int:
    """Peak RSS growth (bytes) while ``fn()`` runs: the peak counter (VmHWM) is reset through
    ``/proc/self/clear_refs`` (see :func:`return_freed_blocks`)."""
    return_freed_blocks()
    gc.collect()
    base = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    fn()
    return _status("VmHWM") - base


def stand_in(model: ModelShape, seed: int = 0):
    """A random float32 Llama model of ``model``'s sizes (eager attention, CPU), warmed up by one short forward."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=model.vocab, hidden_size=model.hidden, intermediate_size=model.intermediate,
                         num_hidden_layers=model.layers, num_attention_heads=model.heads,
                         num_key_value_heads=model.kv_heads, head_dim=model.width, max_position_embeddings=8192,
                         tie_word_embeddings=model.tied)
    config._attn_implementation = "eager"
    return_freed_blocks()
    torch.manual_seed(seed)
    net = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        net(input_ids=torch.zeros(1, 64, dtype=torch.long), use_cache=False)
    return net


def trainable(net):
    """``net`` as chapter 06 trains it: gradient checkpointing and rank-1 LoRA on q, k, v, o (peft),
    warmed up by one short step."""
    from peft import LoraConfig, get_peft_model

    net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    net.enable_input_require_grads()
    net = get_peft_model(net, LoraConfig(r=1, lora_alpha=2, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    net.train()
    train_step(net, 64)
    return net


def train_step(net, seq: int, batch: int = 1) -> None:
    """Loss and backward over random tokens as ``training.lora.target_loss`` computes them: logits only
    for the last :data:`TARGET_TOKENS` + 1 positions, summed float32 cross-entropy."""
    import torch

    ids = torch.randint(0, net.config.vocab_size, (batch, seq))
    keep = min(TARGET_TOKENS, seq - 1) + 1
    logits = net(input_ids=ids, logits_to_keep=keep, use_cache=False).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                             ids[:, seq - keep + 1:].reshape(-1), reduction="sum")
    del logits
    loss.backward()
    net.zero_grad(set_to_none=True)


def measure(net, kind: str, seq: int, batch: int = 1) -> int:
    """Peak RSS growth of one pass of ``kind`` over ``batch`` × ``seq`` random tokens: "forward"
    (decoder only, as a trace that stops after the last layer), "logits" (the full model) or
    "train" (loss and backward of a :func:`trainable` model)."""
    import torch

    if kind == "train":
        return peak_growth(lambda: train_step(net, seq, batch))
    ids = torch.randint(0, net.config.vocab_size, (batch, seq))
    body = net.model if kind == "forward" else net

    @torch.no_grad()
    def run() -> None:
        body(input_ids=ids, use_cache=False)
    return peak_growth(run)


def predicted(model: ModelShape, kind: str, seq: int, batch: int = 1) -> int:
    """:func:`activation_peak` of a float32 pass (LoRA rank 1, one device) of ``kind`` on ``model``."""
    return activation_peak(model, Workload("check", kind, batch, seq, 0, 1, 0), b=4)


#: the stand-in of ``--check`` (the issue's "hidden 1024, 16 layers"; Llama-7B's MLP ratio)
CHECK_MODEL = ModelShape("stand-in", layers=16, hidden=1024, heads=16, kv_heads=16, intermediate=2816, vocab=32000)
#: (kind, tokens, vocabulary), forward passes first; a short training sequence (the loss over
#: 128 answer tokens × 32k words dominates), then longer ones where the recomputed layer does
CHECK_CASES = (("forward", 512, 32000), ("forward", 1024, 32000), ("forward", 2048, 32000),
               ("logits", 512, 32000), ("train", 160, 32000), ("train", 768, 32000), ("train", 1536, 32000))


def check(model: ModelShape = CHECK_MODEL, cases: Sequence[tuple[str, int, int]] = CHECK_CASES) -> list[dict[str, object]]:
    """Formula vs measured peak for every case: ``{kind, seq, vocab, predicted, measured, error}``.
    One stand-in per vocabulary, made :func:`trainable` at its first training case."""
    nets: dict[int, object] = {}
    rows = []
    for kind, seq, vocab in cases:
        shape = replace(model, vocab=vocab)
        net = nets.get(vocab) or stand_in(shape)
        if kind == "train" and not hasattr(net, "peft_config"):
            net = trainable(net)
        elif kind != "train" and hasattr(net, "peft_config"):
            raise ValueError(f"Case {kind} {seq} {vocab} follows a training case of the same vocabulary: list forward passes first.")
        nets[vocab] = net
        got, want = measure(net, kind, seq), predicted(shape, kind, seq)
        rows.append({"kind": kind, "seq": seq, "vocab": vocab, "predicted": want, "measured": got,
                     "error": want / got - 1})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help=f"a preset ({', '.join(PRESETS)}) or a config.json; "
                        "repeatable (default: every preset)")
    parser.add_argument("--image-tokens", type=int, default=1024, help="image span of a config.json model")
    parser.add_argument("--gpus", type=int, default=1, help="cards for a config.json model")
    parser.add_argument("--gpu-memory", type=float, default=GPU_MEMORY / GiB, help="GiB per card (A100-40GB: 40)")
    parser.add_argument("--check", action="store_true", help="measure the formulas on a CPU stand-in instead")
    args = parser.parse_args(argv)
    if args.check:
        print("| pass | tokens | vocabulary | formula (MiB) | measured (MiB) | relative error |\n|---|---|---|---|---|---|")
        for r in check():
            print(f"| {r['kind']} | {r['seq']} | {r['vocab']:,} | {r['predicted'] / 2 ** 20:.1f} "
                  f"| {r['measured'] / 2 ** 20:.1f} | {r['error']:+.1%} |")
        return 0
    models = [PRESETS[name] if name in PRESETS else
              ModelShape.from_config(json.loads(Path(name).read_text()), Path(name).stem, args.image_tokens, args.gpus)
              for name in (args.model or list(PRESETS))]
    print(markdown_table(models, int(args.gpu_memory * GiB)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
