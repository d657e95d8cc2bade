"""Stand-in checkpoints: tiny random models that see images exactly like the real checkpoints.

A stand-in is a Hugging Face checkpoint directory (``save_pretrained`` of a model and its
processor) whose language model and vision tower are tiny (the :mod:`narrowgate_utils.tiny`
builders, with a 2-layer, one-head language model of hidden size 64, see :data:`LANGUAGE_MODEL`)
but whose **processor is the real checkpoint's**: the family's processor class with the
image-processor sizes, patch sizes, dynamic-resolution
rules and image-token counts of the hub checkpoint it mimics, and a model config whose vision
geometry (tower image size and patch size, VQ resolution and downsampling, any-res grids)
matches them. Natural images of any size therefore produce the real token layouts (1024
Chameleon codes, 576 LLaVA-1.5 features, Pixtral/Qwen/Emu3/LLaVA-NeXT spans that vary with
the image), so every chapter can run "at the paper's scale" on CPU without a download::

    narrowgate standin pixtral /tmp/standin-pixtral
    papermill notebooks/02_cross_modal_attention.ipynb out.ipynb -p preset paper \\
        -p model_id /tmp/standin-pixtral -p data_dir /data/imagenet -p device cpu -p dtype float32

``models.load(directory)`` loads a stand-in like any user checkpoint. The saved processor and
image-processor class names are the real checkpoints' (``PixtralProcessor``,
``Qwen2VLImageProcessor``, …), so loading takes the same path as for the hub checkpoint,
including the image-only processor fallback when torchvision is missing.

Each stand-in is one entry of :data:`STANDINS`: the tiny builder it starts from and the real
settings that replace the tiny image settings (the language model is only made shallower).
The tokenizer stays the tiny word-level one, extended by the real checkpoint's chat tokens and
BOS behaviour, single-digit numbers and the words of the task prompts and ImageNet classes
(:func:`known_texts`), so prompts are laid out like the real ones (other words become ``<unk>``). The weights are random: stand-ins test code paths, shapes and
layouts, never results.
"""
from __future__ import annotations

import argparse
import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the heavy imports wait until a stand-in is built (the CLI parser imports this module)
    from transformers import PreTrainedTokenizerFast

    from .models.base import Adapter

#: the stand-ins' language model, smaller than the tiny models' (4 layers, 4 heads): eager
#: attention over the real image spans (up to ~5k tokens) costs heads x layers x length²
LANGUAGE_MODEL = {"num_hidden_layers": 2, "num_attention_heads": 1, "num_key_value_heads": 1}
#: real tokenizers split numbers into single digits (WordPiece continuations "##d" here)
DIGITS = tuple(str(digit) for digit in range(10))
#: every pinpoint of LLaVA-OneVision's any-res search: 1..6 × 1..6 tiles of 384 px
ONEVISION_PINPOINTS = [[384 * rows, 384 * cols] for rows in range(1, 7) for cols in range(1, 7)]
#: LLaVA-NeXT (llava-v1.6-*) any-res resolutions, 336 px tiles
NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
#: Qwen2-VL / Qwen2.5-VL pixel budget of the Instruct checkpoints' preprocessor config
QWEN_MIN_PIXELS, QWEN_MAX_PIXELS = 56 * 56, 28 * 28 * 16384
#: Qwen-VL's M-RoPE split of the rotary dimensions (16, 24, 24 of 64 at head_dim 128), for one
#: 64-dim head of the stand-in
QWEN_ROPE = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [8, 12, 12]}
#: the user turn of llava-hf/llava-v1.6-mistral-7b-hf's chat template (images first, then text)
MISTRAL_LLAVA_NEXT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{ ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'][0]['text'] + '</s>' }}"
    "{% endif %}{% endfor %}"
)


