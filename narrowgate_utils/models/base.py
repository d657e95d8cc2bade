"""The adapter interface: one subclass per VLM family.

An adapter is the only code that knows a family's prompt format, special tokens and module
paths. Everything else (tracing, interventions, metrics, notebooks) talks to a model through
an :class:`Adapter` and the :class:`~narrowgate_utils.layout.TokenLayout` it produces.

**Prompts.** The task texts (the authors' VQA, captioning and class-completion prompts) are
the constants below; each family picks its variant (:attr:`Adapter.vqa_template`) and wraps
generation prompts in its checkpoint's chat format (:meth:`Adapter.chat_prompt`):

* :meth:`Adapter.task_prompt` -- the text part of a task's prompt (an explicit ``prompt``
  overrides the template);
* :meth:`Adapter.format_prompt` -- that text with the image placeholder, plain or (``chat=True``)
  in the chat format;
* :meth:`Adapter.prompt_for` -- both, with the chat decision of the authors per task
  (:meth:`Adapter.uses_chat`): VQA and captioning are asked in the chat format, the class
  prompt (attention, overlap, knockout, patching) is a plain completion.

**Toy-world checkpoints** (``toy-native`` & co., recognised by their ``narrowgate_toy.json``)
were trained on plain prompts with their own tokenizers, which lack the chat tokens:
:attr:`Adapter.toy` is True for them, chat wrapping is skipped and the task texts are the toy
world's (:mod:`narrowgate_utils.data.toy`), so they get exactly the prompts they were trained on.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from ..layout import Batch, TokenLayout

ImageLike = Image.Image | np.ndarray

PROMPT_ORDERS = ("image_first", "text_first")

#: the authors' VQAv2 prompt (the text after the image; ``{question}`` is filled in)
VQA_PROMPT = "{question}\nAnswer the question using a single word or phrase. Answer:"
#: the instruction block of the authors' default VQA mode for Chameleon and Pixtral (Mistral's
#: VQAv2 evaluation prompt); those families ask ``"{question}\n" + VQA_INSTRUCTIONS``
VQA_INSTRUCTIONS = (
    "- Answer the question using a single word, number, or short phrase. Use as few words as possible.\n"
    "- If the answer is a number, report it as a number, i.e. 2, not Two, and only include the number without "
    "any unit.\n"
    "- If the question is Yes/No, answer with Yes/No, and nothing else (no likely, unknown, etc.).\n"
    "- You cannot answer that the question is unanswerable. You must answer."
)
#: the authors' captioning request
CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."
#: the class-completion prompt per dataset (paper Sec. 4.2: "<image> This animal is a")
CLASS_PROMPTS = {"toy": "This shape is a", "imagenet": "This animal is a"}
#: prompt tasks: VQA, captioning, class completion, the class prompt of the patching experiment
TASKS = ("vqa", "caption", "class", "patch")


def as_pil(image: ImageLike) -> Image.Image:
    """Accept a PIL image or an HxWx3 uint8 array and return an RGB PIL image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"Expected an HxWx3 RGB image array, got shape {array.shape}.")
    return Image.fromarray(array.astype(np.uint8), mode="RGB")


def check_image_size(image_size: int | None) -> int | None:
    """Validate the fixed square image size of :meth:`Adapter.build_batch` (None: no resize)."""
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive int (pixels per side) or None, got {image_size!r}.")
    return image_size


def resize_square(image: Image.Image, image_size: int | None) -> Image.Image:
    """``image`` resized to ``image_size``×``image_size`` (bilinear, like torchvision's resize the
    authors used); unchanged for ``None``."""
    if check_image_size(image_size) is None or image.size == (image_size, image_size):
        return image
    return image.resize((image_size, image_size), Image.Resampling.BILINEAR)


def is_toy_checkpoint(model_id: str, checkpoint_dir: Path | None) -> bool:
    """Whether a checkpoint is one of the repo's toy-world models (trained on plain prompts)."""
    from ..toy.registry import TOY_METADATA, TOY_MODEL_NAMES

    return model_id in TOY_MODEL_NAMES or (checkpoint_dir is not None and (checkpoint_dir / TOY_METADATA).exists())


