"""Table 1 ablations: A_img→text keys, numbered positions, skipped ablations, knockout modes."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_models import TEXTS, images, tiny

from narrowgate_utils.datasets import load_samples
from narrowgate_utils.experiments import knockout, masked_finetune
from narrowgate_utils.interventions import knockout_attention
from narrowgate_utils.layout import PositionOutOfRange

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("family", ["chameleon", "emu3", "pixtral"])
def test_img_to_text_blocks_soi_and_the_image_span_but_not_eoi_or_earlier_text(family):
    adapter = tiny(family)
    batch = adapter.build_batch(images(family, 2), TEXTS)
    blocked = knockout.ablation_sources(batch, "img_to_text", RNG)
    open_soi = knockout.ablation_sources(batch, "img_to_text_open_soi", RNG)
    for layout, keys, keys_open in zip(batch.layouts, blocked, open_soi):
        start = layout.soi if layout.soi is not None else layout.first_image
        assert keys == list(range(start, layout.eoi))  # 0 < j < N_EOI: [SOI] .. last image-span token
        assert keys_open == [p for p in keys if p != layout.soi]
        assert layout.eoi not in keys and not set(keys) & set(layout.prompt_text_positions)
        assert set(layout.image_positions) | set(layout.row_separators) <= set(keys)
    if batch.layouts[0].soi is None:
        assert blocked == open_soi


def test_img_to_text_knockout_zeroes_text_attention_to_soi():
    adapter = tiny("chameleon")
    batch = adapter.build_batch(images("chameleon", 2), TEXTS)
    with torch.no_grad():
        plain = adapter.model(**batch.inputs, output_attentions=True).attentions
    for ablation, soi_blocked in (("img_to_text", True), ("img_to_text_open_soi", False)):
        sources = knockout.ablation_sources(batch, ablation, RNG)
        with knockout_attention(adapter, batch, sources, "text"), torch.no_grad():
            blocked = adapter.model(**batch.inputs, output_attentions=True).attentions
        for row, layout in enumerate(batch.layouts):
            text = list(layout.text_positions)
            to_soi = blocked[0][row][:, text, layout.soi]  # layer 0: same inputs, post-softmax zeroing only
            assert torch.all(to_soi == 0) if soi_blocked else torch.equal(to_soi, plain[0][row][:, text, layout.soi])
            assert torch.all(blocked[0][row][:, text, layout.eoi] > 0)


def test_numbered_positions_outside_a_row_image_raise_position_out_of_range():
    adapter = tiny("chameleon")
    batch = adapter.build_batch(images("chameleon", 2), TEXTS)
    layout = batch.layouts[0]
    inside = layout.first_image - layout.pad_offset
    assert knockout.ablation_sources(batch, f"abs:{inside}", RNG) == [[l.first_image] for l in batch.layouts]
    assert knockout.ablation_sources(batch, "image_index:2", RNG) == [[l.image_positions[1]] for l in batch.layouts]
    on_text = layout.eoi + 1 - layout.pad_offset
    with pytest.raises(PositionOutOfRange, match="outside the image"):
        knockout.ablation_sources(batch, f"abs:{on_text}", RNG)
    with pytest.raises(PositionOutOfRange):
        knockout.ablation_sources(batch, f"image_index:{len(layout.image_positions) + 1}", RNG)


def test_knockout_table_skips_ablations_an_image_lacks_and_records_the_mode():
    adapter = tiny("chameleon")
    samples = load_samples("toy", split="train", n=2)
    with pytest.warns(UserWarning, match="Ablation 'abs:5000' skipped"):
        table = knockout.knockout_table(adapter, samples, ["vqa"], ["none", "abs:5000", "image_index:2"], None, [],
                                        batch_size=2, mode="pre_softmax", max_new_tokens={"vqa": 1})
    assert list(table["ablation"]) == ["none", "image_index:2"]
    assert set(table["mode"]) == {"pre_softmax"} and "vqa_accuracy" in table
    with pytest.raises(ValueError, match="Unknown knockout mode"):
        knockout.knockout_table(adapter, samples, ["vqa"], ["none"], None, [], mode="zero")


def test_high_attention_ablations_without_chapter_02_warns_and_adds_nothing(tmp_path):
    with pytest.warns(UserWarning, match="02_cross_modal_attention.ipynb was not run"):
        assert knockout.high_attention_ablations(tmp_path / "missing.csv", "toy-native") == []
    shares = pd.DataFrame({"model": ["m"] * 4, "layer": [0, 1, 0, 1], "token": ["image 7", "image 7", "[EOI]", "[EOI]"],
                           "share": [0.3, 0.2, 0.5, 0.5]})
    shares.to_csv(tmp_path / "shares.csv", index=False)
    assert knockout.high_attention_ablations(tmp_path / "shares.csv", "m") == ["image_index:7"]


def test_before_after_table_reports_both_knockout_modes(monkeypatch):
    """The masked run trains with a pre-softmax block; the paper evaluates post-softmax: report both."""
    calls = []

    def fake_scores(adapter, samples, tasks, ablation, layers, class_prompt, class_names, seed=0, mode="post_softmax",
                    **kwargs):
        calls.append((adapter.family, ablation, mode))
        return {"vqa_accuracy": {"none": 1.0, "eoi": 0.5 if mode == "pre_softmax" else 0.2}[ablation]}

    monkeypatch.setattr(knockout, "evaluate_tasks", fake_scores)
    models = {"before": tiny("chameleon"), "masked": tiny("llava")}
    table = masked_finetune.before_after_table(models, [], ["vqa"], ["none", "eoi"], None, [])
    assert sorted(calls) == sorted([("chameleon", "none", "pre_softmax"), ("chameleon", "eoi", "pre_softmax"),
                                    ("chameleon", "eoi", "post_softmax"), ("llava", "none", "pre_softmax"),
                                    ("llava", "eoi", "pre_softmax"), ("llava", "eoi", "post_softmax")])
    wide = table.pivot_table(index=["variant", "mode"], columns="ablation", values="vqa_accuracy")
    assert wide.shape == (4, 2) and not wide.isna().any().any()
    assert wide.loc[("masked", "pre_softmax"), "eoi"] == 0.5 and wide.loc[("masked", "post_softmax"), "eoi"] == 0.2
    assert (wide["none"] == 1.0).all()  # the baseline is computed once and listed under both modes
    only_post = masked_finetune.before_after_table(models, [], ["vqa"], ["eoi"], None, [], modes=["post_softmax"])
    assert set(only_post["mode"]) == {"post_softmax"}
    with pytest.raises(ValueError, match="modes must be"):
        masked_finetune.before_after_table(models, [], ["vqa"], ["eoi"], None, [], modes=["sideways"])