@dataclass(frozen=True)
class Standin:
    """How one family's stand-in differs from its tiny model: the real checkpoint's settings."""

    #: hub id of the checkpoint whose processor and image geometry the stand-in copies
    mimics: str
    #: the module of :mod:`narrowgate_utils.tiny` whose ``build(seed, **tiny_options)`` the stand-in starts from
    tiny: str
    #: model-config attributes to set, dotted paths into sub-configs ("vision_config.image_size")
    config: dict[str, Any]
    #: keyword arguments of the family's image processor (the real ``preprocessor_config.json``)
    image_processor: dict[str, Any]
    #: keyword arguments of the family's processor besides image processor and tokenizer
    processor: dict[str, Any]
    #: class names written to the saved configs, as in the real checkpoint's files
    processor_class: str
    image_processor_type: str
    #: special tokens of the real chat format that the tiny tokenizer lacks
    chat_tokens: tuple[str, ...] = ()
    #: whether the real tokenizer prepends its BOS token itself (Llama-style tokenizers)
    adds_bos: bool = False
    chat_template: str | None = None
    #: a short account of the token count of one image, for the docs and ``narrowgate standin``
    rule: str = ""
    tiny_options: dict[str, Any] = field(default_factory=dict)


#: SigLIP-style normalisation of the Emu3 and Janus preprocessor configs
HALF_NORMALISATION = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])

