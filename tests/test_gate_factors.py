"""Smoke tests of the gate-factor experiment (chapter 07): score arithmetic, recipes, one tiny model."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from narrowgate_utils import training
from narrowgate_utils.experiments import gate_factors as gf


@pytest.mark.parametrize("drop_eoi, drop_img, expected", [
    (0.9, 0.0, 1.0),     # only [EOI] matters: a narrow gate
    (0.0, 0.8, 0.0),     # only the other image tokens matter: distributed
    (0.3, 0.1, 0.75),    # 0.3 / 0.4
    (-0.2, 0.4, 0.0),    # a knockout that *helps* counts as no drop
    (0.2, -0.1, 1.0),
])
def test_gate_score_by_hand(drop_eoi, drop_img, expected):
    assert gf.gate_score(drop_eoi, drop_img) == pytest.approx(expected)


def test_gate_score_undefined_when_nothing_hurts():
    assert math.isnan(gf.gate_score(0.0, 0.0))
    assert math.isnan(gf.gate_score(-0.1, -0.3))


def test_variants_and_recipes():
    with pytest.raises(ValueError, match="no image tokens to predict"):
        training.GateVariant.parse("continuous-all-scratch")
    with pytest.raises(ValueError, match="tokenizer"):
        training.GateVariant.parse("clip-text-scratch")
    size = training.GateSize(steps=7, pretrain_steps=3)
    all_tokens = training.variant_recipe("vq-all-scratch", 1, size)
    text_only = training.variant_recipe("vq-text-text", 1, size)
    continuous = training.variant_recipe("continuous-text-scratch", 2, size)
    assert (all_tokens.family, all_tokens.image_loss, all_tokens.pretrain_steps) == ("chameleon", None, 0)
    assert "t2i" in dict(all_tokens.tasks)
    assert (text_only.family, text_only.image_loss, text_only.pretrain_steps) == ("chameleon", False, 3)
    assert "t2i" not in dict(text_only.tasks)
    assert (continuous.family, continuous.seed, continuous.steps) == ("llava", 2, 7)
    assert len({r.fingerprint() for r in (all_tokens, text_only, continuous)}) == 3


def test_added_recipe_fields_keep_old_fingerprints():
    """Fields added after the first release (image_loss, tie_embeddings) leave the hash of a recipe
    that does not set them unchanged, so cached models (e.g. chapter 07's) stay valid."""
    from narrowgate_utils.training import TOY_RECIPES, ToyRecipe

    assert TOY_RECIPES["toy-nonnative"].fingerprint() == "0c8598d6fcd63734"
    untied_native = ToyRecipe("toy-native", "chameleon")
    assert untied_native.fingerprint() == "56a98078e68ef46d"  # the first release's toy-native
    assert TOY_RECIPES["toy-native"].fingerprint() != untied_native.fingerprint()  # tied: a new model


def test_text_only_objective_masks_the_image_span():
    from narrowgate_utils.data.toy import toy_dataset
    from narrowgate_utils.toy.image_tokenizer import code_to_bpe_table
    from narrowgate_utils.toy.text_tokenizer import SOI_TOKEN, toy_tokenizer
    from narrowgate_utils.training.sequences import ToyTextData, chameleon_batch

    tokenizer = toy_tokenizer("chameleon", 8)
    vocab = tokenizer.get_vocab()
    data = ToyTextData(toy_dataset("train", n=6, seed=0), tokenizer)
    codes = code_to_bpe_table(vocab, 8)[torch.randint(0, 8, (6, 16), generator=torch.Generator().manual_seed(0))]
    recipe = training.variant_recipe("vq-text-scratch", 0, training.GateSize(batch_size=4))
    batch = chameleon_batch(recipe, data, codes, vocab, step=0)
    soi = (batch.input_ids == vocab[SOI_TOKEN]).float().argmax(1)
    for row, start in enumerate(soi.tolist()):
        assert batch.loss_mask[row, start:start + 18].sum() == 0  # [SOI], 16 codes, [EOI]
        assert batch.loss_mask[row, start + 18:].sum() > 0  # the text after the image keeps its loss


def test_tiny_variant_end_to_end(tmp_path):
    """Train one tiny native model for a few steps (text-pretrained, text objective) and measure it."""
    from narrowgate_utils.datasets import dataset_classes, load_samples
    from narrowgate_utils.training.components import component_dir

    size = training.GateSize(hidden_size=16, layers=2, heads=2, steps=3, pretrain_steps=2, batch_size=4)
    if not (component_dir("image_tokenizer", training.variant_recipe("vq-text-text", 0, size)) / "metrics.json").exists():
        pytest.skip("the seed-0 toy image tokenizer is not cached (it is built by training the toy models)")
    torch.set_num_threads(1)
    samples = load_samples("toy", n=12, seed=0)
    kwargs = {"size": size, "k": 3, "batch_size": 12}
    with pytest.raises(ValueError, match="train_variants"):  # measuring never trains
        gf.gate_factor_table(["vq-text-text"], [0], tmp_path, samples, "This shape is a", dataset_classes("toy"),
                             **kwargs)
    training.train_variants(["vq-text-text"], [0], tmp_path, size)
    table = gf.gate_factor_table(["vq-text-text"], [0], tmp_path, samples, "This shape is a",
                                 dataset_classes("toy"), **kwargs)
    row = table.iloc[0]
    assert row.model == "vq-text-text-s0" and row.init == "text"
    for column in ("acc_none", "acc_eoi", "acc_img_to_text", "eoi_attention", "eoi_chi_last"):
        assert 0.0 <= row[column] <= 1.0, column
    assert np.isnan(row.gate_score) or 0.0 <= row.gate_score <= 1.0
    weights = tmp_path / "vq-text-text-s0" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    training.train_variants(["vq-text-text"], [0], tmp_path, size)
    again = gf.gate_factor_table(["vq-text-text"], [0], tmp_path, samples, "This shape is a",
                                 dataset_classes("toy"), **kwargs)
    assert weights.stat().st_mtime_ns == stamp, "a cached model with the same recipe must not be retrained"
    assert again.iloc[0].acc_none == pytest.approx(row.acc_none)
    summary = gf.summarize(table, min_accuracy=0.0)
    assert summary.loc[0, "n_seeds"] == 1 and summary.loc[0, "variant"] == "vq-text-text"
