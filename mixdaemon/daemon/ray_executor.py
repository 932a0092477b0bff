"""Jobs on a Ray cluster: each job's work runs in a Ray actor, everything else stays here.

The RayExecutor is the local executor (daemon/worker.py) with one change: the work itself — read,
convert, limit and write into the staging folder (worker.JobWork) — runs on a Ray worker. Claiming
jobs from the SQLite store, the staging folder, the manifest, the final no-replace rename and the
attempt rules stay in the daemon's process, so the store remains the single source of truth and a
result still appears whole or not at all. The staging folder therefore has to be on storage that
the workers share with the daemon, under the same path (docs/SCALING.md).

One executor drives one actor, which keeps its models loaded from one job to the next; N executors
on one store are N workers. A worker that dies (its process killed, its node lost, out of memory)
gives its job back to the queue, and a job that kills its worker `max_attempts` times fails.
"""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from mixdaemon.daemon.jobstore import Job
from mixdaemon.daemon.worker import JobInterrupted, JobWork, LocalExecutor, WorkerLost
from mixdaemon.errors import ConfigError, MixdaemonError
from mixdaemon.memory import one_malloc_arena
from mixdaemon.progress import Progress

RAY_EXTRA = "pip install 'mixdaemon[ray]'"
POLL_SECONDS = 0.5  # how often a running job's progress is fetched (and a cancel noticed)


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(f"the Ray executor needs Ray, which is not installed: {RAY_EXTRA}") from None
    return ray


def connect(address: str | None, num_cpus: int | None = None) -> bool:
    """Join the Ray cluster at `address` ("auto", "ray://HOST:10001", "HOST:6379") or, without one,
    start a local cluster of num_cpus CPUs for this process. True when this call started or joined
    it, so that the caller shuts it down again (ray.shutdown); False when already connected."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    # ray.init installs its own SIGTERM/SIGINT handlers (exit at once); the daemon's own, which stop
    # it gracefully, are put back.
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if address:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "a local cluster"
        raise ConfigError(f"ray: cannot connect to {where} ({' '.join(str(exc).split())[:200]})") from None
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
    return True


def disconnect() -> None:
    """Leave the cluster connect() joined, or shut down the local one it started."""
    import_ray().shutdown()


class TransferWorker:
    """The actor: one JobWork (models loaded once, kept between jobs) and the running job's last
    progress, which the executor asks for while the job runs (a threaded actor: max_concurrency 2)."""

    def __init__(self):
        one_malloc_arena()  # a Ray worker process starts here, not at the command line
        self._work = JobWork()
        self._progress: tuple[float, str] = (0.0, "starting")

    def run(self, job: Job, staging: str):
        def progress(stage: str, fraction: float) -> None:
            self._progress = (fraction, stage)
        self._progress = (0.0, "starting")
        return self._work.run(job, Path(staging), progress)

    def progress(self) -> tuple[float, str]:
        return self._progress

    def pid(self) -> int:
        return os.getpid()


_actor_class = None


def _remote_worker():
    global _actor_class
    if _actor_class is None:
        _actor_class = import_ray().remote(num_cpus=1, max_concurrency=2)(TransferWorker)
    return _actor_class.remote()


class RayExecutor(LocalExecutor):
    """A LocalExecutor whose jobs' work runs on a Ray actor (module docstring). ray must be
    connected (connect()) before the first job."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._actor = None

    def worker_pid(self) -> int | None:
        """The process id of this executor's Ray worker, once it has one."""
        return None if self._actor is None else import_ray().get(self._actor.pid.remote())

    def _execute(self, job: Job, staging: Path, progress: Progress):
        ray = import_ray()
        if self._actor is None:
            self._actor = _remote_worker()
        actor = self._actor
        try:
            pending = actor.run.remote(job, str(staging))
            while not ray.wait([pending], timeout=POLL_SECONDS)[0]:
                fraction, stage = ray.get(actor.progress.remote())
                progress(stage, fraction)  # raises JobInterrupted when the job is cancelled or the daemon stops
            return ray.get(pending)
        except JobInterrupted:
            ray.kill(actor)  # an actor's running task cannot be cancelled; its next job gets a fresh worker
            self._actor = None
            raise
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, (MixdaemonError, OSError)):
                raise cause from None  # the job's own one-line error, as a local run gives it
            raise MixdaemonError(f"internal error on the Ray worker: {type(cause).__name__}: {cause}") from None
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError,
                ray.exceptions.OutOfMemoryError) as exc:
            self._actor = None
            raise WorkerLost(f"the Ray worker running it was lost ({type(exc).__name__})") from None

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        if self._actor is not None:
            import_ray().kill(self._actor)
            self._actor = None