STANDINS: dict[str, Standin] = {
    "chameleon": Standin(
        mimics="facebook/chameleon-7b", tiny="chameleon",
        # 512 px through 4 downsampling stages -> 32x32 codes (5 channel levels)
        config={"vq_config.resolution": 512, "vq_config.channel_multiplier": [1, 1, 1, 1, 1],
                "vq_config.num_res_blocks": 0,
                "max_position_embeddings": 4096},
        image_processor=dict(size={"shortest_edge": 512}, crop_size={"height": 512, "width": 512}),
        processor=dict(image_seq_length=1024), processor_class="ChameleonProcessor",
        image_processor_type="ChameleonImageProcessor", adds_bos=True,
        rule="resize the short side to 512, centre-crop 512x512 -> 1024 VQ codes between <racm3:break> and <eoss>"),
    "emu3": Standin(
        mimics="BAAI/Emu3-Chat-hf", tiny="emu3",
        config={"vq_config.num_res_blocks": 0, "text_config.max_position_embeddings": 9216},
        image_processor=dict(min_pixels=512 * 512, max_pixels=1024 * 1024, spatial_factor=8, **HALF_NORMALISATION),
        processor={}, processor_class="Emu3Processor", image_processor_type="Emu3ImageProcessor",
        rule="resize into 512²..1024² pixels (multiples of 8), then (h/8) rows of (w/8) codes + a row separator"),
    "llava": Standin(
        mimics="llava-hf/llava-1.5-7b-hf", tiny="llava",
        config={"vision_config.image_size": 336, "vision_config.patch_size": 14, "vision_feature_layer": -2,
                "text_config.max_position_embeddings": 4096},
        image_processor=dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}),
        processor=dict(patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1),
        processor_class="LlavaProcessor", image_processor_type="CLIPImageProcessor", adds_bos=True,
        rule="CLIP ViT-L/14 at 336 px -> 24x24 = 576 <image> features"),
    "llava_next": Standin(
        mimics="llava-hf/llava-v1.6-mistral-7b-hf", tiny="llava_next",
        config={"vision_config.image_size": 336, "vision_config.patch_size": 14, "vision_feature_layer": -2,
                "image_grid_pinpoints": NEXT_PINPOINTS, "text_config.max_position_embeddings": 32768},
        image_processor=dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                             image_grid_pinpoints=NEXT_PINPOINTS),
        processor=dict(patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1),
        processor_class="LlavaNextProcessor", image_processor_type="LlavaNextImageProcessor", adds_bos=True,
        chat_template=MISTRAL_LLAVA_NEXT_TEMPLATE,
        rule="576 base features + the unpadded any-res grid (336 px tiles) with one image_newline per row"),
    "llava_onevision": Standin(
        mimics="llava-hf/llava-onevision-qwen2-0.5b-ov-hf", tiny="llava_onevision",
        config={"vision_config.image_size": 384, "vision_config.patch_size": 14,
                "image_grid_pinpoints": ONEVISION_PINPOINTS, "text_config.max_position_embeddings": 32768},
        image_processor=dict(size={"height": 384, "width": 384}, image_grid_pinpoints=ONEVISION_PINPOINTS),
        processor=dict(num_image_tokens=729, vision_feature_select_strategy="full",
                       vision_aspect_ratio="anyres_max_9"),
        processor_class="LlavaOnevisionProcessor", image_processor_type="LlavaOnevisionImageProcessor",
        chat_tokens=("<|im_start|>", "<|im_end|>"),
        rule="729 base features (SigLIP 384/14) + the unpadded any-res grid (anyres_max_9) with newlines"),
    "pixtral": Standin(
        mimics="mistral-community/pixtral-12b", tiny="pixtral",
        config={"vision_config.image_size": 1024, "vision_config.patch_size": 16,
                "text_config.max_position_embeddings": 1024000},
        image_processor=dict(size={"longest_edge": 1024}, patch_size={"height": 16, "width": 16}),
        processor=dict(patch_size=16, image_token="[IMG]", image_break_token="[IMG_BREAK]",
                       image_end_token="[IMG_END]"),
        processor_class="PixtralProcessor", image_processor_type="PixtralImageProcessor",
        chat_tokens=("[INST]", "[/INST]"),
        rule="longest edge <= 1024, 16 px patches: rows x cols [IMG], a [IMG_BREAK] per row but the last, [IMG_END]"),
    "janus": Standin(
        mimics="deepseek-community/Janus-Pro-1B", tiny="janus",
        config={"vision_config.image_size": 384, "vision_config.patch_size": 16,
                "vision_config.num_image_tokens": 576, "text_config.max_position_embeddings": 16384},
        image_processor=dict(size={"height": 384, "width": 384}, **HALF_NORMALISATION),
        processor=dict(num_image_tokens=576, use_default_system_prompt=True),
        processor_class="JanusProcessor", image_processor_type="JanusImageProcessor", adds_bos=True,
        rule="pad to square, resize to 384 px, 16 px patches -> 576 <image_placeholder>"),
    "qwen2_vl": Standin(
        mimics="Qwen/Qwen2-VL-7B-Instruct", tiny="qwen2_vl",
        config={"vision_config.patch_size": 14, "text_config.max_position_embeddings": 32768,
                "text_config.rope_parameters": QWEN_ROPE},
        image_processor=dict(min_pixels=QWEN_MIN_PIXELS, max_pixels=QWEN_MAX_PIXELS, patch_size=14, merge_size=2,
                             temporal_patch_size=2),
        processor={}, processor_class="Qwen2VLProcessor", image_processor_type="Qwen2VLImageProcessor",
        chat_tokens=("<|im_start|>", "<|im_end|>"),
        rule="resize to multiples of 28 within 56²..28²·16384 pixels; one <|image_pad|> per 2x2 group of 14 px patches"),
    "qwen2_5_vl": Standin(
        mimics="Qwen/Qwen2.5-VL-7B-Instruct", tiny="qwen2_vl", tiny_options={"version": "2.5"},
        config={"vision_config.patch_size": 14, "vision_config.window_size": 112,
                "text_config.max_position_embeddings": 128000, "text_config.rope_parameters": QWEN_ROPE},
        image_processor=dict(min_pixels=QWEN_MIN_PIXELS, max_pixels=QWEN_MAX_PIXELS, patch_size=14, merge_size=2,
                             temporal_patch_size=2),
        processor={}, processor_class="Qwen2_5_VLProcessor", image_processor_type="Qwen2VLImageProcessor",
        chat_tokens=("<|im_start|>", "<|im_end|>"),
        rule="as Qwen2-VL (the vision tower adds 112 px window attention)"),
    "idefics3": Standin(
        mimics="HuggingFaceTB/SmolVLM-Instruct", tiny="idefics3",
        # SigLIP 384/14 (27x27 patches) pixel-shuffled 3x3 -> 81 features per tile; SmolLM2's 16k context
        config={"vision_config.image_size": 384, "vision_config.patch_size": 14, "scale_factor": 3,
                "text_config.max_position_embeddings": 16384},
        image_processor=dict(size={"longest_edge": 4 * 384}, max_image_size={"longest_edge": 384},
                             **HALF_NORMALISATION),
        processor=dict(image_seq_len=81), processor_class="Idefics3Processor",
        image_processor_type="Idefics3ImageProcessor", chat_tokens=("<end_of_utterance>",),
        rule="longest edge resized to 1536, cut into rows x cols tiles of 384 px + a 384 px global view, 81 <image> "
             "each; a newline token per row of tiles"),
}
STANDIN_NAMES = tuple(STANDINS)


