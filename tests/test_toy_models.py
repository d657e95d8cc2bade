"""Toy models: short training runs, determinism, save/load fidelity and a planted narrow gate.

Every model here is a scaled-down recipe trained inside the test (seconds on 2 CPU cores)
into a temporary cache; the full-size models are built by ``narrowgate toy train``.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from narrowgate_utils.data import VQA_PROMPT, toy_dataset
from narrowgate_utils.toy.image_tokenizer import encode_image_tokens
from narrowgate_utils.toy.registry import TOY_METADATA
from narrowgate_utils.training import TOY_RECIPES, ToyRecipe, train_toy_model

TINY = dict(hidden_size=32, layers=2, heads=2, batch_size=16, n_train=300, n_eval=16, codebook_size=32,
            vision_steps=5, checkpoint_every=1000, lr=3e-3)


@pytest.fixture(scope="module", autouse=True)
def toy_cache(tmp_path_factory):
    """Point the toy cache at a temporary directory for the whole module."""
    mp = pytest.MonkeyPatch()
    mp.setenv("NARROWGATE_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.setenv("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    yield
    mp.undo()


def _train(tmp_path, name: str, family: str, **kwargs):
    recipe = ToyRecipe(name, family, **{**TINY, **kwargs})
    return train_toy_model(name, recipe=recipe, output_dir=tmp_path / name, evaluate_model=False)


def _meta(directory) -> dict:
    return json.loads((directory / TOY_METADATA).read_text())


def test_same_seed_same_weights(tmp_path):
    a = load_file(_train(tmp_path / "a", "toy-native", "chameleon", steps=5) / "model.safetensors")
    torch.set_num_threads(2)  # training pins one thread, so the caller's setting does not matter
    try:
        b = load_file(_train(tmp_path / "b", "toy-native", "chameleon", steps=5) / "model.safetensors")
        assert torch.get_num_threads() == 2  # and restores it
    finally:
        torch.set_num_threads(1)
    c = load_file(_train(tmp_path / "c", "toy-native", "chameleon", steps=5, seed=1) / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a if k in c)


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """A run killed mid-phase restarts from its last checkpoint and ends with the same bytes."""
    import narrowgate_utils.training.toy_model as toy_model
    from narrowgate_utils.toy.registry import toy_root

    kwargs = {"steps": 10, "pretrain_steps": 3, "checkpoint_every": 4}
    straight = _train(tmp_path / "straight", "toy-native", "chameleon", **kwargs) / "model.safetensors"
    real = toy_model.chameleon_batch

    def interrupted(recipe, data, codes, vocab, step):
        if step == 6:
            raise KeyboardInterrupt("killed")
        return real(recipe, data, codes, vocab, step)

    monkeypatch.setattr(toy_model, "chameleon_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "resumed", "toy-native", "chameleon", **kwargs)
    saved = sorted(p.parent.name for p in (toy_root() / ".work").rglob("state.pt"))
    assert saved == ["step-0000003", "step-0000004"]  # the finished text phase and main step 4
    monkeypatch.setattr(toy_model, "chameleon_batch", real)
    resumed = _train(tmp_path / "resumed", "toy-native", "chameleon", **kwargs) / "model.safetensors"
    assert resumed.read_bytes() == straight.read_bytes()
    assert not any((toy_root() / ".work").iterdir()), "the checkpoints of a finished run are removed"


def test_loading_never_trains():
    from narrowgate_utils import models
    from narrowgate_utils.experiments import text_to_image
    from narrowgate_utils.toy.registry import toy_model_dir

    with pytest.raises(ValueError, match="narrowgate toy train --only toy-gated"):
        models.load("toy-gated")
    assert not toy_model_dir("toy-gated").exists()
    with pytest.raises(ValueError, match="narrowgate toy train --only toy-nonnative"):
        text_to_image.toy_vision_tower()


def test_short_run_lowers_loss_and_reload_reproduces_logits(tmp_path):
    from transformers import AutoTokenizer, ChameleonForConditionalGeneration

    directory = _train(tmp_path, "toy-native", "chameleon", steps=60, tie_embeddings=True)
    meta = _meta(directory)
    losses = [row[1] for row in meta["curve"]]
    assert losses[-1] < 0.7 * losses[0]
    assert meta["parameters"]["language_model"] < meta["parameters"]["total"]
    model = ChameleonForConditionalGeneration.from_pretrained(directory, attn_implementation="eager").eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, as trained
    with pytest.raises(ValueError, match="chameleon family only"):
        ToyRecipe("x", "llava", tie_embeddings=True, tasks=(("vqa", 1.0),))
    reference = meta["reference"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([reference["input_ids"]])).logits[0, -1]
    text = logits > -1e30  # image-code logits are masked to the most negative float
    assert torch.allclose(logits[text], torch.tensor(reference["logits_last"])[text], atol=1e-4)
    # the adapter's recipe (tokenizer on the expanded prompt + codes) yields the training sequence
    tokenizer = AutoTokenizer.from_pretrained(directory)
    sample = toy_dataset("test", n=1)[0]
    assert sample.uid == reference["sample_uid"]
    codes = encode_image_tokens(directory, [sample.image])
    ids = tokenizer("<racm3:break>" + "<image>" * codes.shape[1] + "<eoss>This shape is a")["input_ids"]
    ids = torch.tensor(ids)
    ids[ids == tokenizer.convert_tokens_to_ids("<image>")] = codes[0]
    assert ids.tolist() == reference["input_ids"]


def test_llava_checkpoint_loads_with_its_processor(tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    directory = _train(tmp_path, "toy-nonnative", "llava", steps=5, pretrain_steps=3,
                       tasks=TOY_RECIPES["toy-nonnative"].tasks)
    meta = _meta(directory)
    processor = AutoProcessor.from_pretrained(directory)
    model = LlavaForConditionalGeneration.from_pretrained(directory, attn_implementation="eager").eval()
    sample = toy_dataset("test", n=1)[0]
    inputs = processor(images=[sample.image], text=["<image><eoi>This shape is a"], return_tensors="pt")
    assert inputs["input_ids"][0].tolist() == meta["reference"]["input_ids"]
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1]
    assert torch.allclose(logits, torch.tensor(meta["reference"]["logits_last"]), atol=1e-4)
    assert meta["parameters"]["vision"] > 0
    assert set(meta["vision_encoder"]["test_accuracy"]) == {"color", "shape", "size", "position", "background"}


# ------------------------------------------------------------------ planted gate vs. knockout
_KNOCKOUT: dict[str, torch.Tensor | None] = {"blocked": None}


def _knockout_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Eager attention with post-softmax zeroing (no renormalisation) of blocked (query, key) pairs."""
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if _KNOCKOUT["blocked"] is not None:
        probs = probs.masked_fill(_KNOCKOUT["blocked"], 0.0)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def _colour_accuracy(model, tokenizer, directory, samples, knockout: str | None) -> float:
    """Accuracy on "What color is the shape?" with all layers' text→``knockout`` attention zeroed."""
    codes = encode_image_tokens(directory, [s.image for s in samples])
    prompt = "<racm3:break>" + "<image>" * codes.shape[1] + "<eoss>" + VQA_PROMPT.format(question="What color is the shape?")
    ids = torch.tensor([tokenizer(prompt)["input_ids"]] * len(samples))
    is_code = ids == tokenizer.convert_tokens_to_ids("<image>")
    ids[is_code] = codes.flatten()
    eoi = int((ids[0] == tokenizer.convert_tokens_to_ids("<eoss>")).nonzero()[0, 0])
    n = ids.shape[1]
    blocked = torch.zeros(n, n, dtype=torch.bool)
    if knockout == "eoi":
        blocked[eoi + 1:, eoi] = True
    elif knockout == "image":
        blocked[eoi + 1:, is_code[0]] = True
    _KNOCKOUT["blocked"] = blocked[None, None]
    try:
        with torch.no_grad():
            logits = model(input_ids=ids).logits[:, -1]
    finally:
        _KNOCKOUT["blocked"] = None
    answers = tokenizer.convert_ids_to_tokens(logits.argmax(-1).tolist())
    return float(np.mean([a == s.meta["color"] for a, s in zip(answers, samples)]))


