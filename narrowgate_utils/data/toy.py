"""The toy world: procedurally rendered shapes, deterministic from a seed.

Each 32x32 RGB image shows one coloured shape on a dark textured background. A *scene* is the
attribute tuple (class = colour + shape, size, position, background texture); an *instance*
adds colour jitter, texture phase and pixel noise drawn from the instance seed.

* 24 classes (the analogue of the paper's ImageNet animal classes): every shape in three of
  the eight colours, so each colour also appears with three shapes.
* Objects are aligned to the 8-pixel patch grid (small = 2x2 patches, large = 3x3 patches),
  so a patch-level image tokenizer sees a small set of shape fragments.
* Splits are fixed by hashing the scene tuple: a test scene (e.g. a large red ring at the top
  left on a striped background) never occurs in training, only its attributes do.
* Every image has 5 distinct reference captions and 5 VQA questions with 10 simulated
  annotator answers each (mostly the canonical answer, sometimes a synonym or a confusion),
  so the VQAv2 metric min(1, #matches/3) matters.
"""
from __future__ import annotations

import hashlib
from collections import Counter
import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from .sample import N_VQA_ANSWERS, Sample, VQAItem

TOY_IMAGE_SIZE = 32
TOY_PATCH_SIZE = 8

TOY_SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "star", "heart")
TOY_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 230, 40),
    "green": (40, 200, 60),
    "cyan": (40, 220, 230),
    "blue": (40, 80, 240),
    "purple": (150, 50, 220),
    "pink": (250, 130, 200),
}
TOY_SIZES = {"small": 16, "large": 24}
TOY_BACKGROUNDS = ("plain", "striped", "dotted", "checkered")
#: shape i comes in colours i, i+3, i+5 (mod 8): each colour appears with exactly three shapes
_COLOR_OFFSETS = (0, 3, 5)
_COLOR_NAMES = tuple(TOY_COLORS)
TOY_CLASSES: tuple[str, ...] = tuple(
    f"{_COLOR_NAMES[(i + off) % len(_COLOR_NAMES)]} {shape}" for i, shape in enumerate(TOY_SHAPES) for off in _COLOR_OFFSETS
)
#: (base, target) class pairs for activation patching, differing in colour and shape
#: (the analogue of the paper's ten animal pairs)
TOY_PATCHING_PAIRS: tuple[tuple[str, str], ...] = (
    ("red circle", "cyan square"),
    ("blue circle", "pink triangle"),
    ("orange square", "green diamond"),
    ("purple square", "yellow ring"),
    ("yellow triangle", "pink cross"),
    ("red diamond", "orange star"),
    ("green diamond", "blue ring"),
    ("cyan cross", "purple star"),
    ("red ring", "yellow heart"),
    ("green star", "pink heart"),
)

#: image-then-text classification prompt; the target is the class name
CLASS_PROMPT = "This shape is a"
#: captioning prompt (image first); the target is one reference caption
CAPTION_PROMPT = "Describe the image in one sentence."
#: VQA prompt template (the paper's VQAv2 prompt, after the image)
VQA_PROMPT = "{question}\nAnswer the question using a single word or phrase. Answer:"

TOY_SPLITS = ("train", "validation", "test")
#: default number of images per split
TOY_SPLIT_SIZES = {"train": 6000, "validation": 500, "test": 1000}
_SPLIT_SALT = "narrowgate-toy-split-v1"

SYNONYMS: dict[str, tuple[str, ...]] = {
    "large": ("big",), "small": ("little", "tiny"),
    "top left": ("upper left",), "top right": ("upper right",),
    "bottom left": ("lower left",), "bottom right": ("lower right",),
    "center": ("middle",), "purple": ("violet",), "pink": ("magenta",), "cyan": ("light blue",),
    "circle": ("round",), "cross": ("plus",), "ring": ("donut",), "diamond": ("rhombus",),
}
CONFUSIONS: dict[str, tuple[str, ...]] = {
    "red": ("orange", "pink"), "orange": ("red", "yellow"), "yellow": ("orange", "green"),
    "green": ("yellow", "cyan"), "cyan": ("green", "blue"), "blue": ("cyan", "purple"),
    "purple": ("blue", "pink"), "pink": ("purple", "red"),
    "circle": ("ring", "heart"), "square": ("diamond",), "triangle": ("star",), "diamond": ("square", "star"),
    "cross": ("star",), "ring": ("circle",), "star": ("cross", "triangle"), "heart": ("circle", "triangle"),
    "small": ("large",), "large": ("small",), "yes": ("no",), "no": ("yes",),
    "left": ("center", "top left"), "right": ("center", "bottom right"), "center": ("left", "right"),
    "top": ("top left", "top right"), "bottom": ("bottom left", "bottom right"),
    "top left": ("top", "left"), "top right": ("top", "right"),
    "bottom left": ("bottom", "left"), "bottom right": ("bottom", "right"),
}
#: what each of an image's five questions asks about, in order
VQA_KINDS = ("color", "shape", "position", "size", "yes/no")
_P_CANONICAL, _P_SYNONYM = 0.8, 0.12  # the rest is a confusion


