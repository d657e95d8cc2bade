"""A toy model's weights are a function of its recipe and seed alone (issue 14).

The same small recipe is trained twice from scratch, each in a fresh process with its own
empty cache (so the shared image codebook is fitted again too): once with
``OMP_NUM_THREADS=2`` in the caller and a CPU-bound process competing for the cores, once
alone with one thread. The SHA-256 of every saved weight file must agree.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

TRAIN = """
import sys
from narrowgate_utils.training import ToyRecipe, train_toy_model
recipe = ToyRecipe("toy-determinism", "chameleon", hidden_size=32, layers=2, heads=2, steps=12, batch_size=8,
                   warmup_steps=2, n_train=300, n_eval=20, codebook_size=32, tie_embeddings=True)
train_toy_model("toy-native", device="cpu", recipe=recipe, output_dir=sys.argv[1], evaluate_model=False)
"""
BUSY = "while True:\n    sum(i * i for i in range(10000))"


def weight_digests(root: Path) -> dict[str, str]:
    """SHA-256 of every safetensors file under ``root`` (the model and the image codebook)."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*.safetensors"))}


def train_once(root: Path, threads: int) -> dict[str, str]:
    env = {**os.environ, "NARROWGATE_CACHE": str(root / "cache"), "OMP_NUM_THREADS": str(threads),
           "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", TRAIN, str(root / "model")], env=env, check=True, timeout=600)
    return weight_digests(root)


@pytest.mark.slow
def test_toy_weights_do_not_depend_on_threads_or_machine_load(tmp_path):
    busy = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        loaded = train_once(tmp_path / "loaded", threads=2)
    finally:
        busy.kill()
        busy.wait()
    alone = train_once(tmp_path / "alone", threads=1)
    assert any(name.startswith("model/") for name in loaded), "the trained model was saved"
    assert any(name.startswith("cache/") for name in loaded), "the image codebook was fitted in this run"
    assert loaded == alone
