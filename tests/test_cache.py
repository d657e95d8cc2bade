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


# ------------------------------------------------------------------ per-batch streaming
class Parts:
    """compute_part stand-in: part i is [2, n_i, 3] filled with i; may fail at one part."""

    def __init__(self, sizes: list[int], fail_at: int | None = None, axis: int = 0) -> None:
        self.sizes, self.fail_at, self.axis, self.calls = sizes, fail_at, axis, []

    def __call__(self, i: int) -> dict[str, np.ndarray]:
        if i == self.fail_at:
            raise KeyboardInterrupt("killed")
        self.calls.append(i)
        n = np.arange(self.sizes[i])
        return {"x": np.full((2, self.sizes[i], 3), i, dtype=np.float32), "n": n[None] if self.axis == 1 else n}


def test_parts_resume_after_a_kill_without_recomputing_finished_batches(tmp_path):
    store, key, sizes = ActivationStore(tmp_path), make_key("m", "toy", what="streamed"), [4, 4, 4, 2]
    killed = Parts(sizes, fail_at=2, axis=1)
    with pytest.raises(KeyboardInterrupt):
        store.get_or_compute_parts(key, 4, killed, axis=1)
    assert killed.calls == [0, 1] and not store.has(key)
    assert len(list(tmp_path.glob("*.json"))) == 2  # the two finished batches are on disk
    resumed = Parts(sizes, axis=1)
    out = store.get_or_compute_parts(key, 4, resumed, axis=1)
    assert resumed.calls == [2, 3]  # batches 0 and 1 were not recomputed
    np.testing.assert_array_equal(out["x"][0, :, 0], np.repeat(np.arange(4), sizes).astype(np.float32))
    assert out["x"].shape == (2, 14, 3) and out["n"].tolist() == [[0, 1, 2, 3] * 3 + [0, 1]]
    assert len(list(tmp_path.glob("*.json"))) == 1 and store.has(key)  # parts deleted, one entry left
    again = Parts(sizes, axis=1)
    np.testing.assert_array_equal(store.get_or_compute_parts(key, 4, again, axis=1)["x"], out["x"])
    assert again.calls == []


def test_corrupt_part_is_recomputed(tmp_path):
    store, key = ActivationStore(tmp_path), make_key("m", "toy", what="corrupt-part")
    with pytest.raises(KeyboardInterrupt):
        store.get_or_compute_parts(key, 3, Parts([2, 2, 2], fail_at=2), axis=0)
    part_key = {"part_of": key, "part": 1, "n_parts": 3}
    data_path, _ = store.paths(part_key)
    data_path.write_bytes(data_path.read_bytes()[:-7])  # a torn write
    resumed = Parts([2, 2, 2])
    out = store.get_or_compute_parts(key, 3, resumed, axis=0)
    assert resumed.calls == [1, 2]
    assert out["x"].shape == (6, 2, 3) and out["n"].tolist() == [0, 1, 0, 1, 0, 1]


def test_parts_that_do_not_line_up_are_rejected(tmp_path):
    store = ActivationStore(tmp_path)
    ragged = {0: {"x": np.zeros((2, 3))}, 1: {"x": np.zeros((2, 4))}}
    with pytest.raises(ValueError, match="do not line up along axis 0"):
        store.get_or_compute_parts(make_key("m", "toy"), 2, ragged.__getitem__, axis=0)
    with pytest.raises(ValueError, match="n_parts must be >= 1"):
        store.get_or_compute_parts(make_key("m", "toy"), 0, ragged.__getitem__)


def test_string_parts_keep_their_full_width(tmp_path):
    store = ActivationStore(tmp_path)
    texts = {0: {"text": np.array(["a", "bb"])}, 1: {"text": np.array(["a much longer answer"])}}
    out = store.get_or_compute_parts(make_key("m", "toy", what="texts"), 2, texts.__getitem__)
    assert out["text"].tolist() == ["a", "bb", "a much longer answer"]
    assert store.load(make_key("m", "toy", what="texts"))["text"].tolist() == out["text"].tolist()


def test_parts_are_joined_into_memory_mapped_npy_files_in_the_requested_dtype(tmp_path):
    store, key = ActivationStore(tmp_path), make_key("m", "toy", what="float16")
    out = store.get_or_compute_parts(key, 3, Parts([2, 3, 1], axis=1), axis=1, dtype="float16")
    assert isinstance(out["x"], np.memmap) and out["x"].dtype == np.float16 and not out["x"].flags.writeable
    assert out["n"].dtype == np.arange(1).dtype  # only floating arrays are narrowed
    np.testing.assert_array_equal(out["x"][1, :, 2], [0, 0, 1, 1, 1, 2])
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".npy", ".npy"]  # no part, no temporary file
    loaded = store.load(key)
    assert isinstance(loaded["x"], np.memmap)
    np.testing.assert_array_equal(loaded["x"], out["x"])
    store.delete(key)
    assert not any(tmp_path.iterdir())


def test_a_corrupt_or_missing_npy_file_makes_the_joined_entry_recompute(tmp_path):
    store, key = ActivationStore(tmp_path), make_key("m", "toy", what="npy-corrupt")
    store.get_or_compute_parts(key, 2, Parts([2, 2]), dtype="float16")
    (npy,) = (p for p in tmp_path.glob("*.npy") if np.load(p).dtype == np.float16)
    raw = bytearray(npy.read_bytes())
    raw[-1] ^= 0xFF
    npy.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="does not match its recorded size/checksum"):
        store.load(key)
    again = Parts([2, 2])
    np.testing.assert_array_equal(store.get_or_compute_parts(key, 2, again, dtype="float16")["x"][:, 0, 0], [0, 0, 1, 1])
    assert again.calls == [0, 1]
    npy.unlink()
    assert not store.has(key)
    store.save(key, {"x": np.zeros(1)})  # an npz entry replaces the npy one cleanly
    assert not list(tmp_path.glob("*.npy")) and store.load(key)["x"].tolist() == [0.0]


def test_float16_overflow_is_an_error_not_an_infinity(tmp_path):
    store = ActivationStore(tmp_path)
    with pytest.raises(ValueError, match="beyond float16's range"):
        store.get_or_compute_parts(make_key("m", "toy"), 1, lambda i: {"x": np.array([1.0, 7e4])}, dtype="float16")