def _check_constants() -> None:
    if len(set(TOY_CLASSES)) != len(TOY_CLASSES):
        raise ValueError("TOY_CLASSES contains duplicates; fix _COLOR_OFFSETS.")
    for base, target in TOY_PATCHING_PAIRS:
        if base not in TOY_CLASSES or target not in TOY_CLASSES:
            raise ValueError(f"Patching pair ({base!r}, {target!r}) uses a class outside TOY_CLASSES.")


_check_constants()


def position_name(size: str, x0: int, y0: int) -> str:
    """Name of the object's position ('top left', 'center', 'right', ...) from its box."""
    half = TOY_SIZES[size] / 2
    cx, cy = x0 + half, y0 + half
    h = "left" if cx < 14 else "right" if cx > 18 else "center"
    v = "top" if cy < 14 else "bottom" if cy > 18 else "middle"
    if v == "middle":
        return h
    return v if h == "center" else f"{v} {h}"


def _position_phrase(position: str) -> str:
    if position == "center":
        return "in the center"
    if position in ("left", "right"):
        return f"on the {position}"
    return f"at the {position}"


def toy_scenes() -> list[tuple[str, str, int, int, str]]:
    """All scenes (class_name, size, x0, y0, background), in a fixed order."""
    scenes = []
    for class_name in TOY_CLASSES:
        for size, side in TOY_SIZES.items():
            offsets = range(0, TOY_IMAGE_SIZE - side + 1, TOY_PATCH_SIZE)
            for y0 in offsets:
                for x0 in offsets:
                    for background in TOY_BACKGROUNDS:
                        scenes.append((class_name, size, x0, y0, background))
    return scenes


def scene_split(scene: tuple) -> str:
    """Fixed split of a scene: 70% train, 10% validation, 20% test (hash of the attribute tuple)."""
    digest = hashlib.sha256(f"{_SPLIT_SALT}|{scene}".encode()).digest()
    bucket = int.from_bytes(digest[:4], "little") % 100
    return "train" if bucket < 70 else "validation" if bucket < 80 else "test"