class Adapter(ABC):
    """Family-specific knowledge about one loaded VLM.

    Subclasses set :attr:`family`, :attr:`model_types` (``config.model_type`` values they
    handle) and their prompt format (:attr:`image_prompt`, :attr:`chat_template`, …), and
    implement :meth:`encode` and :meth:`locate`.
    """

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    #: whether a decoder layer's forward returns a tuple (hidden states are ``output[0]``)
    layer_returns_tuple: ClassVar[bool] = False
    #: one-line description of how [EOI] is defined for this family
    eoi_convention: ClassVar[str] = "the family's end-of-image token"
    #: the VQA text template of the family's real checkpoints (``{question}`` is filled in)
    vqa_template: ClassVar[str] = VQA_PROMPT
    #: tasks whose prompt the authors gave in the checkpoint's chat format (the others are plain)
    chat_tasks: ClassVar[tuple[str, ...]] = ("vqa", "caption")
    #: the checkpoint's user turn; ``{body}`` is replaced by the image and the text
    chat_template: ClassVar[str] = "{body}"
    #: what separates the image from the text inside the chat turn
    chat_separator: ClassVar[str] = ""
    #: text that opens a new turn: a generated answer is cut there (:meth:`clean_answer`)
    turn_markers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: torch.nn.Module, processor: Any, model_id: str | Path = "",
                 checkpoint_dir: str | Path | None = None, remote: bool | str = False) -> None:
        self.model = model
        self.processor = processor
        self.model_id = str(model_id)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None and Path(checkpoint_dir).exists() else None
        #: nnsight execution of traces: False (here), True / a host URL (NDIF; ``model`` holds no
        #: weights, only its structure on the meta device) or "local" (nnsight's serialising
        #: simulation of a remote run, on the local weights)
        self.remote = remote
        #: a toy-world checkpoint: plain prompts with the toy world's task texts, never the chat
        #: format (set it to True for another checkpoint trained on plain prompts only)
        self.toy = is_toy_checkpoint(self.model_id, self.checkpoint_dir)
        #: square resize used by :meth:`build_batch` when a call gives no ``image_size`` (the
        #: notebooks set it from their ``image_size`` parameter; None = natural size)
        self.image_size: int | None = None
        self._token_ids: dict[str, int] = {}

    @property
    def has_weights(self) -> bool:
        """False for a remote adapter whose model lives on the meta device (weights on the server)."""
        return not any(p.is_meta for p in self.model.parameters())

    def require_weights(self, what: str) -> None:
        """Raise a clear error when ``what`` needs local weights that a remote adapter lacks."""
        if not self.has_weights:
            raise ValueError(f"{what} runs the model locally, but {self.model_id or self.family} was loaded with "
                             f"remote={self.remote!r} (no local weights). Only nnsight traces (residual and attention "
                             "extraction, activation patching) run remotely; load with remote=False for this step.")

    @classmethod
    @abstractmethod
    def model_class(cls) -> type:
        """The transformers ``*ForConditionalGeneration`` class of this family."""

    # ------------------------------------------------------------ structure
    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    @abstractmethod
    def layers(self) -> Sequence[torch.nn.Module]:
        """The decoder layers of the language model, in order."""

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def attention(self, layer: int) -> torch.nn.Module:
        """The self-attention module of decoder layer ``layer``."""
        return self.layers[self.check_layer(layer)].self_attn

    def input_layernorm(self, layer: int) -> torch.nn.Module:
        """The layernorm whose output is the attention-block input x_in (paper Sec. 3.1)."""
        return self.layers[self.check_layer(layer)].input_layernorm

    @property
    def text_config(self) -> Any:
        config = self.model.config
        return config.get_text_config() if hasattr(config, "get_text_config") else config

    def check_layer(self, layer: int) -> int:
        """Validate a layer index (negative indices count from the end)."""
        n = self.num_layers
        if not -n <= layer < n:
            raise ValueError(f"Layer {layer} is out of range: {self.model_id or self.family} has {n} decoder layers (0..{n - 1}).")
        return layer % n

    def check_layers(self, layers: Sequence[int] | range | None) -> list[int]:
        """Validate a list of layers; ``None`` means all layers."""
        if layers is None:
            return list(range(self.num_layers))
        return [self.check_layer(int(layer)) for layer in layers]

    # -------------------------------------------------------------- prompts
    @property
    def image_prompt(self) -> str:
        """What stands for the image in a prompt string (the processor expands it)."""
        return "<image>"

    @property
    def prompt_prefix(self) -> str:
        """Text every prompt starts with (e.g. a BOS the tokenizer does not add itself)."""
        return ""

    @cached_property
    def missing_bos(self) -> str:
        """The BOS token if the tokenizer does not add it itself (Pixtral, SmolVLM), else "" (looked up once)."""
        tokenizer = self.tokenizer
        if tokenizer.bos_token is None or tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]:
            return ""
        return tokenizer.bos_token

    def task_prompt(self, task: str, *, question: str | None = None, dataset: str | None = None,
                    prompt: str | None = None) -> str:
        """The text part of ``task``'s prompt (see :data:`TASKS`) for this checkpoint.

        ``question`` fills the VQA template. ``dataset`` picks the class prompt of
        :data:`CLASS_PROMPTS` (default: ``"toy"`` for toy checkpoints, ``"imagenet"`` otherwise).
        ``prompt`` overrides the template (for ``vqa`` it must contain ``{question}``).
        """
        if task not in TASKS:
            raise ValueError(f"Unknown prompt task {task!r}; use one of {TASKS}.")
        if (question is None) == (task == "vqa"):
            raise ValueError("The 'vqa' task needs question=...; the other tasks take none." if task == "vqa" else
                             f"question= applies to the 'vqa' task only, not {task!r}.")
        template = self._task_template(task, dataset) if prompt is None else prompt
        if task != "vqa":
            return template
        if "{question}" not in template:
            raise ValueError(f"The VQA prompt {template!r} has no '{{question}}' field to put the question in.")
        return template.replace("{question}", question)

    def _task_template(self, task: str, dataset: str | None) -> str:
        if task in ("class", "patch"):
            return self.class_template(task, "toy" if dataset is None and self.toy else dataset or "imagenet")
        if self.toy:
            from ..data import toy

            return toy.VQA_PROMPT if task == "vqa" else toy.CAPTION_PROMPT
        return self.vqa_template if task == "vqa" else CAPTION_PROMPT

    def class_template(self, task: str, dataset: str) -> str:
        """The class-completion text of ``dataset`` for ``task`` ("class" or "patch")."""
        if dataset not in CLASS_PROMPTS:
            raise ValueError(f"No class prompt for dataset {dataset!r}; class prompts exist for {sorted(CLASS_PROMPTS)}.")
        return CLASS_PROMPTS[dataset]

    def uses_chat(self, task: str) -> bool:
        """Whether ``task``'s prompt is given in the chat format (never for toy checkpoints)."""
        if task not in TASKS:
            raise ValueError(f"Unknown prompt task {task!r}; use one of {TASKS}.")
        return not self.toy and task in self.chat_tasks

    def format_prompt(self, text: str, order: str = "image_first", chat: bool = False) -> str:
        """Prompt string with the image (:attr:`image_prompt`) before or after ``text``.

        ``chat=True`` wraps it in the checkpoint's chat format (:meth:`chat_prompt`); toy
        checkpoints always get the plain string.
        """
        if order not in PROMPT_ORDERS:
            raise ValueError(f"Unknown prompt order '{order}'; use one of {PROMPT_ORDERS}.")
        if chat and not self.toy:
            return self.prompt_prefix + self.chat_prompt(text, order)
        return self.prompt_prefix + self.join(text, order)

    def join(self, text: str, order: str, separator: str = "") -> str:
        """The image placeholder and ``text`` in ``order``, ``separator`` between them."""
        return self.image_prompt + separator + text if order == "image_first" else text + separator + self.image_prompt

    def chat_prompt(self, text: str, order: str) -> str:
        """One user turn of the checkpoint's chat format holding the image and ``text``, ending
        where the assistant's answer starts (:attr:`chat_template`, :attr:`chat_separator`)."""
        return self.chat_template.replace("{body}", self.join(text, order, self.chat_separator))

    def prompt_for(self, task: str, *, order: str = "image_first", question: str | None = None,
                   dataset: str | None = None, prompt: str | None = None) -> str:
        """The complete prompt of ``task``: :meth:`task_prompt` in the format :meth:`uses_chat` picks.

        An override ``prompt`` that already holds the image placeholder is a complete prompt
        and is used as it is (with the question filled in).
        """
        text = self.task_prompt(task, question=question, dataset=dataset, prompt=prompt)
        if prompt is not None and self.image_prompt in prompt:
            return text
        return self.format_prompt(text, order, chat=self.uses_chat(task))

    def clean_answer(self, text: str) -> str:
        """A generated answer cut at its first line break or new turn (VQA and caption scoring)."""
        answer = text.strip()
        for marker in ("\n", *self.turn_markers):
            answer = answer.split(marker, 1)[0]
        return answer.strip()

    @abstractmethod
    def encode(self, images: Sequence[ImageLike], prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise prompts (with placeholders) and images into model inputs (left padded)."""

    @abstractmethod
    def locate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TokenLayout:
        """Find the image span, [SOI], [EOI], row separators and text in one row of ids."""

    def build_batch(self, images: Sequence[ImageLike], texts: Sequence[str], order: str = "image_first",
                    chat: bool = False, image_size: int | None = None) -> Batch:
        """Build model inputs and token layouts for image+text prompts in either order.

        Each text goes through :meth:`format_prompt` (``chat`` as there); a text that already
        holds the image placeholder (e.g. from :meth:`prompt_for`) is a complete prompt and is
        used as it is. ``image_size`` resizes every image to ``image_size``×``image_size``
        before the processor (the authors: 512 for attention, overlap and patching, 256 for VQA
        and captioning); families with a pixel budget use exactly that size (Emu3).
        """
        if order not in PROMPT_ORDERS:
            raise ValueError(f"Unknown prompt order '{order}'; use one of {PROMPT_ORDERS}.")
        if len(images) != len(texts):
            raise ValueError(f"Got {len(images)} images but {len(texts)} texts; pass one text per image.")
        if len(images) == 0:
            raise ValueError("build_batch needs at least one image+text pair; the input is empty.")
        image_size = check_image_size(image_size if image_size is not None else self.image_size)
        if not self.has_image_pipeline():
            raise ValueError(
                f"The processor of {self.model_id or self.family} cannot encode images (it is a bare tokenizer, "
                "e.g. because AutoProcessor did not recognise the checkpoint's processor): pass the family's full "
                "*Processor to the adapter."
            )
        prompts = [text if self.image_prompt in text else self.format_prompt(text, order, chat) for text in texts]
        pictures = [resize_square(as_pil(image), image_size) for image in images]
        with self.fixed_image_size(image_size):
            inputs = self.encode(pictures, prompts)
        self.check_context(inputs["input_ids"])
        return Batch(inputs=dict(inputs), layouts=self.layouts_of(inputs), order=order)

    def layouts_of(self, inputs: dict[str, torch.Tensor]) -> list[TokenLayout]:
        """The layout of every row of encoded ``inputs`` (:meth:`locate` per row)."""
        mask = inputs.get("attention_mask")
        return [self.locate(ids, None if mask is None else mask[row]) for row, ids in enumerate(inputs["input_ids"])]

    @contextmanager
    def fixed_image_size(self, image_size: int | None) -> Iterator[None]:
        """Make the processor keep ``image_size``×``image_size`` images as they are (a no-op for
        processors that resize to their own fixed size anyway)."""
        yield

    def check_context(self, input_ids: torch.Tensor) -> None:
        """Fail clearly if a prompt is longer than the model's context window."""
        limit = getattr(self.text_config, "max_position_embeddings", None)
        if limit is not None and input_ids.shape[-1] > limit:
            raise ValueError(
                f"Prompt of {input_ids.shape[-1]} tokens exceeds the context window of {limit} tokens of "
                f"{self.model_id or self.family}; use smaller images or shorter text."
            )

    def has_image_pipeline(self) -> bool:
        """Whether the processor can turn images into model inputs (a bare tokenizer cannot)."""
        return hasattr(self.processor, "image_processor")

    # ------------------------------------------------------------ helpers
    def token_id(self, token: str) -> int:
        """Id of a special token (looked up once per adapter), with a clear error when the tokenizer lacks it."""
        if token not in self._token_ids:
            token_id = self.tokenizer.convert_tokens_to_ids(token)
            if token_id is None or token_id == getattr(self.tokenizer, "unk_token_id", -1):
                raise ValueError(f"The tokenizer of {self.model_id or self.family} has no token '{token}'.")
            self._token_ids[token] = int(token_id)
        return self._token_ids[token]

    @staticmethod
    def pad_offset(attention_mask: torch.Tensor | None) -> int:
        """Number of left-padding positions in one row."""
        if attention_mask is None:
            return 0
        nonzero = torch.nonzero(attention_mask, as_tuple=False)
        return int(nonzero[0, 0]) if len(nonzero) else 0

    def decode(self, token_ids: torch.Tensor) -> list[str]:
        """Decode generated ids (one row per sample) to text, skipping special tokens."""
        return self.tokenizer.batch_decode(token_ids, skip_special_tokens=True)

    @torch.no_grad()
    def generate(self, batch: Batch, max_new_tokens: int = 20, **kwargs: Any) -> list[str]:
        """Greedy generation of the continuation of every prompt in ``batch``."""
        self.require_weights("Generation")
        device = next(self.model.parameters()).device
        inputs = batch.to(device, self.model.dtype).inputs
        kwargs.setdefault("do_sample", False)
        kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, **kwargs)
        return [text.strip() for text in self.decode(output[:, inputs["input_ids"].shape[1]:])]


