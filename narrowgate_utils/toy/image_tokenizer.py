"""Discrete low-level image tokenizer for the toy native models: a k-means patch codebook.

An image is cut into non-overlapping ``patch_size`` x ``patch_size`` RGB patches (raster
order, like a VQ-VAE latent grid); each patch is replaced by the index of its nearest
codebook vector (L2 in [0, 1] pixel units). Decoding pastes the codebook vectors back.
It plays the role of Chameleon's VQ-VAE: codes are mapped to BPE ids through the model's
own ``vocabulary_map`` (``IMGIMG…Z`` names), exactly as
``ChameleonImageVocabularyMapping`` maps VQ indices.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from ..atomic import atomic_path, write_json

IMAGE_TOKENIZER_WEIGHTS = "image_tokenizer.safetensors"
IMAGE_TOKENIZER_CONFIG = "image_tokenizer.json"
_DIGIT_LETTERS = "ABCDEFGHIJ"


def code_token_name(code: int) -> str:
    """Chameleon's BPE name of VQ code ``code`` (digits written as letters A-J, then 'Z')."""
    if code < 0:
        raise ValueError(f"VQ code indices are >= 0, got {code}.")
    return "IMGIMG" + "".join(_DIGIT_LETTERS[int(d)] for d in str(code)) + "Z"


def images_to_array(images: Sequence[Image.Image | np.ndarray] | np.ndarray, image_size: int) -> np.ndarray:
    """Stack images as a float32 array [n, H, W, 3] in [0, 1], resized to ``image_size`` if needed."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    arrays = []
    for image in images:
        pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
        pil = pil.convert("RGB")
        if pil.size != (image_size, image_size):
            pil = pil.resize((image_size, image_size), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(pil, dtype=np.float32) / 255.0)
    if not arrays:
        raise ValueError("No images given: pass a non-empty list of RGB images.")
    return np.stack(arrays)


class PatchCodebook:
    """k-means codebook over ``patch_size`` x ``patch_size`` RGB patches of ``image_size`` images."""

    def __init__(self, codebook: torch.Tensor, image_size: int, patch_size: int) -> None:
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}.")
        if codebook.ndim != 2 or codebook.shape[1] != patch_size * patch_size * 3:
            raise ValueError(f"Codebook must be [K, {patch_size * patch_size * 3}], got {tuple(codebook.shape)}.")
        self.codebook = codebook.float().contiguous()
        self.image_size = image_size
        self.patch_size = patch_size

    @property
    def n_embeddings(self) -> int:
        """Codebook size K (codes are 0..K-1)."""
        return int(self.codebook.shape[0])

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def n_codes(self) -> int:
        """Codes per image (grid x grid, raster order)."""
        return self.grid * self.grid

    def patches(self, images: Sequence[Image.Image | np.ndarray] | np.ndarray) -> torch.Tensor:
        """Patch vectors [n, n_codes, p*p*3] in [0, 1], raster order."""
        x = torch.from_numpy(images_to_array(images, self.image_size))
        n, p, g = x.shape[0], self.patch_size, self.grid
        x = x.reshape(n, g, p, g, p, 3).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(n, g * g, p * p * 3)

    def quantize(self, vectors: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
        """Index of the nearest codebook vector for each row of ``vectors`` [m, d]."""
        c_sq = (self.codebook ** 2).sum(1)
        out = []
        for start in range(0, vectors.shape[0], chunk):
            block = vectors[start:start + chunk]
            out.append((c_sq[None, :] - 2 * block @ self.codebook.T).argmin(1))
        return torch.cat(out)

    def encode(self, images: Sequence[Image.Image | np.ndarray] | np.ndarray) -> torch.LongTensor:
        """Codebook indices [n, n_codes] (0..K-1) of ``images``."""
        patches = self.patches(images)
        n = patches.shape[0]
        return self.quantize(patches.reshape(-1, patches.shape[-1])).reshape(n, self.n_codes)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Images [n, H, W, 3] in [0, 1] from codebook indices [n, n_codes]."""
        codes = torch.as_tensor(codes, dtype=torch.long)
        if codes.ndim != 2 or codes.shape[1] != self.n_codes:
            raise ValueError(f"decode expects codes of shape [n, {self.n_codes}], got {tuple(codes.shape)}.")
        if int(codes.min()) < 0 or int(codes.max()) >= self.n_embeddings:
            raise ValueError(f"Codes must lie in 0..{self.n_embeddings - 1}.")
        n, p, g = codes.shape[0], self.patch_size, self.grid
        x = self.codebook[codes].reshape(n, g, g, p, p, 3).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(n, self.image_size, self.image_size, 3)

    def reconstruction_error(self, images: Sequence[Image.Image | np.ndarray] | np.ndarray) -> float:
        """Mean squared error per pixel channel (pixels in [0, 1]) of decode(encode(images))."""
        target = torch.from_numpy(images_to_array(images, self.image_size))
        return float(((self.decode(self.encode(images)) - target) ** 2).mean())

    def save(self, directory: str | Path) -> None:
        """Write ``image_tokenizer.safetensors`` + ``image_tokenizer.json`` into ``directory`` (atomically)."""
        directory = Path(directory)
        meta = {"image_size": self.image_size, "patch_size": self.patch_size, "n_embeddings": self.n_embeddings,
                "kind": "kmeans_patch_codebook"}
        # no safetensors metadata: it is written in hash-map order, so the file bytes (and the
        # weights' SHA-256) would change from run to run; the settings live in the JSON file
        with atomic_path(directory / IMAGE_TOKENIZER_WEIGHTS) as tmp:
            save_file({"codebook": self.codebook}, tmp)
        write_json(meta, directory / IMAGE_TOKENIZER_CONFIG)

    @classmethod
    def load(cls, directory: str | Path) -> "PatchCodebook":
        """Read a codebook written by :meth:`save`."""
        directory = Path(directory)
        weights, config = directory / IMAGE_TOKENIZER_WEIGHTS, directory / IMAGE_TOKENIZER_CONFIG
        if not weights.exists() or not config.exists():
            raise ValueError(f"{directory} has no {IMAGE_TOKENIZER_WEIGHTS}/{IMAGE_TOKENIZER_CONFIG}; "
                             "fit one with narrowgate_utils.training.components.train_image_tokenizer(...).save(dir).")
        meta = json.loads(config.read_text())
        return cls(load_file(weights)["codebook"], int(meta["image_size"]), int(meta["patch_size"]))


