"""Dataset folders in the official layouts with natural-size images of mixed sizes and aspect ratios.

The layouts are those of :mod:`dataset_fixtures` (written by its functions); every image they
write is then replaced by a smooth synthetic photo of one of :data:`IMAGE_SIZES`, cycling in
path order, so that the real processors of the stand-in checkpoints see landscape, portrait
and square images of realistic size. The base colour of each replaced image is the colour
the layout fixture gave it, so images stay distinguishable by content.
"""
from __future__ import annotations

from pathlib import Path

import csv
import json

import numpy as np
from PIL import Image

from dataset_fixtures import write_imagenet_wnid_folders, write_llava_instruct, write_vqav2

#: (width, height): landscape 4:3, portrait (odd sizes), square
IMAGE_SIZES = ((640, 480), (333, 500), (512, 512))
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def natural_image(size: tuple[int, int], color: tuple[int, int, int], seed: int) -> Image.Image:
    """A smooth RGB image of ``size`` (width, height): a colour gradient around ``color`` with a
    brighter rectangle at a seeded place (compresses well, unlike noise)."""
    width, height = size
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    ramp = (xs / width + ys / height)[..., None] * rng.uniform(20, 60, size=3)
    pixels = np.clip(np.asarray(color, dtype=float) + ramp, 0, 255)
    top, left = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
    pixels[top:top + height // 3, left:left + width // 3] = rng.uniform(150, 255, size=3)
    return Image.fromarray(pixels.astype(np.uint8), mode="RGB")


def with_natural_images(root: Path) -> Path:
    """Replace every image under ``root`` by a :func:`natural_image` of the next of
    :data:`IMAGE_SIZES` (sorted path order), keeping its file name and base colour."""
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"No images under {root} to replace.")
    for index, path in enumerate(paths):
        with Image.open(path) as small:
            color = small.convert("RGB").getpixel((0, 0))
        natural_image(IMAGE_SIZES[index % len(IMAGE_SIZES)], color, seed=index).save(path, quality=85)
    return root


def imagenet(root: Path, per_class: int = 1) -> Path:
    """ImageNet train wnid folders for every class of both class sets, ``per_class`` images each."""
    write_imagenet_wnid_folders(root, per_class=per_class)
    return with_natural_images(root)


def flickr30k(root: Path, n_images: int = 12) -> Path:
    """The nlphuji/flickr30k layout (``flickr_annotations_30k.csv`` + ``flickr30k-images/``) with
    ``n_images`` images of five captions each, all in the Karpathy test split (the modality gap's
    ADP clustering needs more than 16 points: at least 9 images, each in both prompt orders)."""
    (root / "flickr30k-images").mkdir(parents=True, exist_ok=True)
    with open(root / "flickr_annotations_30k.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["raw", "sentids", "split", "filename", "img_id"])
        for k in range(n_images):
            captions = [f"a red circle on image {k} , caption {c} ." for c in range(5)]
            writer.writerow([json.dumps(captions), json.dumps(list(range(5 * k, 5 * k + 5))), "test", f"{3000 + k}.jpg", k])
            size = IMAGE_SIZES[k % len(IMAGE_SIZES)]
            natural_image(size, (20 * k % 256, 80, 160), seed=k).save(root / "flickr30k-images" / f"{3000 + k}.jpg")
    return root


def vqav2(root: Path) -> Path:
    """VQAv2 questions, annotations and COCO images of both the val and the train split."""
    for subtype in ("val2014", "train2014"):
        write_vqav2(root, subtype=subtype)
    return with_natural_images(root)


def llava_instruct(root: Path) -> Path:
    """``llava_instruct_150k.json`` with four conversations over three COCO train2017 images."""
    write_llava_instruct(root)
    return with_natural_images(root)

