"""On-disk store of extracted activations, keyed by what produced them.

An entry is a JSON sidecar holding the key parameters, every array's shape and dtype, and the
size and SHA-256 of each data file, plus its data: one ``.npz`` of named numpy arrays
(:meth:`ActivationStore.save`), or one ``.npy`` per array for an entry assembled from parts
(:meth:`ActivationStore.get_or_compute_parts`), which is read back memory-mapped so that host
memory stays flat in the number of samples. Every file is written atomically
(:func:`~narrowgate_utils.atomic.atomic_path`) and the sidecar is written last, so an entry is
valid only once complete: a missing, partial or corrupt file is treated as missing and
recomputed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path
from .console import progress_bar

logger = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]
FORMAT_VERSION = 1


def _canonical(value: Any) -> Any:
    """JSON-ready, order-independent form of key parameters (tuples, numpy scalars, paths, ranges)."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda item: str(item[0]))}
    if isinstance(value, (list, tuple, range)):
        return [_canonical(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_canonical(v) for v in value)
    if isinstance(value, np.ndarray):
        return _canonical(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"Key parameter {value!r} of type {type(value).__name__} is not JSON-serialisable; "
                     "use strings, numbers, booleans, lists or dicts.")


def key_hash(key_params: Mapping[str, Any]) -> str:
    """Stable hash of the key parameters (independent of dict order and Python session)."""
    text = json.dumps(_canonical(key_params), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def make_key(model_id: str, dataset: str, **params: Any) -> dict[str, Any]:
    """Key parameters for one extraction: model id, dataset and everything else that matters."""
    return {"model_id": str(model_id), "dataset": str(dataset), "params": params}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str) -> None:
    """``write(handle)`` into ``path`` through :func:`atomic_path`, synced to disk before the move."""
    with atomic_path(path) as tmp:
        with open(tmp, mode) as handle:
            write(handle)
        _fsync(tmp)


def _as_arrays(arrays: Mapping[str, Any]) -> Arrays:
    if not isinstance(arrays, Mapping) or not arrays:
        raise ValueError("ActivationStore saves a non-empty dict of arrays (name -> numpy array).")
    out: Arrays = {}
    for name, value in arrays.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        array = np.asarray(value)
        if array.dtype == object:
            raise ValueError(f"Array '{name}' has dtype object; store numeric or string arrays only.")
        out[str(name)] = array
    return out


def _narrowed(arrays: Arrays, dtype: np.dtype | None) -> Arrays:
    """Floating arrays cast to ``dtype`` (others unchanged); ValueError where a finite value overflows it."""
    if dtype is None:
        return arrays
    out: Arrays = {}
    for name, array in arrays.items():
        if np.issubdtype(array.dtype, np.floating) and array.dtype != dtype:
            finite = array[np.isfinite(array)]
            if finite.size and np.abs(finite).max() > np.finfo(dtype).max:
                raise ValueError(f"Array '{name}' holds values up to {np.abs(finite).max():.4g}, beyond {dtype.name}'s "
                                 f"range ({np.finfo(dtype).max:.4g}); run without the cache to keep float32.")
            array = array.astype(dtype)
        out[name] = array
    return out


def _line_up(records: list[dict[str, Any]], axis: int) -> dict[str, tuple[list[int], np.dtype]]:
    """Shape and dtype of each array once its parts (metadata ``arrays`` records) are joined along ``axis``."""
    out = {}
    for name, first in records[0].items():
        shapes = [record.get(name, {}).get("shape") for record in records]
        if any(shape is None or len(shape) <= axis or shape[:axis] + shape[axis + 1:] != first["shape"][:axis]
               + first["shape"][axis + 1:] for shape in shapes):
            raise ValueError(f"Parts of array '{name}' do not line up along axis {axis} (shapes {shapes}); "
                             "compute_part must return the same arrays, differing only along that axis.")
        total = list(first["shape"])
        total[axis] = sum(shape[axis] for shape in shapes)
        # strings: the widest part's width, so no text is cut
        out[name] = total, np.result_type(*[np.dtype(record[name]["dtype"]) for record in records])
    return out


class ActivationStore:
    """A directory of ``<hash>.json`` entries with their ``<hash>.npz`` or ``<hash>.<i>.npy`` data (module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def paths(self, key_params: Mapping[str, Any]) -> tuple[Path, Path]:
        """``(data_path, metadata_path)`` of the entry for ``key_params``."""
        digest = key_hash(key_params)
        return self.root / f"{digest}.npz", self.root / f"{digest}.json"

    def save(self, key_params: Mapping[str, Any], arrays: Mapping[str, Any]) -> Path:
        """Write ``arrays`` under ``key_params`` atomically; returns the data path."""
        data = _as_arrays(arrays)
        data_path, meta_path = self.paths(key_params)
        self.delete(key_params)  # an overwritten entry reads as missing until complete
        _atomic_write(data_path, lambda handle: np.savez(handle, **data), "wb")
        metadata = {
            "format_version": FORMAT_VERSION,
            "key": _canonical(key_params),
            "hash": key_hash(key_params),
            "arrays": {name: {"shape": list(a.shape), "dtype": a.dtype.str} for name, a in data.items()},
            "file_size": data_path.stat().st_size,
            "sha256": _sha256(data_path),
        }
        _atomic_write(meta_path, lambda handle: json.dump(metadata, handle, indent=1), "w")
        return data_path

    def _files(self, key_params: Mapping[str, Any], metadata: dict[str, Any]) -> list[tuple[Path, Any, Any]]:
        """``(path, recorded size, recorded SHA-256)`` of every data file of an entry."""
        if metadata.get("layout") == "npy":
            return [(self.root / Path(record["file"]).name, record.get("file_size"), record.get("sha256"))
                    for record in metadata["arrays"].values()]
        return [(self.paths(key_params)[0], metadata.get("file_size"), metadata.get("sha256"))]

    def _problem(self, key_params: Mapping[str, Any]) -> str | None:
        """Why the entry for ``key_params`` cannot be used, or None when it is complete and intact."""
        meta_path = self.paths(key_params)[1]
        if not meta_path.exists():
            return "no metadata (never written or interrupted)"
        try:
            metadata = json.loads(meta_path.read_text())
            files = self._files(key_params, metadata)
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            return f"unreadable metadata ({error})"
        if metadata.get("key") != _canonical(key_params):
            return "metadata belongs to different key parameters"
        for path, size, digest in files:
            if not path.exists():
                return f"data file {path.name} missing"
            if path.stat().st_size != size or _sha256(path) != digest:
                return f"data file {path.name} does not match its recorded size/checksum (truncated or modified)"
        return None

    def has(self, key_params: Mapping[str, Any]) -> bool:
        """Whether a complete, intact entry exists for ``key_params``."""
        return self._problem(key_params) is None

    def load(self, key_params: Mapping[str, Any]) -> Arrays:
        """Load the arrays stored under ``key_params`` (memory-mapped, read-only, for an entry
        assembled from parts); ValueError if missing or corrupt."""
        problem = self._problem(key_params)
        if problem is not None:
            raise ValueError(f"No valid cache entry for {_canonical(key_params)}: {problem}.")
        return self._read(key_params)

    def _read(self, key_params: Mapping[str, Any]) -> Arrays:
        """The arrays of an entry already checked by :meth:`_problem` (checked against their records)."""
        data_path, meta_path = self.paths(key_params)
        metadata = json.loads(meta_path.read_text())
        expected = metadata["arrays"]
        if metadata.get("layout") == "npy":
            arrays = {name: np.load(self.root / Path(record["file"]).name, mmap_mode="r", allow_pickle=False)
                      for name, record in expected.items()}
        else:
            with np.load(data_path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        for name, record in expected.items():
            array = arrays.get(name)
            if array is None or list(array.shape) != record["shape"] or array.dtype.str != record["dtype"]:
                raise ValueError(f"Cache entry {data_path.name}: array '{name}' does not match its recorded shape/dtype.")
        return arrays

    def get_or_compute(self, key_params: Mapping[str, Any], fn: Callable[[], Mapping[str, Any]]) -> Arrays:
        """Load the entry for ``key_params``, or call ``fn()`` (a dict of arrays), store and return it."""
        problem = self._problem(key_params)
        if problem is None:
            return self._read(key_params)
        data_path, meta_path = self.paths(key_params)
        if meta_path.exists():
            logger.warning("Recomputing cache entry %s: %s.", data_path.name, problem)
        arrays = _as_arrays(fn())
        self.save(key_params, arrays)
        return arrays

    def get_or_compute_parts(self, key_params: Mapping[str, Any], n_parts: int,
                             compute_part: Callable[[int], Mapping[str, Any]], axis: int = 0,
                             progress: str = "", dtype: str | np.dtype | None = None) -> Arrays:
        """Like :meth:`get_or_compute`, but computed and written one part (batch) at a time.

        Part ``i`` (``compute_part(i)``, a dict of arrays; floating arrays cast to ``dtype`` when
        given, e.g. float16) is stored as its own entry as soon as it is computed, so only one
        part's activations are in memory during extraction and a killed run resumes at the first
        missing part. The parts are then joined along ``axis`` into one ``.npy`` per array,
        written through a memory map one part at a time, stored as the entry for ``key_params``
        and deleted. The entry is returned (and later loaded) memory-mapped and read-only, so host
        memory stays flat in the number of parts; a finished entry is loaded without touching any
        part.
        """
        if n_parts < 1:
            raise ValueError(f"n_parts must be >= 1, got {n_parts}: there is nothing to compute.")
        if self._problem(key_params) is None:
            return self._read(key_params)
        narrow = None if dtype is None else np.dtype(dtype)
        keys = [{"part_of": _canonical(key_params), "part": i, "n_parts": n_parts} for i in range(n_parts)]
        for i in progress_bar(range(n_parts), progress, show=bool(progress), leave=False):
            if not self.has(keys[i]):
                self.save(keys[i], _narrowed(_as_arrays(compute_part(i)), narrow))
        self._assemble(key_params, keys, axis)
        for key in keys:
            self.delete(key)
        return self._read(key_params)

    def _assemble(self, key_params: Mapping[str, Any], part_keys: list[dict[str, Any]], axis: int) -> None:
        """Write the entry for ``key_params`` as one ``.npy`` per array, the parts joined along ``axis``."""
        layout = _line_up([json.loads(self.paths(key)[1].read_text())["arrays"] for key in part_keys], axis)
        self.delete(key_params)
        digest = key_hash(key_params)
        files = {name: self.root / f"{digest}.{i}.npy" for i, name in enumerate(layout)}
        with ExitStack() as stack:
            tmps = {name: stack.enter_context(atomic_path(path)) for name, path in files.items()}
            for name, (shape, dtype) in layout.items():
                np.lib.format.open_memmap(tmps[name], mode="w+", dtype=dtype, shape=tuple(shape))  # header, sized
            offsets = dict.fromkeys(layout, 0)
            for key in part_keys:
                for name, array in self.load(key).items():
                    index = [slice(None)] * array.ndim
                    index[axis] = slice(offsets[name], offsets[name] + array.shape[axis])
                    out = np.load(tmps[name], mmap_mode="r+")  # mapped per part: only this part's pages are resident
                    out[tuple(index)] = array
                    out.flush()
                    del out
                    offsets[name] += array.shape[axis]
            for tmp in tmps.values():
                _fsync(tmp)
        metadata = {
            "format_version": FORMAT_VERSION,
            "key": _canonical(key_params),
            "hash": digest,
            "layout": "npy",
            "arrays": {name: {"shape": shape, "dtype": dtype.str, "file": files[name].name,
                              "file_size": files[name].stat().st_size, "sha256": _sha256(files[name])}
                       for name, (shape, dtype) in layout.items()},
        }
        _atomic_write(self.paths(key_params)[1], lambda handle: json.dump(metadata, handle, indent=1), "w")

    def delete(self, key_params: Mapping[str, Any]) -> None:
        """Remove the entry for ``key_params`` (metadata first, so it reads as missing at once)."""
        data_path, meta_path = self.paths(key_params)
        meta_path.unlink(missing_ok=True)
        data_path.unlink(missing_ok=True)
        for path in self.root.glob(f"{key_hash(key_params)}.*.npy"):
            path.unlink()


__all__ = ["ActivationStore", "key_hash", "make_key"]
