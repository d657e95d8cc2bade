"""Masked LoRA fine-tuning on tiny Chameleon and LLaVA models (offline, CPU, one thread)."""
from __future__ import annotations

import copy
import gc
import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file

from dataset_fixtures import LLAVA_CONVERSATIONS, write_llava_instruct, write_vqav2

from narrowgate_utils.datasets import load_samples, load_training_mix
from narrowgate_utils.experiments import attention, knockout
from narrowgate_utils.experiments import masked_finetune as mft
from narrowgate_utils.models.base import CLASS_PROMPTS
from narrowgate_utils.training.lora import (ADAPTER_FILES, CHECKPOINT_DIR, TRAINING_LOG, FinetuneConfig,
                                            build_training_examples, collate, eoi_mask, finetune_lora, finetuned,
                                            load_finetuned, lora_config, lora_parameter_names, target_loss)
from narrowgate_utils.tiny import build_tiny

torch.set_num_threads(1)
FAMILIES = ("chameleon", "llava")
#: the module under which each family keeps its image encoder (must never receive LoRA)
VISION_MODULES = {"chameleon": "vqmodel", "llava": "vision_tower"}
_ADAPTERS: dict = {}


def tiny(family: str):
    if family not in _ADAPTERS:
        _ADAPTERS[family] = build_tiny(family)
    return _ADAPTERS[family]


@pytest.fixture(scope="module")
def samples():
    return load_samples("toy", split="train", n=12)


def quick(**overrides) -> FinetuneConfig:
    return FinetuneConfig.toy(**{"batch_size": 6, "epochs": 1, "lr": 3e-3, "checkpoint_every": 2, **overrides})


def mean_target_loss(adapter, examples) -> float:
    batch, labels = collate(adapter, examples)
    with torch.no_grad():
        return float(target_loss(adapter, adapter.model, batch, labels)) / int((labels != -100).sum())


def lora_weights(path) -> dict[str, torch.Tensor]:
    return load_file(path / "adapter_model.safetensors")


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def assert_bit_identical(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == expected.keys()
    assert [name for name in state if not torch.equal(state[name], expected[name])] == []


#: peft's reference models (built here, outside finetune's own warning filter) read this transformers flag
PEFT_FLAG_WARNING = "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"


def deepcopy_merge(adapter, out) -> torch.nn.Module:
    """The fine-tuned model as it used to be built: LoRA merged into a deep copy of the base."""
    return PeftModel.from_pretrained(copy.deepcopy(adapter.model), out).merge_and_unload().eval()


# ---------------------------------------------------------------------------------- mask
@pytest.mark.parametrize("family", FAMILIES)
def test_mask_blocks_exactly_text_to_eoi(family, samples):
    adapter = tiny(family)
    batch, _ = collate(adapter, build_training_examples(adapter, samples[:3])[:3])
    with torch.no_grad():
        plain = adapter.model(**batch.inputs, output_attentions=True).attentions[0]
        with eoi_mask(adapter, batch):
            masked = adapter.model(**batch.inputs, output_attentions=True).attentions[0]
    for row, layout in enumerate(batch.layouts):
        text, eoi = list(layout.text_positions), layout.eoi
        assert text and torch.all(masked[row][:, text, eoi] == 0)
        assert torch.all(plain[row][:, text, eoi] > 0)
        # text rows: the causal distribution without [EOI], renormalised (pre-softmax block)
        expected = plain[row][:, text].clone()
        expected[..., eoi] = 0
        torch.testing.assert_close(masked[row][:, text], expected / expected.sum(-1, keepdim=True))
        # every other query row is untouched
        others = [q for q in range(layout.seq_len) if q not in set(text)]
        assert torch.equal(masked[row][:, others], plain[row][:, others])


@pytest.mark.parametrize("family", FAMILIES)
def test_masked_forward_differs_and_only_lora_gets_gradients(family, samples):
    adapter = tiny(family)
    base = copy.deepcopy(adapter.model)
    config = quick(rank=4)
    model = get_peft_model(base, lora_config(adapter, config))
    view = type(adapter)(base, adapter.processor, adapter.model_id)  # adapter over the wrapped copy
    batch, labels = collate(view, build_training_examples(view, samples[:2]))
    with torch.no_grad():
        unmasked = model(**batch.inputs).logits
    with eoi_mask(view, batch):
        loss = target_loss(view, model, batch, labels)
        masked = model(**batch.inputs).logits
    assert torch.isfinite(loss) and loss > 0
    assert (masked - unmasked).abs().max() > 1e-4
    loss.backward()
    names = lora_parameter_names(model)
    assert names and not any(VISION_MODULES[family] in name for name in names)
    assert len(names) == 2 * 4 * view.num_layers  # A and B for q/k/v/o in every decoder layer
    for name, param in model.named_parameters():
        if name in names:
            assert param.requires_grad
            if ".lora_B." in name:  # B starts at zero, so only B has a gradient at step 0
                assert param.grad is not None and param.grad.abs().sum() > 0
        else:
            assert not param.requires_grad and param.grad is None, name


# ------------------------------------------------------------------------------ training
@pytest.mark.parametrize("family", FAMILIES)
def test_short_run_lowers_loss_and_saves_only_the_adapter(family, samples, tmp_path):
    adapter = tiny(family)
    examples = build_training_examples(adapter, samples)
    probe, _ = collate(adapter, examples[:4])
    with torch.no_grad():
        before = adapter.model(**probe.inputs).logits
    loss_before = mean_target_loss(adapter, examples)
    out = finetune_lora(adapter, samples, quick(epochs=10, max_steps=20), tmp_path / "run", progress=False)
    log = json.loads((out / TRAINING_LOG).read_text())
    losses = [point[1] for point in log["curve"]]
    assert log["steps"] == 20 and all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-5:]) < sum(losses[:5])
    # on the whole training set (untrained tiny models: ~3.5 → ~2.9 nats per target token)
    with finetuned(adapter, out) as tuned:
        assert mean_target_loss(tuned, examples) < 0.9 * loss_before
    assert {p.name for p in out.iterdir()} == {*ADAPTER_FILES, TRAINING_LOG, CHECKPOINT_DIR}
    weights = lora_weights(out)
    assert weights and all(".lora_A." in k or ".lora_B." in k for k in weights)
    model_bytes = sum(p.numel() * p.element_size() for p in adapter.model.parameters())
    assert (out / "adapter_model.safetensors").stat().st_size < 0.25 * model_bytes
    # the caller's model is untouched: no LoRA, same logits, eval mode
    with torch.no_grad():
        assert torch.equal(adapter.model(**probe.inputs).logits, before)
    assert not adapter.model.training and not lora_parameter_names(adapter.model)