def standin_spec(name: str) -> Standin:
    """The :class:`Standin` entry of ``name`` (a family, or ``qwen2_5_vl``)."""
    if name not in STANDINS:
        raise ValueError(f"No stand-in for '{name}'. Available: {', '.join(STANDIN_NAMES)}.")
    return STANDINS[name]


def build_standin(name: str, seed: int = 0) -> Adapter:
    """The stand-in of ``name`` in memory: the tiny model rebuilt with the real image settings,
    wrapped in its adapter together with the real-size processor (eager attention, eval mode)."""
    from .models.registry import adapter_for
    from .tiny.common import seeded_init

    spec = standin_spec(name)
    tiny = importlib.import_module(f"{__package__}.tiny.{spec.tiny}").build(seed, **spec.tiny_options)
    tokenizer = real_style_tokenizer(tiny.tokenizer, spec)
    data = tiny.model.config.to_dict()
    text = data.get("text_config", data)  # Chameleon keeps its language model at the top level
    text.update(LANGUAGE_MODEL, vocab_size=len(tokenizer))
    text.pop("layer_types", None)  # one entry per layer: recomputed for the new depth
    for path, value in spec.config.items():
        _set_path(data, path, value)
    if "vocabulary_map" in data:  # Chameleon / Emu3 map token names to ids
        data["vocabulary_map"] = tokenizer.get_vocab()
    config = type(tiny.model.config).from_dict(data)
    model = seeded_init(type(tiny.model), config, seed)
    image_processor = type(tiny.processor.image_processor)(**spec.image_processor)
    template = {} if spec.chat_template is None else {"chat_template": spec.chat_template}
    processor = type(tiny.processor)(image_processor=image_processor, tokenizer=tokenizer, **template, **spec.processor)
    return adapter_for(model, processor, model_id=f"standin-{name}")


def real_style_tokenizer(tokenizer: PreTrainedTokenizerFast, spec: Standin) -> PreTrainedTokenizerFast:
    """The tiny word-level ``tokenizer`` (changed in place) with the real tokenizers' traits that
    shape layouts: numbers split into single digits (Emu3 spells its code grid ``60*80``), the
    chat format's special tokens, and BOS added by the tokenizer or not. The words of
    :func:`known_texts` join the vocabulary, so task prompts and class words are real tokens
    (the patching switch rate needs distinct class tokens)."""
    from tokenizers import decoders, models

    backend = tokenizer.backend_tokenizer
    vocab = backend.get_vocab(with_added_tokens=True)
    words = [word for text in known_texts() for word, _ in backend.pre_tokenizer.pre_tokenize_str(text)]
    for piece in [*words, *DIGITS, *(f"##{digit}" for digit in DIGITS)]:
        vocab.setdefault(piece, len(vocab))
    # WordPiece over a word vocabulary: known words stay whole, "60" becomes "6" "##0"
    backend.model = models.WordPiece(vocab=vocab, unk_token=tokenizer.unk_token)
    backend.decoder = decoders.WordPiece()
    missing = [token for token in spec.chat_tokens if token not in vocab]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    tokenizer.add_bos_token = spec.adds_bos
    return tokenizer


