"""Text→image chapter: decode loop, knockout plumbing and scoring on the tiny Chameleon (offline, seconds)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from narrowgate_utils.experiments import text_to_image as t2i
from narrowgate_utils.tiny import build_tiny
from narrowgate_utils.tiny.chameleon import N_CODES

torch.set_num_threads(1)
CAPTIONS = ["a red circle", "a blue square", "a green circle", "a red square"]
METAS = [{"color": c.split()[1], "shape": c.split()[2]} for c in CAPTIONS]


@pytest.fixture(scope="module")
def adapter():
    return build_tiny("chameleon", seed=3)


@pytest.fixture(scope="module")
def setup(adapter):
    return t2i.caption_prompts(adapter, CAPTIONS, METAS), t2i.image_code_ids(adapter, N_CODES)


def test_prompt_roles_and_ids(adapter, setup):
    prompts, table = setup
    assert prompts.roles == ("[BOS]", "a", "colour word", "last text (shape word)", "[SOI]")
    assert prompts.position("shape word") == 3 and prompts.position("last text") == 3
    assert prompts.caption_positions == [1, 2, 3]
    assert prompts.input_ids[:, 0].eq(adapter.tokenizer.bos_token_id).all()
    assert prompts.input_ids[:, -1].eq(adapter.token_id("<racm3:break>")).all()
    assert len(set(table.tolist())) == N_CODES
    assert set(table.tolist()) <= adapter.image_token_ids
    with pytest.raises(ValueError, match="same"):
        t2i.caption_prompts(adapter, ["a red circle", "red"])


def test_cached_decode_equals_full_recompute(adapter, setup):
    prompts, table = setup
    cached = t2i.generate_image_codes(adapter, prompts.input_ids, table, 12)
    full = t2i.generate_image_codes(adapter, prompts.input_ids, table, 12, use_cache=False)
    assert cached.shape == (4, 12) and int(cached.max()) < N_CODES
    assert torch.equal(cached, full)
    sampled = [t2i.generate_image_codes(adapter, prompts.input_ids, table, 12, temperature=1.0, seed=s) for s in (0, 0, 1)]
    assert torch.equal(sampled[0], sampled[1]) and not torch.equal(sampled[0], sampled[2])


def test_ablation_positions(adapter, setup):
    prompts, table = setup
    batch = t2i.completed_batch(adapter, prompts, table, torch.zeros(4, 6, dtype=torch.long))
    assert batch.layouts[0].image_positions == tuple(range(5, 11)) and batch.layouts[0].soi == 4
    keys, queries = t2i.ablation_positions(prompts, batch.layouts, "last_text")
    assert keys[0] == [3] and queries[0] == [4, *range(5, 11)]
    keys, queries = t2i.ablation_positions(prompts, batch.layouts, "text_except_soi")
    assert keys[0] == [1, 2, 3] and queries[0] == list(range(5, 11))
    assert t2i.ablation_positions(prompts, batch.layouts, "color_word")[0][0] == [2]
    assert t2i.ablation_positions(prompts, batch.layouts, "none") is None
    with pytest.raises(ValueError, match="Unknown"):
        t2i.ablation_positions(prompts, batch.layouts, "eoi")


def test_text_knockout_changes_codes_and_isolates_caption(adapter, setup):
    prompts, table = setup
    base = t2i.generate_under_ablation(adapter, prompts, table, 10, "none")
    cut = t2i.generate_under_ablation(adapter, prompts, table, 10, "all_text", mode="pre_softmax")
    assert not torch.equal(base, cut)
    # with every caption token hidden (pre-softmax) the image cannot depend on the caption
    assert all(torch.equal(cut[0], row) for row in cut)
    info = t2i.caption_information(adapter, prompts, table, base, "all_text", mode="pre_softmax")
    assert info["caption_information"] == pytest.approx(0.0, abs=1e-4)
    assert t2i.caption_information(adapter, prompts, table, base)["caption_information"] != pytest.approx(0.0, abs=1e-3)


def test_code_nll_is_teacher_forced_loss(adapter, setup):
    prompts, table = setup
    codes = t2i.generate_image_codes(adapter, prompts.input_ids, table, 5)
    nll = t2i.code_nll(adapter, prompts, table, codes, batch_size=3)
    ids = torch.cat([prompts.input_ids, table[codes]], 1)
    with torch.no_grad():
        hidden = adapter.model.model(input_ids=ids).last_hidden_state
        logp = torch.log_softmax(adapter.model.lm_head(hidden[:, 4:9])[:, :, table], -1)
    expected = -logp.gather(-1, codes[:, :, None])[:, :, 0]
    np.testing.assert_allclose(nll, expected.numpy(), rtol=1e-4, atol=1e-5)
    # greedy codes are each step's argmax, so their NLL is at most log(K)
    assert (nll <= np.log(N_CODES) + 1e-5).all()


def test_mismatched_is_a_derangement(setup):
    prompts, _ = setup
    other = t2i.mismatched(prompts, seed=5)
    rows = [next(j for j in range(4) if torch.equal(other.input_ids[i], prompts.input_ids[j])) for i in range(4)]
    assert sorted(rows) == [0, 1, 2, 3] and all(r != i for i, r in enumerate(rows))


def test_attribute_accuracy_hand_made():
    truth = [{"color": "red", "shape": "circle"}, {"color": "blue", "shape": "square"},
             {"color": "red", "shape": "star"}, {"color": "pink", "shape": "ring"}]
    predicted = {"color": ["red", "blue", "blue", "pink"], "shape": ["circle", "ring", "star", "ring"]}
    assert t2i.attribute_accuracy(predicted, truth) == {"color_accuracy": 0.75, "shape_accuracy": 0.75,
                                                        "class_accuracy": 0.5}
    with pytest.raises(ValueError, match="length"):
        t2i.attribute_accuracy({"color": ["red"], "shape": ["circle"]}, truth)


def test_knockout_effects_and_verdict():
    table = pd.DataFrame({"ablation": ["none", "last_text", "text_except_last", "soi", "text_except_soi", "all_text"],
                          "caption_information": [3.0, 0.6, 2.8, 2.0, 0.0, 0.5]})
    effects = t2i.knockout_effects(table, "caption_information").set_index("candidate")
    assert effects.loc["last text", "necessity"] == pytest.approx(0.96)
    assert effects.loc["last text", "leak"] == pytest.approx(0.08)
    assert effects.loc["[SOI]", "necessity"] == pytest.approx(0.4)
    assert effects.loc["[SOI]", "leak"] == pytest.approx(1.2)
    verdict = t2i.bottleneck_verdict(effects.reset_index())
    assert "last text: removing it costs 96%" in verdict and "a narrow gate" in verdict.splitlines()[0]
    assert "not a bottleneck" in verdict.splitlines()[1]
    flat = table.assign(caption_information=1.0)
    with pytest.raises(ValueError, match="does not lower"):
        t2i.knockout_effects(flat, "caption_information")


def test_duplicate_words_get_positions(adapter):
    prompts = t2i.caption_prompts(adapter, ["a red a circle", "a blue a square"])
    assert prompts.roles == ("[BOS]", "a @1", "text 2", "a @3", "last text (text 4)", "[SOI]")


def test_prompt_overlap_skips_shared_prefix(adapter, setup):
    prompts, table = setup
    batch = t2i.completed_batch(adapter, prompts, table, torch.zeros(4, 3, dtype=torch.long))
    labels = [m["color"] for m in METAS]  # red, blue, green, red
    chi = t2i.prompt_overlap(adapter, batch, prompts.roles, labels, k=1, layers=[0, 3], batch_size=3)
    tokens = list(dict.fromkeys(chi.token))
    # [BOS] and the shared first word "a" are identical in every row: no χ there
    assert tokens == ["colour word", "last text (shape word)", "[SOI]", "image codes (mean)", "class one-hot (ceiling)"]
    # k=1: the two red rows find each other, the blue and green rows cannot
    assert chi[chi.token == "class one-hot (ceiling)"].chi.tolist() == [0.5, 0.5]
    assert chi[chi.token == "colour word"].chi.iloc[0] == 0.5  # the colour word's embedding is the colour