def test_resume_matches_uninterrupted_run_and_finished_run_is_not_retrained(samples, tmp_path):
    adapter = tiny("chameleon")
    config = quick(epochs=2)  # 36 examples / 6 = 6 steps per epoch, 12 steps
    straight = finetune_lora(adapter, samples, config, tmp_path / "straight", progress=False)
    split = tmp_path / "split"
    finetune_lora(adapter, samples, quick(epochs=2, max_steps=5), split, progress=False)
    assert json.loads((split / TRAINING_LOG).read_text())["steps"] == 5
    assert (split / CHECKPOINT_DIR / "step-0000005").is_dir()
    finetune_lora(adapter, samples, config, split, progress=False)
    a, b = lora_weights(straight), lora_weights(split)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
    log = json.loads((split / TRAINING_LOG).read_text())
    assert log["steps"] == 12 and [p[0] for p in log["curve"]] == list(range(1, 13))
    assert not (split / CHECKPOINT_DIR).exists()  # full schedule done: the resume state is dropped
    stamp = (split / TRAINING_LOG).stat().st_mtime_ns
    finetune_lora(adapter, samples, config, split, progress=False)  # finished: returns at once
    assert (split / TRAINING_LOG).stat().st_mtime_ns == stamp
    # the control run (no mask) trains the same way but ends elsewhere; a changed config is refused
    control = finetune_lora(adapter, samples, quick(epochs=2, mask_eoi=False, max_steps=3), tmp_path / "c", progress=False)
    partial = finetune_lora(adapter, samples, quick(epochs=2, max_steps=3), tmp_path / "m", progress=False)
    assert not torch.allclose(lora_weights(control)["base_model.model.model.layers.3.self_attn.o_proj.lora_B.weight"],
                              lora_weights(partial)["base_model.model.model.layers.3.self_attn.o_proj.lora_B.weight"])
    with pytest.raises(ValueError, match="different"):
        finetune_lora(adapter, samples, quick(epochs=2, lr=1e-3), split, progress=False)


