"""Atomic writes: a file or a directory either appears complete or not at all."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; move it onto ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``target``; if the block succeeds it replaces ``target``
    (an existing ``target`` is moved aside first and then deleted)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if target.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, trash / "old")
            shutil.rmtree(trash)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(payload: Any, target: str | Path, indent: int = 2) -> Path:
    """Write ``payload`` as JSON atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(payload, indent=indent))
    return Path(target)


def write_csv(frame: pd.DataFrame, target: str | Path) -> Path:
    """Write a tidy results table atomically (the notebooks' CSV outputs)."""
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(target)
