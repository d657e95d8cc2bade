"""Run independent jobs in spawned CPU worker processes, one torch thread each."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

R = TypeVar("R")


def _one_thread(fn: Callable[..., R], args: tuple) -> R:
    import torch

    torch.set_num_threads(1)
    return fn(*args)


def spawn_map(fn: Callable[..., R], jobs: Sequence[tuple[Any, ...]], workers: int) -> list[R]:
    """``[fn(*job) for job in jobs]``, in ``workers`` spawned processes (one torch thread each) when
    ``workers > 1`` and there is more than one job; ``fn`` must be importable (a module-level function)."""
    if workers <= 1 or len(jobs) <= 1:
        return [fn(*job) for job in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_one_thread, fn, tuple(job)) for job in jobs]
        return [future.result() for future in futures]