def test_gradient_checkpointing_gives_the_same_run(samples, tmp_path):
    adapter = tiny("llava")
    plain = finetune_lora(adapter, samples, quick(max_steps=2), tmp_path / "a", progress=False)
    ckpt = finetune_lora(adapter, samples, quick(max_steps=2, gradient_checkpointing=True), tmp_path / "b", progress=False)
    curve = [json.loads((d / TRAINING_LOG).read_text())["curve"] for d in (plain, ckpt)]
    torch.testing.assert_close(torch.tensor(curve[0]), torch.tensor(curve[1]), atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings(PEFT_FLAG_WARNING)
@pytest.mark.parametrize("family", FAMILIES)
def test_finetuned_merges_in_place_and_restores_the_exact_base(family, samples, tmp_path):
    adapter = tiny(family)
    out = finetune_lora(adapter, samples, quick(max_steps=4), tmp_path / family, progress=False)
    batch, _ = collate(adapter, build_training_examples(adapter, samples[:3]))
    original = snapshot(adapter.model)
    flags = {name: p.requires_grad for name, p in adapter.model.named_parameters()}
    with torch.no_grad():
        base = adapter.model(**batch.inputs).logits
        reference = PeftModel.from_pretrained(copy.deepcopy(adapter.model), out).eval()(**batch.inputs).logits
        copy_merged = deepcopy_merge(adapter, out)(**batch.inputs).logits
    with finetuned(adapter, out) as merged:
        assert type(merged) is type(adapter) and merged.model is adapter.model  # no second copy
        assert not lora_parameter_names(merged.model) and merged.model_id.startswith(f"{adapter.model_id}+lora:{family}:")
        with torch.no_grad():
            logits = merged.model(**batch.inputs).logits
            with eoi_mask(merged, batch):  # the knockout machinery sees a plain HF model
                knocked = merged.model(**batch.inputs).logits
    torch.testing.assert_close(logits, copy_merged, atol=1e-6, rtol=0)
    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=1e-4)
    assert (logits - base).abs().max() > 1e-3
    assert (knocked - logits).abs().max() > 1e-5
    assert_bit_identical(adapter.model, original)
    assert {name: p.requires_grad for name, p in adapter.model.named_parameters()} == flags
    assert not adapter.model.training and not hasattr(adapter.model, "peft_config")
    with pytest.raises(RuntimeError, match="evaluation failed"), finetuned(adapter, out):
        raise RuntimeError("evaluation failed")
    assert_bit_identical(adapter.model, original)


def test_load_finetuned_loads_a_fresh_merged_model(samples, tmp_path):
    from narrowgate_utils import models

    checkpoint = tmp_path / "checkpoint"
    tiny("chameleon").model.save_pretrained(checkpoint)
    tiny("chameleon").processor.save_pretrained(checkpoint)
    base = models.load(checkpoint)
    out = finetune_lora(base, samples[:6], quick(max_steps=2), tmp_path / "run", progress=False)
    loaded = load_finetuned(checkpoint, out)
    assert loaded.model is not base.model and not lora_parameter_names(loaded.model)
    batch, _ = collate(base, build_training_examples(base, samples[:2]))
    with torch.no_grad(), finetuned(base, out) as merged:
        assert loaded.model_id == merged.model_id
        torch.testing.assert_close(loaded.model(**batch.inputs).logits, merged.model(**batch.inputs).logits,
                                   atol=1e-6, rtol=0)


@pytest.mark.filterwarnings(PEFT_FLAG_WARNING)
def test_before_after_evaluation_keeps_one_copy_of_the_model(samples, tmp_path, monkeypatch):
    """The base and both fine-tuned variants are evaluated one at a time in the same weights."""
    adapter = tiny("chameleon")
    runs = mft.finetune_both(adapter, samples[:6], quick(max_steps=2), tmp_path, CLASS_PROMPTS["toy"])
    original = snapshot(adapter.model)
    probe = "model.layers.0.self_attn.q_proj.weight"
    expected = {"before": original[probe], **{name: deepcopy_merge(adapter, path).state_dict()[probe]
                                              for name, path in runs.items()}}
    gc.collect()
    model_class = type(adapter.model)
    copies = sum(type(o) is model_class for o in gc.get_objects())
    real_deepcopy, seen = copy.deepcopy, {}

    def no_model_copies(value, *args, **kwargs):
        assert not isinstance(value, torch.nn.Module), "the model was deep-copied"
        return real_deepcopy(value, *args, **kwargs)

    def record(model) -> None:
        assert model.model is adapter.model
        assert sum(type(o) is model_class for o in gc.get_objects()) == copies
        seen.setdefault(model.model_id, adapter.model.state_dict()[probe].clone())

    def fake_scores(model, *args, mode="post_softmax", **kwargs):
        record(model)
        return {"vqa_accuracy": 1.0}

    def recorded_profile(model, *args, **kwargs):
        record(model)
        return real_profile(model, *args, **kwargs)

    real_profile = attention.mean_attention_profile
    monkeypatch.setattr(copy, "deepcopy", no_model_copies)
    monkeypatch.setattr(knockout, "evaluate_tasks", fake_scores)
    monkeypatch.setattr(attention, "mean_attention_profile", recorded_profile)
    table = mft.before_after_table(mft.variants(adapter, runs), [], ["vqa"], ["none", "eoi"], None, [])
    assert list(dict.fromkeys(table["variant"])) == list(mft.VARIANTS)
    assert len(seen) == 3 and adapter.model_id in seen  # distinct ids: the caches never mix variants
    for weight, name in zip(seen.values(), mft.VARIANTS):
        assert torch.equal(weight, expected[name]), name
    assert_bit_identical(adapter.model, original)
    seen.clear()
    shares, chis = mft.profiles(mft.variants(adapter, runs), samples[:4], CLASS_PROMPTS["toy"], k=2, batch_size=4)
    assert set(shares["model"]) == set(chis["model"]) == set(mft.VARIANTS) and len(seen) == 3
    assert_bit_identical(adapter.model, original)

    def failing_scores(model, *args, **kwargs):
        if model.model_id != adapter.model_id:
            raise RuntimeError("evaluation failed")
        return {"vqa_accuracy": 1.0}

    monkeypatch.setattr(knockout, "evaluate_tasks", failing_scores)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        mft.before_after_table(mft.variants(adapter, runs), [], ["vqa"], ["none"], None, [])
    assert_bit_identical(adapter.model, original)  # the failed variant's LoRA did not stay merged


