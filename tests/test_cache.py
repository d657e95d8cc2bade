"""ActivationStore: stable keys, round trips, atomic entries, corruption -> recompute."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from narrowgate_utils.cache import ActivationStore, key_hash, make_key


def arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"resid": rng.standard_normal((3, 4, 8)).astype(np.float32), "labels": np.arange(4)}


class Counter:
    def __init__(self, seed: int = 0) -> None:
        self.calls, self.seed = 0, seed

    def __call__(self) -> dict[str, np.ndarray]:
        self.calls += 1
        return arrays(self.seed)


def test_key_hash_is_stable_and_sensitive():
    key = make_key("tiny-chameleon", "toy", layers=(0, 2), positions="eoi", seed=np.int64(3))
    reordered = {"params": {"seed": 3, "positions": "eoi", "layers": [0, 2]}, "dataset": "toy", "model_id": "tiny-chameleon"}
    assert key_hash(key) == key_hash(reordered)
    assert key_hash(key) != key_hash(make_key("tiny-chameleon", "toy", layers=(0, 2), positions="eoi", seed=4))
    assert key_hash(key) != key_hash(make_key("tiny-llava", "toy", layers=(0, 2), positions="eoi", seed=3))
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        key_hash({"model": object()})


def test_round_trip_and_get_or_compute(tmp_path):
    store = ActivationStore(tmp_path / "store")
    key = make_key("m", "d", layer=1)
    fn = Counter()
    first = store.get_or_compute(key, fn)
    second = store.get_or_compute(key, fn)
    assert fn.calls == 1
    for name, expected in arrays().items():
        np.testing.assert_array_equal(first[name], expected)
        np.testing.assert_array_equal(second[name], expected)
        assert second[name].dtype == expected.dtype
    metadata = json.loads(store.paths(key)[1].read_text())
    assert metadata["arrays"]["resid"] == {"shape": [3, 4, 8], "dtype": "<f4"}
    assert metadata["key"] == {"dataset": "d", "model_id": "m", "params": {"layer": 1}}
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == sorted(p.name for p in store.paths(key))
    store.save(key, {"x": torch.ones(2, 2)})  # tensors are accepted and overwrite cleanly
    np.testing.assert_array_equal(store.load(key)["x"], np.ones((2, 2), dtype=np.float32))


def test_truncated_data_is_detected_and_recomputed(tmp_path):
    store = ActivationStore(tmp_path)
    key = make_key("m", "d", layer=2)
    fn = Counter()
    store.get_or_compute(key, fn)
    data_path, _ = store.paths(key)
    data_path.write_bytes(data_path.read_bytes()[:-50])
    assert not store.has(key)
    with pytest.raises(ValueError, match="truncated or modified"):
        store.load(key)
    result = store.get_or_compute(key, fn)
    assert fn.calls == 2 and store.has(key)
    np.testing.assert_array_equal(result["resid"], arrays()["resid"])


def test_same_size_corruption_and_missing_pieces_are_detected(tmp_path):
    store = ActivationStore(tmp_path)
    key = make_key("m", "d", layer=3)
    fn = Counter()
    store.get_or_compute(key, fn)
    data_path, meta_path = store.paths(key)
    raw = bytearray(data_path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # flip one byte, size unchanged
    data_path.write_bytes(bytes(raw))
    assert not store.has(key)
    store.get_or_compute(key, fn)
    assert fn.calls == 2
    meta_path.write_text("{not json")  # interrupted/corrupt sidecar
    assert not store.has(key)
    meta_path.unlink()  # data without metadata: never completed
    assert not store.has(key)
    store.get_or_compute(key, fn)
    assert fn.calls == 3
    data_path.unlink()
    assert not store.has(key)
    store.delete(key)
    assert not meta_path.exists()


def test_bad_values_raise(tmp_path):
    store = ActivationStore(tmp_path)
    with pytest.raises(ValueError, match="non-empty dict"):
        store.save(make_key("m", "d"), {})
    with pytest.raises(ValueError, match="dtype object"):
        store.save(make_key("m", "d"), {"bad": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="No valid cache entry"):
        store.load(make_key("m", "never"))
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
