"""The one training loop (toy models, their components, LoRA), device choice and thread pinning."""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..console import progress_bar
from .checkpoint import Checkpoint

#: one optimizer step: forward and backward of step ``step`` (gradients accumulated into the
#: parameters); returns the loss value and any extra numbers to log
StepFn = Callable[[int], tuple[float, list[float]]]
#: the loss-curve row of a finished step (``step``, loss, extras), or None to log nothing
RecordFn = Callable[[int, float, list[float]], list | None]


def resolve_device(device: str | None) -> str:
    """``None`` → CUDA when available, else CPU; explicit choices are checked."""
    from ..models.registry import check_device

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    check_device(device)
    return device


@contextlib.contextmanager
def one_cpu_thread(device: str) -> Iterator[None]:
    """Pin torch to one CPU thread (restored afterwards) while training on the CPU.

    The float reductions of multi-threaded kernels depend on the thread count, and tiny
    differences early in training end in visibly different models; one thread makes a toy
    model the same however many cores the machine has (and tiny models gain little from more).
    """
    previous = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class LoopResult:
    """Steps done, the loss curve (rows from ``record``) and the seconds spent training."""

    step: int
    curve: list
    seconds: float


def run_loop(model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Any, step_fn: StepFn, total: int, *,
             record: RecordFn, stop: int | None = None, clip_norm: float | None = None,
             checkpoint: Checkpoint | None = None, desc: str = "", show: bool = True, position: int = 0) -> LoopResult:
    """Train ``model`` from its checkpoint (if any) up to step ``stop`` (default ``total``).

    Each step: clear the gradients, ``step_fn(step)`` (forward + backward), clip the gradient
    norm of the optimizer's parameters to ``clip_norm``, take the optimizer and schedule steps,
    append ``record(step, loss, extras)`` to the curve and save the checkpoint when due. A step
    must depend only on its index (and the seeds), so a resumed run equals an uninterrupted one.
    The model is in train mode during the loop and in eval mode after it.
    """
    stop = total if stop is None else stop
    resumed = checkpoint.resume(model, optimizer, schedule) if checkpoint is not None else None
    start = resumed.step if resumed is not None else 0
    curve = list(resumed.curve) if resumed is not None else []
    elapsed = resumed.elapsed if resumed is not None else 0.0
    params = [p for group in optimizer.param_groups for p in group["params"]]
    model.train()
    bar = progress_bar(range(start, stop), desc, show=show, initial=start, total=stop, leave=False, position=position)
    tick = time.perf_counter()
    for step in bar:
        optimizer.zero_grad(set_to_none=True)
        loss, extras = step_fn(step)
        if clip_norm is not None:
            nn.utils.clip_grad_norm_(params, clip_norm)
        optimizer.step()
        schedule.step()
        row = record(step, loss, extras)
        if row is not None:
            curve.append(row)
            bar.set_postfix(loss=f"{loss:.3f}")
        if checkpoint is not None and checkpoint.due(step + 1, stop):
            checkpoint.save(model, optimizer, schedule, step + 1, curve, elapsed + time.perf_counter() - tick)
    bar.close()
    model.eval()
    return LoopResult(max(start, stop), curve, elapsed + time.perf_counter() - tick)