@lru_cache(maxsize=8)
def _cached_codebook(directory: str, mtime: float) -> PatchCodebook:
    return PatchCodebook.load(directory)


def load_image_tokenizer(directory: str | Path) -> PatchCodebook:
    """Load the codebook saved in a toy model directory (cached per file version)."""
    path = Path(directory) / IMAGE_TOKENIZER_WEIGHTS
    if not path.exists():
        raise ValueError(f"{directory} has no {IMAGE_TOKENIZER_WEIGHTS}: it is not a toy native model directory.")
    return _cached_codebook(str(Path(directory).resolve()), path.stat().st_mtime)


def code_to_bpe_table(vocabulary_map: Mapping[str, int], n_embeddings: int) -> torch.Tensor:
    """LongTensor[K]: BPE id of each VQ code, read from a Chameleon ``vocabulary_map``."""
    try:
        return torch.tensor([vocabulary_map[code_token_name(i)] for i in range(n_embeddings)], dtype=torch.long)
    except KeyError as error:
        raise ValueError(f"The vocabulary has no token {error.args[0]!r}: the model's vocabulary_map must contain "
                         f"IMGIMG…Z names for all {n_embeddings} codes.") from error


@lru_cache(maxsize=8)
def _cached_vocab_table(config_path: str, mtime: float, n_embeddings: int) -> torch.Tensor:
    config = json.loads(Path(config_path).read_text())
    vocabulary_map = config.get("vocabulary_map") or config.get("text_config", {}).get("vocabulary_map")
    if not vocabulary_map:
        raise ValueError(f"{config_path} has no vocabulary_map; it is not a Chameleon checkpoint.")
    return code_to_bpe_table(vocabulary_map, n_embeddings)


def encode_image_tokens(
    source: str | Path | tuple[PatchCodebook, Mapping[str, int]],
    images: Sequence[Image.Image | np.ndarray] | np.ndarray,
) -> torch.LongTensor:
    """BPE ids [n, n_codes] of the image tokens of ``images`` for a toy Chameleon model.

    ``source`` is a toy model directory (codebook from ``image_tokenizer.safetensors``,
    mapping from ``config.json``'s ``vocabulary_map``) or a pair ``(codebook, vocabulary_map)``.
    The ids go between ``<racm3:break>`` (SOI) and ``<eoss>`` (EOI).
    """
    if isinstance(source, tuple):
        codebook, vocabulary_map = source
        table = code_to_bpe_table(vocabulary_map, codebook.n_embeddings)
    else:
        codebook = load_image_tokenizer(source)
        config_path = Path(source) / "config.json"
        if not config_path.exists():
            raise ValueError(f"{source} has no config.json; pass a toy Chameleon model directory.")
        table = _cached_vocab_table(str(config_path.resolve()), config_path.stat().st_mtime, codebook.n_embeddings)
    return table[codebook.encode(images)]