def model_fingerprint(adapter: Adapter) -> dict[str, object]:
    """What identifies the weights behind an adapter, for cache keys.

    Local checkpoints (toy models included) are identified by their config and the size and
    modification time of every safetensors file, so retraining a toy model invalidates the cache.
    """
    fingerprint: dict[str, object] = {"model_id": adapter.model_id, "family": adapter.family,
                                      "dtype": str(adapter.model.dtype)}
    if adapter.checkpoint_dir is not None:
        directory = Path(adapter.checkpoint_dir)
        fingerprint["config"] = (directory / "config.json").read_text() if (directory / "config.json").exists() else ""
        fingerprint["weights"] = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(directory.glob("*.safetensors"))]
    return fingerprint


def layout_from_ids(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    image_ids: set[int] | torch.Tensor,
    eoi_id: int | None,
    soi_id: int | None = None,
    row_separator_id: int | None = None,
    family: str,
    image_range: tuple[int, int] | None = None,
) -> TokenLayout:
    """Generic layout finder for families whose image is one contiguous block of ids.

    ``image_ids`` are the ids of image content tokens (a set, or ``image_range=(lo, hi)`` for
    a contiguous id range such as VQ codes). The block runs from the first image id to
    [EOI]; separators inside it are row separators. Without an [EOI] id (``eoi_id=None``)
    the caller must handle the convention itself.
    """
    ids = input_ids.tolist()
    offset = Adapter.pad_offset(attention_mask)
    if image_range is not None:
        lo, hi = image_range
        is_image = [lo <= t < hi for t in ids]
    else:
        wanted = set(int(t) for t in image_ids)
        is_image = [t in wanted for t in ids]
    image_positions = [i for i, flag in enumerate(is_image) if flag and i >= offset]
    if not image_positions:
        raise ValueError(
            f"Image span not found. No image tokens found in the {family} prompt: the prompt needs an image "
            f"placeholder and the image must be expanded into image tokens (did you pass an image?)."
        )
    first, last = image_positions[0], image_positions[-1]
    soi = None
    if soi_id is not None:
        soi = first - 1 if first - 1 >= 0 and ids[first - 1] == soi_id else None
        if soi is None:
            raise ValueError(f"{family}: the start-of-image token does not precede the image span.")
    separators = [i for i in range(first, last + 2) if i < len(ids) and row_separator_id is not None and ids[i] == row_separator_id]
    eoi = None
    if eoi_id is not None:
        after = [i for i in range(last + 1, len(ids)) if ids[i] == eoi_id]
        if not after or any(not (ids[i] == row_separator_id) for i in range(last + 1, after[0])):
            raise ValueError(f"{family}: the end-of-image token does not close the image span.")
        eoi = after[0]
    if eoi is None:
        raise ValueError(f"{family}: no end-of-image token; this family needs a conventional [EOI] position.")
    text_positions = tuple(range(eoi + 1, len(ids)))
    block_start = soi if soi is not None else first
    prompt_text = tuple(range(offset, block_start))
    return TokenLayout(
        seq_len=len(ids),
        image_positions=tuple(image_positions),
        eoi=eoi,
        soi=soi,
        row_separators=tuple(separators),
        text_positions=text_positions,
        prompt_text_positions=prompt_text,
        pad_offset=offset,
    )
