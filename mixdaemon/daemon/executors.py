"""The executors a daemon or a batch runs: `workers` of one kind on one job store, driven as one.

A local executor (daemon/worker.py) runs jobs on a thread of this process; a Ray executor
(daemon/ray_executor.py) on an actor of a Ray cluster. Each claims the next queued job when it is
free, so `workers` jobs run at once, whichever kind they are.
"""
from __future__ import annotations

import os
from typing import Iterable

from mixdaemon import defaults
from mixdaemon.daemon.confine import Roots
from mixdaemon.daemon.jobstore import EventSink, JobStore
from mixdaemon.daemon.ray_executor import RayExecutor
from mixdaemon.daemon.worker import LocalExecutor
from mixdaemon.errors import MixdaemonError


class ExecutorPool:
    """Several executors on one job store, driven as one (the Executor protocol): each claims the
    next queued job when it is free, so `workers` jobs run at once."""

    def __init__(self, executors: list[LocalExecutor]):
        self.executors = executors

    def recover(self, result_roots: Iterable[str | os.PathLike] = ()) -> None:
        self.executors[0].recover(result_roots)  # the store's bookkeeping, done once

    def start(self) -> None:
        for executor in self.executors:
            executor.start()

    def wake(self) -> None:
        for executor in self.executors:
            executor.wake()

    def cancel(self, job_id: int) -> bool:
        for executor in self.executors:  # whichever has claimed it, or will
            executor.cancel(job_id)
        return True

    def progress_of(self, job_id: int) -> tuple[float, str] | None:
        return next((p for p in (e.progress_of(job_id) for e in self.executors) if p is not None), None)

    def stop(self, timeout: float = 10.0) -> None:
        for executor in self.executors:
            executor.stop(timeout)


def make_executors(kind: str, workers: int, store: JobStore, pattern: str, on_event: EventSink, roots: Roots,
                   max_attempts: int = 3) -> ExecutorPool:
    """`workers` executors of `kind` ("local": threads in this process; "ray": Ray actors, which
    needs Ray connected, daemon/ray_executor.connect) on one store."""
    if kind not in defaults.EXECUTORS:
        raise MixdaemonError(f"executor: {kind!r} is not one of {', '.join(defaults.EXECUTORS)}")
    if workers < 1:
        raise MixdaemonError(f"workers: {workers} (at least 1)")
    executor_class = RayExecutor if kind == "ray" else LocalExecutor
    return ExecutorPool([executor_class(store, pattern, on_event, roots, max_attempts=max_attempts)
                         for _ in range(workers)])