# ------------------------------------------------------------------------------- errors
def test_bad_inputs_raise_value_errors(samples, tmp_path):
    adapter = tiny("chameleon")
    with pytest.raises(ValueError, match="rank"):
        FinetuneConfig(rank=0)
    with pytest.raises(ValueError, match="warmup_ratio"):
        FinetuneConfig.toy(warmup_ratio=1.0)
    with pytest.raises(ValueError, match="mix"):
        build_training_examples(adapter, samples, mix=("vqa", "retrieval"))
    with pytest.raises(ValueError, match="No samples"):
        finetune_lora(adapter, [], quick(), tmp_path / "empty", progress=False)
    with pytest.raises(ValueError, match="finished LoRA run"), finetuned(adapter, tmp_path / "nothing"):
        pass
    with pytest.raises(ValueError, match="finished LoRA run"):
        load_finetuned("tiny-chameleon", tmp_path / "nothing")
    assert FinetuneConfig.paper().effective_batch == 128
    assert (FinetuneConfig.paper().rank, FinetuneConfig.paper().alpha, FinetuneConfig.paper().lr) == (128, 256.0, 2e-5)


def test_instruction_and_vqa_mix_from_the_real_layouts(tmp_path):
    """The paper's mix: LLaVA-Instruct conversations + VQAv2 train questions, one task each."""
    write_llava_instruct(tmp_path / "llava")
    write_vqav2(tmp_path / "vqa", subtype="train2014")
    train = load_training_mix("llava_instruct+vqav2", data_dir=[tmp_path / "llava", tmp_path / "vqa"])
    adapter = tiny("chameleon")
    examples = build_training_examples(adapter, train)  # mix=None: what the data has
    assert [e.task for e in examples] == ["instruction"] * 4 + ["vqa"] * 5
    instructions = {uid: {h.replace("<image>", "").strip(): g for h, g in pairs} for uid, _, pairs in LLAVA_CONVERSATIONS}
    for example in examples[:4]:
        assert instructions[example.uid][example.prompt] == example.target
    assert examples[4].target == "ans0-0" and "Question 0?" in examples[4].prompt
    with pytest.raises(ValueError, match=r"No training sample has data for \['caption'\]"):
        build_training_examples(adapter, train, mix=("vqa", "caption"))
    with pytest.raises(ValueError, match="has data for none of the tasks"):
        build_training_examples(adapter, train, mix=("vqa",))
    out = finetune_lora(adapter, train, quick(max_steps=2), tmp_path / "run", progress=False)
    log = json.loads((out / TRAINING_LOG).read_text())
    assert log["mix"] == {"instruction": 4, "vqa": 5} and log["steps"] == 2


def test_a_retrained_base_model_does_not_pick_up_the_old_adapter(samples, tmp_path):
    from narrowgate_utils import models

    original = tiny("chameleon")
    checkpoint = tmp_path / "checkpoint"
    original.model.save_pretrained(checkpoint)
    original.processor.save_pretrained(checkpoint)
    finetune_lora(models.load(checkpoint), samples[:6], quick(max_steps=1), tmp_path / "run", progress=False)
    # same model id and data, rewritten weights (as after retraining a toy model)
    finetune_lora(models.load(checkpoint), samples[:6], quick(max_steps=1), tmp_path / "run", progress=False)
    original.model.save_pretrained(checkpoint)
    with pytest.raises(ValueError, match="different model, examples or config"):
        finetune_lora(models.load(checkpoint), samples[:6], quick(max_steps=1), tmp_path / "run", progress=False)
