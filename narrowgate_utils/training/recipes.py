"""Recipes: everything that determines a toy model's weights, for the book's models and the
factorial study of chapter 07 (its hash keys the cache)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from ..toy.registry import TOY_VERSION


@dataclass(frozen=True)
class ToyRecipe:
    """Everything that determines a toy model's weights (its hash keys the cache)."""

    name: str
    family: str  # "chameleon" or "llava"
    plant: str | None = None  # None, "gated" or "distributed"
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    steps: int = 1000
    batch_size: int = 48
    lr: float = 2e-3
    warmup_steps: int = 30
    #: weight of the forbidden-attention penalty and when it ramps in (fractions of ``steps``)
    penalty_weight: float = 2.0
    penalty_start: float = 0.25
    penalty_ramp: float = 0.25
    #: from this fraction of ``steps`` on, forbidden keys are also masked (pre-softmax) in training;
    #: before it the model learns to read the image freely (the EOI route alone is not found from scratch)
    mask_start: float = 0.25
    #: text-only LM steps before multimodal training (non-native family; native family too when > 0)
    pretrain_steps: int = 0
    #: sampling weights of the training tasks
    tasks: tuple[tuple[str, float], ...] = (("vqa", 0.4), ("yesno", 0.25), ("class", 0.1), ("caption", 0.1),
                                            ("t2i", 0.15))
    #: restrict VQA training questions to these indices of ``Sample.vqa`` (None: all five)
    vqa_kinds: tuple[int, ...] | None = None
    n_train: int = 6000
    n_eval: int = 300
    #: split the saved metrics are computed on (development runs use "validation")
    eval_split: str = "test"
    codebook_size: int = 256
    vision_steps: int = 250
    seed: int = 0
    checkpoint_every: int = 100
    #: training objective: None = the family's own (native: loss on every token; non-native: on the
    #: answer); False = native family with loss on text tokens only (no image-code loss, no "t2i")
    image_loss: bool | None = None
    #: share the input embedding and the output projection (native family). With tied weights
    #: a question word and the image features that predict that word live in one space, which
    #: the yes/no questions ("Is the shape red?") need: untied toy models stay at chance there.
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.family not in ("chameleon", "llava"):
            raise ValueError(f"ToyRecipe {self.name}: family must be 'chameleon' or 'llava', got {self.family!r}.")
        if self.plant not in (None, "gated", "distributed") or (self.plant and self.family != "chameleon"):
            raise ValueError(f"ToyRecipe {self.name}: plant must be None, 'gated' or 'distributed' (chameleon only).")
        known = {"vqa", "yesno", "class", "caption"} | ({"t2i"} if self.family == "chameleon" else set())
        unknown = {task for task, _ in self.tasks} - known
        if unknown:
            raise ValueError(f"ToyRecipe {self.name}: tasks {sorted(unknown)} are not available for the {self.family} "
                             f"family; use {sorted(known)}.")
        if self.image_loss is not None and (self.family != "chameleon" or self.image_loss):
            raise ValueError(f"ToyRecipe {self.name}: image_loss must be None (the family's objective) or False "
                             "(chameleon only: text-only loss); a continuous encoder has no image tokens to predict.")
        if self.tie_embeddings and self.family != "chameleon":
            raise ValueError(f"ToyRecipe {self.name}: tie_embeddings applies to the chameleon family only.")
        if self.image_loss is False and any(task == "t2i" for task, _ in self.tasks):
            raise ValueError(f"ToyRecipe {self.name}: image_loss=False trains on text only; drop the 't2i' task.")

    def fingerprint(self) -> str:
        """16 hex digits of the SHA-256 of the recipe and :data:`TOY_VERSION`."""
        # fields added after TOY_VERSION 1 enter the hash only when set, so older fingerprints stay valid
        fields = {k: v for k, v in asdict(self).items() if not (k in _ADDED_FIELD_DEFAULTS and v == _ADDED_FIELD_DEFAULTS[k])}
        payload = json.dumps({"version": TOY_VERSION, **fields}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


#: fields added to ToyRecipe after its first release, with their defaults (see ``fingerprint``)
_ADDED_FIELD_DEFAULTS = {"image_loss": None, "tie_embeddings": False}
_IMAGE_TO_TEXT = (("vqa", 0.45), ("yesno", 0.25), ("class", 0.15), ("caption", 0.15))
TOY_RECIPES: dict[str, ToyRecipe] = {
    "toy-native": ToyRecipe("toy-native", "chameleon", tie_embeddings=True),
    "toy-nonnative": ToyRecipe("toy-nonnative", "llava", steps=600, pretrain_steps=150, tasks=_IMAGE_TO_TEXT),
    # the gated model needs more steps to pass size and yes/no through its single token
    "toy-gated": ToyRecipe("toy-gated", "chameleon", plant="gated", tie_embeddings=True, steps=1300),
    "toy-distributed": ToyRecipe("toy-distributed", "chameleon", plant="distributed", tie_embeddings=True),
}


# ---------------------------------------------------------------------------- chapter 07's factorial design
TOKENIZERS = ("vq", "continuous")
OBJECTIVES = ("all", "text")
INITS = ("scratch", "text")
#: the native recipe's task mixture; the text-objective variants drop "t2i" (same relative weights)
_ALL_TASKS = (("vqa", 0.4), ("yesno", 0.25), ("class", 0.1), ("caption", 0.1), ("t2i", 0.15))
_TEXT_TASKS = tuple(t for t in _ALL_TASKS if t[0] != "t2i")


@dataclass(frozen=True)
class GateVariant:
    """One cell of the factorial design (tokenizer x objective x init; see ``experiments.gate_factors``)."""

    tokenizer: str
    objective: str
    init: str

    def __post_init__(self) -> None:
        for value, allowed, what in ((self.tokenizer, TOKENIZERS, "tokenizer"), (self.objective, OBJECTIVES, "objective"),
                                     (self.init, INITS, "init")):
            if value not in allowed:
                raise ValueError(f"GateVariant: {what} must be one of {allowed}, got {value!r}.")
        if self.tokenizer == "continuous" and self.objective == "all":
            raise ValueError("GateVariant continuous-all does not exist: a continuous encoder has no image tokens to "
                             "predict; use objective='text' or tokenizer='vq'.")

    @property
    def name(self) -> str:
        return f"{self.tokenizer}-{self.objective}-{self.init}"

    @classmethod
    def parse(cls, name: str) -> GateVariant:
        parts = name.split("-")
        if len(parts) != 3:
            raise ValueError(f"Variant name {name!r} must read '<tokenizer>-<objective>-<init>', e.g. 'vq-all-scratch'.")
        return cls(*parts)


#: every feasible cell (the continuous-all cell is empty: no image tokens to predict)
DEFAULT_VARIANTS = ("vq-all-scratch", "vq-text-scratch", "continuous-text-scratch",
                    "vq-all-text", "vq-text-text", "continuous-text-text")


@dataclass(frozen=True)
class GateSize:
    """Size and schedule shared by every variant (small enough for CPU minutes)."""

    hidden_size: int = 64
    layers: int = 4
    heads: int = 4
    steps: int = 500
    pretrain_steps: int = 150
    batch_size: int = 32
    lr: float = 3e-3


def variant_recipe(variant: GateVariant | str, seed: int, size: GateSize = GateSize()) -> ToyRecipe:
    """The :class:`ToyRecipe` of one variant and seed."""
    variant = GateVariant.parse(variant) if isinstance(variant, str) else variant
    common = {"hidden_size": size.hidden_size, "layers": size.layers, "heads": size.heads, "steps": size.steps,
              "batch_size": size.batch_size, "lr": size.lr, "seed": seed,
              "pretrain_steps": size.pretrain_steps if variant.init == "text" else 0}
    name = f"gate-{variant.name}-s{seed}"
    if variant.tokenizer == "continuous":
        return ToyRecipe(name, "llava", tasks=_TEXT_TASKS, **common)
    if variant.objective == "all":
        return ToyRecipe(name, "chameleon", tasks=_ALL_TASKS, **common)
    return ToyRecipe(name, "chameleon", tasks=_TEXT_TASKS, image_loss=False, **common)