@lru_cache(maxsize=None)
def _shape_alpha(shape: str, side: int) -> np.ndarray:
    """Anti-aliased coverage mask (side x side, values in [0, 1]) of one shape."""
    ss = 4
    n = side * ss
    m = 1.5 * ss  # margin inside the box
    canvas = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(canvas)
    lo, hi, c = m, n - m, n / 2
    if shape == "circle":
        draw.ellipse([lo, lo, hi, hi], fill=255)
    elif shape == "square":
        draw.rectangle([lo + ss, lo + ss, hi - ss, hi - ss], fill=255)
    elif shape == "triangle":
        draw.polygon([(c, lo), (hi, hi), (lo, hi)], fill=255)
    elif shape == "diamond":
        draw.polygon([(c, lo), (hi, c), (c, hi), (lo, c)], fill=255)
    elif shape == "cross":
        w = (hi - lo) / 6
        draw.rectangle([c - w, lo, c + w, hi], fill=255)
        draw.rectangle([lo, c - w, hi, c + w], fill=255)
    elif shape == "ring":
        draw.ellipse([lo, lo, hi, hi], fill=255)
        r = (hi - lo) * 0.27
        draw.ellipse([c - r, c - r, c + r, c + r], fill=0)
    elif shape == "star":
        outer, inner = (hi - lo) / 2, (hi - lo) / 5
        points = []
        for k in range(10):
            radius = outer if k % 2 == 0 else inner
            angle = -np.pi / 2 + k * np.pi / 5
            points.append((c + radius * np.cos(angle), c + 0.08 * n + radius * np.sin(angle)))
        draw.polygon(points, fill=255)
    elif shape == "heart":
        r = (hi - lo) / 4
        draw.ellipse([lo, lo + r / 2, lo + 2 * r, lo + 2.5 * r], fill=255)
        draw.ellipse([hi - 2 * r, lo + r / 2, hi, lo + 2.5 * r], fill=255)
        draw.polygon([(lo + 0.1 * r, lo + 1.8 * r), (hi - 0.1 * r, lo + 1.8 * r), (c, hi)], fill=255)
    else:
        raise ValueError(f"Unknown toy shape {shape!r}; known shapes: {TOY_SHAPES}.")
    small = canvas.resize((side, side), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _background(kind: str, rng: np.random.Generator) -> np.ndarray:
    size = TOY_IMAGE_SIZE
    base = rng.uniform(25, 50) + rng.uniform(-8, 8, size=3)
    yy, xx = np.mgrid[0:size, 0:size]
    phase = int(rng.integers(0, 4))
    if kind == "plain":
        texture = np.zeros((size, size))
    elif kind == "striped":
        texture = 22.0 * (((xx + yy + phase) // 2) % 2)
    elif kind == "dotted":
        texture = 30.0 * (((xx + phase) % 4 == 0) & ((yy + phase) % 4 == 0))
    elif kind == "checkered":
        texture = 18.0 * ((((xx + phase) // 4) + ((yy + phase) // 4)) % 2)
    else:
        raise ValueError(f"Unknown background {kind!r}; known: {TOY_BACKGROUNDS}.")
    return base[None, None, :] + texture[:, :, None]


def render_scene(scene: tuple[str, str, int, int, str], rng: np.random.Generator) -> Image.Image:
    """Render one instance of a scene (class_name, size, x0, y0, background) as a 32x32 RGB image."""
    class_name, size, x0, y0, background = scene
    color, shape = class_name.split(" ")
    side = TOY_SIZES[size]
    image = _background(background, rng)
    alpha = _shape_alpha(shape, side)[:, :, None]
    rgb = np.clip(np.array(TOY_COLORS[color], dtype=np.float64) + rng.uniform(-12, 12, size=3), 0, 255)
    patch = image[y0:y0 + side, x0:x0 + side]
    image[y0:y0 + side, x0:x0 + side] = alpha * rgb + (1 - alpha) * patch
    image += rng.normal(0, 3.0, size=image.shape)
    return Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8), mode="RGB")


def _annotate(answer: str, rng: np.random.Generator) -> tuple[str, ...]:
    """Ten simulated annotator answers around the canonical ``answer``.

    Each annotator gives the canonical answer, a synonym or a confusion; draws in which the
    canonical answer is not the strict majority are redrawn, so it is the training target.
    """
    while True:
        answers = []
        for _ in range(N_VQA_ANSWERS):
            u = rng.random()
            if u < _P_CANONICAL or (u < _P_CANONICAL + _P_SYNONYM and answer not in SYNONYMS):
                answers.append(answer)
            elif u < _P_CANONICAL + _P_SYNONYM:
                answers.append(str(rng.choice(SYNONYMS[answer])))
            else:
                answers.append(str(rng.choice(CONFUSIONS.get(answer, (answer,)))))
        counts = Counter(answers)
        if all(counts[answer] > n for a, n in counts.items() if a != answer):
            return tuple(answers)


def yes_no_question(color: str, shape: str, about: str, asked: str) -> tuple[str, str]:
    """(question, canonical answer) of a yes/no question about the colour or the shape."""
    if about == "color":
        return f"Is the shape {asked}?", "yes" if asked == color else "no"
    if about == "shape":
        return f"Is this a {asked}?", "yes" if asked == shape else "no"
    raise ValueError(f"yes/no questions are about 'color' or 'shape', not {about!r}.")


def _questions(color: str, shape: str, size: str, position: str, rng: np.random.Generator) -> tuple[VQAItem, ...]:
    items = [
        ("What color is the shape?", color, "other"),
        ("What shape is this?", shape, "other"),
        ("Where is the shape?", position, "other"),
        ("How big is the shape?", size, "other"),
    ]
    truth = bool(rng.integers(0, 2))
    if rng.integers(0, 2):
        asked = color if truth else str(rng.choice([c for c in TOY_COLORS if c != color]))
        items.append((*yes_no_question(color, shape, "color", asked), "yes/no"))
    else:
        asked = shape if truth else str(rng.choice([s for s in TOY_SHAPES if s != shape]))
        items.append((*yes_no_question(color, shape, "shape", asked), "yes/no"))
    return tuple(VQAItem(question, _annotate(answer, rng), kind) for question, answer, kind in items)


def _captions(color: str, shape: str, size: str, position: str, background: str) -> tuple[str, ...]:
    where = _position_phrase(position)
    return (
        f"a {size} {color} {shape} on a {background} background",
        f"a {color} {shape} {where}",
        f"there is a {size} {shape} {where}",
        f"one {size} {shape} colored {color}",
        f"the image shows a {color} {shape} {where}",
    )


@lru_cache(maxsize=8)
def _split_scenes(split: str) -> tuple[tuple, ...]:
    return tuple(scene for scene in toy_scenes() if scene_split(scene) == split)


def make_sample(scene: tuple[str, str, int, int, str], split: str, index: int, seed: int) -> Sample:
    """One deterministic instance of ``scene`` (its noise is seeded by (seed, split, index))."""
    split_id = TOY_SPLITS.index(split)
    rng = np.random.default_rng([seed, split_id, index])
    class_name, size, x0, y0, background = scene
    color, shape = class_name.split(" ")
    position = position_name(size, x0, y0)
    image = render_scene(scene, rng)
    side = TOY_SIZES[size]
    meta = {
        "split": split, "index": index, "seed": seed, "color": color, "shape": shape, "size": size,
        "position": position, "background": background, "box": (x0, y0, x0 + side, y0 + side),
        "scene_id": _scene_ids()[scene], "vqa_kinds": VQA_KINDS,
    }
    return Sample(
        uid=f"toy-{split}-{seed}-{index}",
        image=image,
        label=TOY_CLASSES.index(class_name),
        class_name=class_name,
        captions=_captions(color, shape, size, position, background),
        vqa=_questions(color, shape, size, position, rng),
        meta=meta,
    )


@lru_cache(maxsize=1)
def _scene_ids() -> dict[tuple, int]:
    return {scene: i for i, scene in enumerate(toy_scenes())}


@lru_cache(maxsize=16)
def _dataset(split: str, n: int, seed: int) -> tuple[Sample, ...]:
    scenes = _split_scenes(split)
    order = np.random.default_rng([seed, TOY_SPLITS.index(split), 7]).permutation(len(scenes))
    samples = []
    for index in range(n):
        cycle, k = divmod(index, len(scenes))
        if k == 0 and cycle > 0:
            order = np.random.default_rng([seed, TOY_SPLITS.index(split), 7, cycle]).permutation(len(scenes))
        samples.append(make_sample(scenes[order[k]], split, index, seed))
    return tuple(samples)


def toy_dataset(split: str, n: int | None = None, seed: int = 0) -> list[Sample]:
    """The toy-world split ``split`` ('train', 'validation' or 'test') as a list of samples.

    Scenes are assigned to splits by a fixed hash (independent of ``seed``), so splits are
    disjoint in their attribute tuples; ``seed`` only changes the instances (noise, jitter,
    order). ``n`` defaults to :data:`TOY_SPLIT_SIZES`; the first ``n`` samples of a larger
    request are identical to a request for ``n``.
    """
    if split not in TOY_SPLITS:
        raise ValueError(f"Unknown toy split {split!r}; use one of {TOY_SPLITS} (evaluate only on 'test').")
    n = TOY_SPLIT_SIZES[split] if n is None else int(n)
    if n < 0:
        raise ValueError(f"toy_dataset: n must be >= 0, got {n}.")
    return list(_dataset(split, n, int(seed)))


def toy_vocabulary_words() -> list[str]:
    """Every word the toy world's text can contain (for the word-level tokenizer)."""
    words: set[str] = set()
    texts = [CLASS_PROMPT, CAPTION_PROMPT, VQA_PROMPT.format(question="")]
    attributes = list(TOY_COLORS) + list(TOY_SHAPES) + list(TOY_SIZES) + list(TOY_BACKGROUNDS)
    answers = set(SYNONYMS) | {a for v in SYNONYMS.values() for a in v} | set(CONFUSIONS)
    answers |= {a for v in CONFUSIONS.values() for a in v}
    positions = {position_name(size, x, y) for size, side in TOY_SIZES.items()
                 for x in range(0, TOY_IMAGE_SIZE - side + 1, TOY_PATCH_SIZE)
                 for y in range(0, TOY_IMAGE_SIZE - side + 1, TOY_PATCH_SIZE)}
    texts += attributes + sorted(answers) + [_position_phrase(p) for p in positions]
    texts += _captions("red", "circle", "small", "center", "plain")
    texts += [item.question for item in _questions("red", "circle", "small", "center", np.random.default_rng(0))]
    texts += ["What color is the shape?", "What shape is this?", "Where is the shape?", "How big is the shape?",
              "Is the shape red?", "Is this a circle?", "yes", "no"]
    for text in texts:
        words.update(_split_words(text))
    return sorted(words)


def _split_words(text: str) -> list[str]:
    """Word split matching the tokenizer's pre-tokenizer (``\\w+`` and runs of punctuation)."""
    return re.findall(r"\w+|[^\w\s]+", text)


def class_names(labels: Sequence[int]) -> list[str]:
    """Class names of integer labels."""
    return [TOY_CLASSES[int(label)] for label in labels]
