"""Loading and attention at natural image sizes, on the stand-ins (issue 13).

* the vision towers keep fused attention (eager only where attention weights are read);
* ``remote=True`` builds the meta model of an auto-class family (Qwen2-VL);
* a CUDA load goes straight onto the GPU (``device_map``), never through host RAM;
* f_j^l (eq. 2) over variable-resolution images matches span positions by name.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from narrowgate_utils import models
from narrowgate_utils.data.sample import Sample
from narrowgate_utils.experiments import attention
from narrowgate_utils.metrics import span_token_names
from narrowgate_utils.standin import write_standin
from narrowgate_utils.tracing import cross_modal_attention_profile
from standin_fixtures import IMAGE_SIZES, natural_image

TEXT = "This animal is a"


@pytest.fixture(scope="module")
def pixtral_dir(tmp_path_factory) -> str:
    return str(write_standin("pixtral", tmp_path_factory.mktemp("pixtral") / "pixtral"))


def test_vision_tower_keeps_fused_attention_while_the_language_model_is_eager(pixtral_dir):
    config = models.load(pixtral_dir).model.config
    assert config.vision_config._attn_implementation == "sdpa", "eager over all patches of a batch: ~94 GB per layer"
    assert config.text_config._attn_implementation == "eager", "post-softmax weights are read in the language model"
    assert models.load(pixtral_dir, attn_implementation="sdpa").model.config.text_config._attn_implementation == "sdpa"


def test_remote_load_of_an_auto_class_family_builds_the_meta_model(tmp_path):
    directory = write_standin("qwen2_vl", tmp_path / "qwen")
    adapter = models.load(directory, remote=True)
    assert type(adapter.model).__name__ == "Qwen2VLForConditionalGeneration"
    assert all(p.is_meta for p in adapter.model.parameters()) and not adapter.has_weights


def test_cuda_load_goes_straight_to_the_device(tmp_path, monkeypatch):
    directory = write_standin("llava", tmp_path / "llava")
    seen = {}
    cls = models.registry.adapter_class("llava").model_class()
    original = cls.from_pretrained.__func__

    def spy(klass, *args, **kwargs):
        seen.update(kwargs)
        kwargs["device_map"] = None  # this machine has no GPU: load on the CPU once the request is recorded
        return original(klass, *args, **kwargs)

    monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    models.load(directory, device="cuda:0", dtype="auto")
    assert seen["device_map"] == "cuda:0" and seen["dtype"] == torch.bfloat16
    models.load(directory, device="cpu")
    assert seen["device_map"] is None


def test_attention_profile_over_variable_resolution_images_matches_positions_by_name(pixtral_dir):
    adapter = models.load(pixtral_dir)
    samples = [Sample(uid=f"s{k}", image=natural_image(size, (90, 60, 30), seed=k), label=0,
                      class_name="fox")
               for k, size in enumerate(IMAGE_SIZES)]
    batch = adapter.build_batch([s.image for s in samples], [TEXT] * len(samples))
    assert len({len(layout.image_span) for layout in batch.layouts}) == 3, "three different span lengths"
    raw = cross_modal_attention_profile(adapter, batch, normalize=False)  # [L, B, longest span]
    # by hand: each sample alone, its raw attention summed per position name, absent names count as zero
    totals: dict[str, np.ndarray] = {}
    for row, layout in enumerate(batch.layouts):
        alone = cross_modal_attention_profile(adapter, adapter.build_batch([samples[row].image], [TEXT]), normalize=False)
        np.testing.assert_allclose(raw[:, row, :len(layout.image_span)], alone[:, 0], rtol=1e-4, atol=1e-7)
        assert np.all(raw[:, row, len(layout.image_span):] == 0), "zero past the row's own span"
        for j, name in enumerate(span_token_names(layout)[0]):
            totals[name] = totals.get(name, 0) + alone[:, 0, j]
    profile, names, groups = attention.mean_attention_profile(adapter, samples, TEXT, batch_size=2)
    assert sorted(names) == sorted(totals) and len(names) == len(set(names))
    expected = np.stack([totals[name] for name in names], axis=1)
    np.testing.assert_allclose(profile, expected / expected.sum(axis=1, keepdims=True), rtol=1e-4, atol=1e-8)
    assert names.index("[EOI]") > names.index("image 1024"), "names stay in span order"
    shares = attention.attention_shares(profile, names, groups, adapter.check_layers(None), threshold=0.01)
    assert np.allclose(shares.groupby("layer")["share"].sum(), 1.0)
