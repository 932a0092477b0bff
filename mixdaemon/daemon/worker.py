"""Running jobs: the executor interface and the local worker.

Outputs appear atomically: the worker writes the whole result (stems, mixture, manifest, report)
into a hidden staging folder `.mixdaemon-staging-<id>` beside the final folder and renames it into
place when complete, so a DAW or a watcher sees either nothing or the full result. Stale staging
folders from a killed daemon are removed on start.

`Executor` is the seam for other executors (a distributed one): the daemon only calls start(),
wake(), cancel() and stop(), and listens to the events the executor reports.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Iterable, Protocol

from mixdaemon.daemon.jobstore import (
    AUTOMIX_MIX_NAME,
    MANIFEST_NAME,
    REPORT_NAME,
    STAGING_PREFIX,
    EventSink,
    Job,
    JobEvent,
    JobStore,
    hash_files,
)
from mixdaemon.errors import MixdaemonError
from mixdaemon.files import fsync_dir
from mixdaemon.mixing.settings import TransferSettings
from mixdaemon.progress import Progress

log = logging.getLogger("mixdaemon.worker")


class Executor(Protocol):
    """Runs queued jobs from the store and reports JobEvents. The local worker is one; a distributed
    executor would claim jobs the same way and report the same events."""

    def start(self) -> None: ...

    def wake(self) -> None:
        """A job was queued."""

    def cancel(self, job_id: int) -> bool:
        """Ask a running job to stop at its next progress point (then a "cancelled" event follows);
        False if this executor cannot cancel it."""

    def progress_of(self, job_id: int) -> tuple[float, str] | None:
        """(percent, stage) of a job running here, None otherwise."""

    def stop(self, timeout: float) -> None:
        """Stop taking jobs; interrupt the running one and put it back in the queue."""


class JobInterrupted(Exception):
    """Raised from the progress callback to leave a transfer early (cancel or shutdown)."""


def output_folder_name(pattern: str, job: Job) -> str:
    reference = Path(job.reference)
    return pattern.format(folder=job.folder_name or "job", job_id=job.id,
                          engine=job.settings.get("engine", job.job_type),
                          reference=reference.stem if reference.suffix else reference.name,
                          date=datetime.fromtimestamp(job.created).strftime("%Y%m%d-%H%M%S"))


def _manifest_job_id(folder: Path) -> int | None:
    try:
        return int(json.loads((folder / MANIFEST_NAME).read_text())["job_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class LocalExecutor:
    """One worker thread that owns the engine (built once, on the first job) and runs jobs one at a
    time, in submission order."""

    def __init__(self, store: JobStore, pattern: str, on_event: EventSink, max_attempts: int = 3):
        self.store = store
        self.pattern = pattern
        self.on_event = on_event
        self.max_attempts = max_attempts
        self._engine = None
        self._engine_settings: dict | None = None
        self._automixer = None
        self._automixer_settings: dict | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._cancel: set[int] = set()
        self._current: Job | None = None
        self._progress: tuple[float, str] = (0.0, "")
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="mixdaemon-worker", daemon=True)

    # -- recovery after a crash --

    def recover(self, extra_roots: Iterable[str | os.PathLike] = ()) -> None:
        """Before starting: finish the bookkeeping a dead daemon left. A job left "running" whose
        final folder holds its manifest completed (the rename happened, the database update did
        not): mark it done. Others go back to the queue, or fail after max_attempts. Stale staging
        folders are removed."""
        for job in self.store.list(("running",)):
            final = Path(job.out_dir) if job.out_dir else None
            if final is not None and _manifest_job_id(final) == job.id:
                manifest = json.loads((final / MANIFEST_NAME).read_text())
                self.store.set_state(job.id, "done", manifest=str(final / MANIFEST_NAME),
                                     outputs=manifest.get("outputs", {}))
                log.info("job %d: had completed before the daemon stopped; marked done", job.id)
            elif job.attempts >= self.max_attempts:
                reason = (f"the daemon stopped {job.attempts} times while running this job; giving up "
                          "(an input that crashes the daemon?)")
                self.store.set_state(job.id, "error", error=reason)
                log.error("job %d: %s", job.id, reason)
            else:
                self.store.set_state(job.id, "queued")
                log.info("job %d: was running when the daemon stopped; queued again (attempt %d of %d next)",
                         job.id, job.attempts + 1, self.max_attempts)
        for root in {*self.store.out_roots(), *map(Path, extra_roots)}:
            self._remove_staging(root)

    @staticmethod
    def _remove_staging(root: Path) -> None:
        try:
            stale = [p for p in root.iterdir() if p.name.startswith(STAGING_PREFIX) and p.is_dir()]
        except OSError:
            return
        for p in stale:
            shutil.rmtree(p, ignore_errors=True)
            log.info("removed unfinished output %s", p)

    # -- Executor interface --

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def cancel(self, job_id: int) -> bool:
        # Noted even if the worker has claimed the job but not started it yet: checked at every
        # progress point of that job.
        with self._lock:
            self._cancel.add(job_id)
        return True

    def progress_of(self, job_id: int) -> tuple[float, str] | None:
        with self._lock:
            if self._current is not None and self._current.id == job_id:
                return self._progress
        return None

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the running job did not reach a stopping point in %.0f s; it resumes at the next start",
                            timeout)

    # -- the worker --

    def _run(self) -> None:
        while not self._stopping.is_set():
            job = self.store.claim_next()
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            self._run_one(job)

    def _engine_for(self, settings: TransferSettings):
        from mixdaemon.mixing.factory import make_engine
        if self._engine is None or self._engine_settings != asdict(settings):
            self._engine = make_engine(settings)
            self._engine_settings = asdict(settings)
        return self._engine

    def _automixer_for(self, settings):
        from mixdaemon.mixing.automix import Automixer
        if self._automixer is None or self._automixer_settings != asdict(settings):
            self._automixer = Automixer.from_settings(settings)
            self._automixer_settings = asdict(settings)
        return self._automixer

    def _execute(self, job: Job, staging: Path, progress: Progress):
        """Run the job's work into the staging folder; its TransferResult or AutomixResult, with the
        spectra the report draws."""
        inputs = job.inputs if len(job.inputs) > 1 else job.inputs[0]
        progress("loading engine", 0.0)
        if job.job_type == "automix":
            from mixdaemon.mixing.automix import automix
            from mixdaemon.mixing.settings import AutomixSettings
            settings = AutomixSettings(**job.settings)
            return automix(inputs, staging / AUTOMIX_MIX_NAME, settings, progress=progress, overwrite=True,
                           mixer=self._automixer_for(settings), spectra=True)
        from mixdaemon.mixing.transfer import transfer
        settings = TransferSettings(**job.settings)
        return transfer(inputs, job.reference, staging, settings, progress=progress, overwrite=True,
                        engine=self._engine_for(settings), spectra=True)

    def _final_dir(self, job: Job) -> Path:
        root = Path(job.out_root)
        final = root / output_folder_name(self.pattern, job)
        if final.exists() and _manifest_job_id(final) != job.id:
            final = root / f"{final.name}-{job.id}"
        return final

    def _run_one(self, job: Job) -> None:
        from mixdaemon.daemon.report import write_manifest, write_report

        final = Path(job.out_dir) if job.out_dir else self._final_dir(job)
        if not job.out_dir:
            job = self.store.update(job.id, out_dir=str(final))
        staging = Path(job.out_root) / f"{STAGING_PREFIX}{job.id}"
        with self._lock:
            self._current, self._progress = job, (0.0, "starting")
        sent = {"time": 0.0, "stage": ""}

        def progress(stage: str, fraction: float) -> None:
            if self._stopping.is_set():
                raise JobInterrupted("daemon stopping")
            if job.id in self._cancel:
                raise JobInterrupted("cancelled")
            percent = round(100.0 * min(max(fraction, 0.0), 1.0), 1)
            with self._lock:
                self._progress = (percent, stage)
            now = time.monotonic()
            # Notifications at most 5 per second, and always at stage changes and the end.
            if now - sent["time"] >= 0.2 or percent >= 100.0 or stage != sent["stage"]:
                sent.update(time=now, stage=stage)
                self.on_event(JobEvent("progress", job, percent, stage))

        log.info("job %d: started (attempt %d): %s of %d input file(s)%s", job.id, job.attempts, job.job_type,
                 len(job.inputs), f", reference {job.reference}" if job.reference else "")
        try:
            t_start = time.perf_counter()
            shutil.rmtree(staging, ignore_errors=True)
            if hash_files(job.inputs) != job.input_hashes or hash_files(list(job.reference_hashes)) != job.reference_hashes:
                # The manifest would name contents that were not converted; a watched bounce that
                # changed has been queued again as a new job anyway.
                raise MixdaemonError("the input or reference files changed after the job was queued; "
                                     "not converting them under the old contents (submit again)")
            # The work is 0–90 % of the job; the report and the manifest the rest.
            result = self._execute(job, staging, lambda stage, f: progress(stage, 0.9 * f))
            progress("writing report", 0.92)
            outputs = {name: str(final / Path(p).name) for name, p in result.outputs.items()}
            timings = dict(result.timings)
            t0 = time.perf_counter()
            write_report(staging / REPORT_NAME, job, result)
            timings["report"] = round(time.perf_counter() - t0, 3)
            timings["queued"] = round((job.started or time.time()) - job.created, 3)
            timings["total"] = round(time.perf_counter() - t_start, 3)
            write_manifest(staging / MANIFEST_NAME, job, result, outputs, str(final / REPORT_NAME), timings)
            if self._stopping.is_set():
                raise JobInterrupted("daemon stopping")
            fsync_dir(staging)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(staging, final)  # the result appears whole, or not at all
            fsync_dir(final.parent)
            self.store.set_state(job.id, "done", manifest=str(final / MANIFEST_NAME), outputs=outputs, error=None)
            done = self.store.get(job.id)
            log.info("job %d: done in %.1f s → %s", job.id, timings["total"], final)
            self.on_event(JobEvent("done", done, 100.0, "done"))
        except JobInterrupted as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if str(exc) == "cancelled":
                self.store.set_state(job.id, "cancelled", error="cancelled by request")
                log.info("job %d: cancelled", job.id)
                self.on_event(JobEvent("cancelled", self.store.get(job.id)))
            else:
                # A graceful stop is not the job's fault: give the attempt back.
                self.store.set_state(job.id, "queued", attempts=max(0, job.attempts - 1), started=None)
                log.info("job %d: interrupted by shutdown; it resumes at the next start", job.id)
        except MixdaemonError as exc:
            self._fail(job, staging, str(exc))
        except Exception as exc:  # a bug or an unexpected library error: fail this job, keep serving
            log.exception("job %d: unexpected failure", job.id)
            self._fail(job, staging, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._current = None
                self._cancel.discard(job.id)

    def _fail(self, job: Job, staging: Path, reason: str) -> None:
        shutil.rmtree(staging, ignore_errors=True)
        reason = " ".join(reason.split())  # one line, for OSC and the log
        self.store.set_state(job.id, "error", error=reason)
        log.error("job %d: error: %s", job.id, reason)
        self.on_event(JobEvent("error", self.store.get(job.id)))
