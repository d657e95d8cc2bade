"""Per-batch streamed, resumable extraction through the activation cache (tiny models, CPU)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from tiny_models import images, tiny

from narrowgate_utils.data.sample import Sample
from narrowgate_utils.experiments import attention, knockout, modality_gap, overlap, steering

PROMPT = "this animal is a"


def samples(family: str, n: int) -> list[Sample]:
    return [Sample(uid=f"s{i}", image=Image.fromarray(array), label=i % 2, class_name=("red", "blue")[i % 2],
                   captions=("a red shape", "a round thing"))
            for i, array in enumerate(images(family, n, seed=3))]


class KillAfter:
    """Wraps a per-batch function; raises (like a killed job) once ``limit`` batches ran."""

    def __init__(self, fn, limit: int | None = None) -> None:
        self.fn, self.limit, self.calls = fn, limit, 0

    def __call__(self, *args, **kwargs):
        if self.limit is not None and self.calls >= self.limit:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        return self.fn(*args, **kwargs)


@pytest.mark.parametrize("family", ["chameleon", "llava"])
def test_killed_overlap_extraction_resumes_and_matches_the_in_memory_run(family, tmp_path, monkeypatch):
    adapter, data = tiny(family), samples(family, 7)
    layers = adapter.check_layers(None)
    reference = overlap.collect_overlap_vectors(adapter, data, PROMPT, layers, max_internal=3, batch_size=3)
    killed = KillAfter(overlap.overlap_batch, limit=2)
    monkeypatch.setattr(overlap, "overlap_batch", killed)
    with pytest.raises(KeyboardInterrupt):
        overlap.overlap_vectors(adapter, data, PROMPT, layers, max_internal=3, batch_size=3, cache_dir=tmp_path)
    resumed = KillAfter(killed.fn)
    monkeypatch.setattr(overlap, "overlap_batch", resumed)
    streamed = overlap.overlap_vectors(adapter, data, PROMPT, layers, max_internal=3, batch_size=3, cache_dir=tmp_path)
    assert resumed.calls == 1  # 7 samples in batches of 3: only the third batch was left
    assert streamed.keys() == reference.keys()
    for name in reference:  # the cache holds float16, memory-mapped: equal within float16 rounding
        assert isinstance(streamed[name], np.memmap) and streamed[name].dtype == np.float16
        np.testing.assert_allclose(streamed[name], reference[name], rtol=2 ** -11, atol=1e-6)
    labels = [s.label for s in data]
    chi = overlap.overlap_profile(streamed, labels, layers, k=2)
    np.testing.assert_allclose(chi.chi, overlap.overlap_profile(reference, labels, layers, k=2).chi, atol=1e-12)
    again = KillAfter(killed.fn, limit=0)  # a finished run needs no forward pass
    monkeypatch.setattr(overlap, "overlap_batch", again)
    overlap.overlap_vectors(adapter, data, PROMPT, layers, max_internal=3, batch_size=3, cache_dir=tmp_path)


def test_streamed_modality_and_attention_match_the_in_memory_functions(tmp_path):
    adapter, data = tiny("chameleon"), samples("chameleon", 5)
    layers = adapter.check_layers(None)
    image, text = modality_gap.collect_modality_vectors(adapter, data, layers, batch_size=2, seed=4)
    streamed = modality_gap.modality_vectors(adapter, data, layers, batch_size=2, seed=4, cache_dir=tmp_path)
    np.testing.assert_allclose(streamed["image"], image, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(streamed["text"], text, rtol=1e-5, atol=1e-6)
    assert image.shape[:2] == (len(layers), 5)
    mean, names, groups = attention.mean_attention_profile(adapter, data, PROMPT, layers, batch_size=2)
    cached, cached_names, cached_groups = attention.attention_profile(adapter, data, PROMPT, layers, batch_size=2,
                                                                      cache_dir=tmp_path)
    np.testing.assert_allclose(cached, mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(mean.sum(axis=1), 1.0, rtol=1e-6)
    assert (cached_names, cached_groups) == (names, groups)


def test_killed_knockout_generation_resumes_with_the_same_random_draws(tmp_path, monkeypatch):
    adapter, data = tiny("chameleon"), samples("chameleon", 5)
    layers, prompts = adapter.check_layers(None), [PROMPT] * 5
    run = dict(ablation="random", layers=layers, seed=3, max_new_tokens=3, batch_size=2, n_random=2)
    reference = knockout.generate_under_knockout(adapter, data, prompts, **run)
    killed = KillAfter(adapter.generate, limit=2)
    monkeypatch.setattr(adapter, "generate", killed)
    with pytest.raises(KeyboardInterrupt):
        knockout.generate_under_knockout(adapter, data, prompts, cache=tmp_path, **run)
    resumed = KillAfter(killed.fn)
    monkeypatch.setattr(adapter, "generate", resumed)
    assert knockout.generate_under_knockout(adapter, data, prompts, cache=tmp_path, **run) == reference
    assert resumed.calls == 1  # batches of 2: the third (last) batch was the only one left
    vectors = knockout.last_token_vectors(adapter, data, PROMPT, "random", layers, seed=3, batch_size=2, n_random=2)
    cached = knockout.last_token_vectors(adapter, data, PROMPT, "random", layers, seed=3, batch_size=2, n_random=2,
                                         cache=tmp_path)
    np.testing.assert_allclose(cached, vectors, rtol=1e-5, atol=1e-6)
    assert vectors.shape == (5, adapter.model.config.get_text_config().hidden_size)


def test_killed_steering_sweep_resumes_and_matches(tmp_path, monkeypatch):
    adapter, data = tiny("chameleon"), samples("chameleon", 6)
    couples = list(zip(data[:3], data[3:]))
    reference = steering.steering_profile(adapter, couples, PROMPT, "eoi", "resid", [0, 1], batch_size=2)
    killed = KillAfter(steering.patch_activation, limit=2)  # the first batch patches layers 0 and 1
    monkeypatch.setattr(steering, "patch_activation", killed)
    with pytest.raises(KeyboardInterrupt):
        steering.steering_profile(adapter, couples, PROMPT, "eoi", "resid", [0, 1], batch_size=2, cache=tmp_path)
    resumed = KillAfter(killed.fn)
    monkeypatch.setattr(steering, "patch_activation", resumed)
    streamed = steering.steering_profile(adapter, couples, PROMPT, "eoi", "resid", [0, 1], batch_size=2, cache=tmp_path)
    assert resumed.calls == 2  # only the second batch (one pair, two layers) was left
    assert list(streamed.layer) == [0, 1] and 0 <= streamed.similarity.min() <= streamed.similarity.max() <= 1
    np.testing.assert_allclose(streamed[["similarity", "baseline"]].to_numpy(), reference[["similarity", "baseline"]].to_numpy(),
                               rtol=1e-5)
    assert streamed.switch_rate.notna().all() and streamed.switch_rate.equals(reference.switch_rate)
    assert streamed.switch_rate_argmax.equals(reference.switch_rate_argmax)
