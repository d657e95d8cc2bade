"""Resumable training state: one format for every run that writes weights.

A checkpoint is ``<root>/step-NNNNNNN/state.pt`` holding the trained weights (all of them, or
only the trainable ones, e.g. LoRA), the optimizer, the learning-rate schedule, the random
number generators, the step, the loss curve, the elapsed seconds and a fingerprint of the run.
Each is written atomically (:func:`~narrowgate_utils.atomic.atomic_dir`) and only the newest is
kept, so an interrupted run resumes exactly where its last checkpoint left it.
"""
from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_dir

STATE_FILE = "state.pt"


def _full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return model.state_dict()


def _load_full_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    model.load_state_dict(state)


def _rng_state() -> dict[str, Any]:
    """The state of every random number generator (python, numpy, torch, CUDA when present)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    """Restore generators saved by :func:`_rng_state`."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass(frozen=True)
class Resumed:
    """Where a run stands: steps done, the loss curve so far, seconds spent."""

    step: int = 0
    curve: tuple = ()
    elapsed: float = 0.0


@dataclass(frozen=True)
class Checkpoint:
    """Checkpoints of one run under ``root``, saved every ``every`` steps.

    ``fingerprint`` identifies the run (recipe, data, model): a checkpoint of another run is
    refused. ``weights`` / ``load_weights`` read and write the model state that is saved
    (default: the whole ``state_dict``).
    """

    root: Path
    fingerprint: Any
    every: int
    weights: Callable[[nn.Module], dict[str, torch.Tensor]] = _full_state
    load_weights: Callable[[nn.Module, dict[str, torch.Tensor]], None] = _load_full_state

    def latest(self) -> Path | None:
        """The newest complete ``step-N`` directory, or None (entries in another format are ignored)."""
        steps = sorted((p for p in self.root.glob("step-*") if (p / STATE_FILE).is_file()),
                       key=lambda p: int(p.name.split("-")[1]))
        return steps[-1] if steps else None

    def due(self, step: int, stop: int) -> bool:
        """Whether to save after ``step`` steps of a run that stops at ``stop``."""
        return step % self.every == 0 or step == stop

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Any, step: int, curve: list,
             elapsed: float) -> None:
        """Write ``step-N`` atomically, then delete every other entry under ``root``."""
        name = f"step-{step:07d}"
        with atomic_dir(self.root / name) as tmp:
            torch.save({"fingerprint": self.fingerprint, "step": step, "curve": curve, "elapsed": elapsed,
                        "model": self.weights(model), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "rng": _rng_state()}, tmp / STATE_FILE)
        for old in self.root.iterdir():  # earlier steps and leftovers of interrupted saves
            if old.name == name:
                continue
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()

    def resume(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Any) -> Resumed:
        """Load the newest checkpoint into ``model``, ``optimizer``, ``schedule`` and the RNGs."""
        path = self.latest()
        if path is None:
            return Resumed()
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
        if state["fingerprint"] != self.fingerprint:
            raise ValueError(f"Checkpoint {path} belongs to a different run (model, data or recipe differ); "
                             f"delete {self.root} to start over.")
        self.load_weights(model, state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        _set_rng_state(state["rng"])
        return Resumed(int(state["step"]), tuple(list(point) for point in state["curve"]), float(state["elapsed"]))

    def clear(self) -> None:
        """Remove every checkpoint (the run is finished)."""
        shutil.rmtree(self.root, ignore_errors=True)