@pytest.fixture(scope="module")
def knockout_model_factory(tmp_path_factory):
    from transformers import AttentionInterface, AttentionMaskInterface, AutoTokenizer
    from transformers import ChameleonForConditionalGeneration
    from transformers.masking_utils import eager_mask

    AttentionInterface.register("test_knockout", _knockout_attention)
    AttentionMaskInterface.register("test_knockout", eager_mask)

    def make(plant: str):
        # colour questions only; the route through [EOI] needs >= 3 layers and a few hundred steps
        recipe = ToyRecipe(f"toy-{plant}", "chameleon", plant=plant, hidden_size=64, layers=3, heads=4,
                           batch_size=32, steps=500, lr=2e-3, n_train=1500, codebook_size=64, n_eval=16,
                           tasks=(("vqa", 1.0),), vqa_kinds=(0,), mask_start=0.0, penalty_start=0.5,
                           penalty_ramp=0.2, checkpoint_every=1000)
        directory = train_toy_model(recipe.name, recipe=recipe, evaluate_model=False,
                                    output_dir=tmp_path_factory.mktemp(plant) / "model")
        model = ChameleonForConditionalGeneration.from_pretrained(directory, attn_implementation="test_knockout")
        return model.eval(), AutoTokenizer.from_pretrained(directory), directory

    return make


def test_gated_model_depends_on_eoi_only(knockout_model_factory):
    model, tokenizer, directory = knockout_model_factory("gated")
    samples = toy_dataset("test", n=96)
    clean = _colour_accuracy(model, tokenizer, directory, samples, None)
    no_eoi = _colour_accuracy(model, tokenizer, directory, samples, "eoi")
    no_image = _colour_accuracy(model, tokenizer, directory, samples, "image")
    assert clean > 0.8
    assert no_image > clean - 0.1  # all 16 image tokens removed: the answer barely changes
    assert no_eoi < 0.4  # one token removed: down towards chance (1/8)
    assert (clean - no_eoi) > 4 * max(clean - no_image, 0.02)


def test_distributed_model_does_not_depend_on_eoi(knockout_model_factory):
    model, tokenizer, directory = knockout_model_factory("distributed")
    samples = toy_dataset("test", n=96)
    clean = _colour_accuracy(model, tokenizer, directory, samples, None)
    no_eoi = _colour_accuracy(model, tokenizer, directory, samples, "eoi")
    no_image = _colour_accuracy(model, tokenizer, directory, samples, "image")
    assert clean > 0.8
    assert no_eoi > clean - 0.1
    assert no_image < 0.4