def known_texts() -> list[str]:
    """Texts whose words every stand-in tokenizer knows: the task prompts, every adapter's chat
    format, Janus' system prompt, and the ImageNet class names and patching class words."""
    from transformers.models.janus.processing_janus import DEFAULT_SYSTEM_PROMPT

    from .data.imagenet import display_name, imagenet_classes
    from .experiments.steering import IMAGENET_CLASS_WORDS
    from .models.base import CAPTION_PROMPT, CLASS_PROMPTS, VQA_INSTRUCTIONS, VQA_PROMPT
    from .models.registry import SUPPORTED_FAMILIES, adapter_class

    classes = [display_name(name) for class_set in (None, "patching") for name in imagenet_classes(class_set)]
    chats = [adapter_class(family).chat_template for family in SUPPORTED_FAMILIES]
    return [VQA_PROMPT, VQA_INSTRUCTIONS, CAPTION_PROMPT, *CLASS_PROMPTS.values(), *chats, DEFAULT_SYSTEM_PROMPT,
            *classes, *IMAGENET_CLASS_WORDS.values()]


def _set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``data[a][b]... = value`` for the dotted ``path`` "a.b...", which must exist."""
    *parents, key = path.split(".")
    target = data
    for parent in parents:
        target = target.get(parent)
        if not isinstance(target, dict):
            raise ValueError(f"Stand-in setting '{path}': the config has no sub-config '{parent}'.")
    if key not in target:
        raise ValueError(f"Stand-in setting '{path}': the config has no field '{key}'.")
    target[key] = value


def write_standin(name: str, directory: str | Path, seed: int = 0) -> Path:
    """Save the stand-in of ``name`` as a checkpoint directory that ``models.load`` reads.

    The model is saved as safetensors; the processor files carry the real checkpoint's class
    names. Returns ``directory``.
    """
    spec = standin_spec(name)
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise ValueError(f"Cannot write the {name} stand-in to {target}: it exists and is not a folder.")
    adapter = build_standin(name, seed)
    adapter.model.save_pretrained(target)
    adapter.processor.save_pretrained(target)
    _rename_classes(target, spec)
    return target


def _rename_classes(directory: Path, spec: Standin) -> None:
    """Write the real checkpoint's processor / image-processor class names into the saved JSON
    files (the stand-in may use the PIL or image-only variants of those classes)."""
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        path = directory / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        if "processor_class" in data:
            data["processor_class"] = spec.processor_class
        image_config = data.get("image_processor", data)
        if "image_processor_type" in image_config:
            image_config["image_processor_type"] = spec.image_processor_type
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def add_standin_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``narrowgate standin NAME DIR`` (see :mod:`narrowgate_utils.cli`)."""
    parser = subparsers.add_parser("standin", help="write a tiny random checkpoint with a family's real processor",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=STANDIN_NAMES, help="model family (qwen2_5_vl: the Qwen2.5-VL variant)")
    parser.add_argument("directory", type=Path, help="checkpoint folder to write (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default 0)")
    parser.set_defaults(handler=_standin_command)


def _standin_command(args: argparse.Namespace) -> int:
    spec = standin_spec(args.name)
    target = write_standin(args.name, args.directory, args.seed)
    print(f"{args.name} stand-in (processor of {spec.mimics}) written to {target}\n  one image: {spec.rule}")
    return 0


__all__ = ["STANDINS", "STANDIN_NAMES", "Standin", "build_standin", "standin_spec", "write_standin"]
