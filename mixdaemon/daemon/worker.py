"""Running jobs: the executor interface and the local worker.

Outputs appear atomically: the worker writes the whole result (stems, mixture, manifest, report)
into a hidden staging folder beside the final folder and renames it into place when complete, so a
DAW or a watcher sees either nothing or the full result.

The staging folder belongs to this daemon provably: its name (`.mixdaemon-staging-<id>-<64 random
bits>`) is recorded in the job store before it is created, it is created exclusively (mkdir fails
on anything at the name, a planted link included), and its inode is recorded once it exists. The
only folders ever removed are those recorded for a job of this store, still real folders with that
inode: never a user's folder of a similar name, never another daemon's, never through a link.

The result's name is chosen before the work: the pattern's name, or the first free one after it
(NAME-<job id>, then "NAME-<job id> (2)"...); the staging folder is renamed onto it with a rename
that never replaces, so no existing entry (even an empty folder) is replaced or merged into.

`Executor` is the seam for other executors (a distributed one): the daemon only calls start(),
wake(), cancel() and stop(), and listens to the events the executor reports.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import stat
import threading
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Iterable, Protocol

from mixdaemon.daemon.confine import Roots
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
from mixdaemon.files import fsync_dir, rename_no_replace
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


class WorkerLost(Exception):
    """The process running a job died (a Ray worker killed, its node lost, out of memory): the job
    goes back to the queue under the attempt rules that hold after a daemon crash."""


class JobInterrupted(Exception):
    """Raised from the progress callback to leave a transfer early (cancel or shutdown)."""


def output_folder_name(pattern: str, job: Job) -> str:
    """The result folder's name from the output pattern. The bounce's name is shortened (at a
    character boundary) where the name would pass the file system's 255-byte limit, keeping room
    for the suffixes that make a taken name free (`_free_name`)."""
    reference = Path(job.reference)
    fields = dict(job_id=job.id, engine=job.settings.get("engine", job.job_type),
                  reference=reference.stem if reference.suffix else reference.name,
                  date=datetime.fromtimestamp(job.created).strftime("%Y%m%d-%H%M%S"))
    folder = job.folder_name or "job"
    budget = _NAME_MAX - _SUFFIX_ROOM - len(os.fsencode(pattern.format(folder="", **fields)))
    if len(os.fsencode(folder)) > budget:
        folder = os.fsencode(folder)[:max(budget, 1)].decode("utf-8", "ignore").rstrip() or "job"
    return pattern.format(folder=folder, **fields)


_NAME_MAX = 255     # bytes in one file name on every common file system
_SUFFIX_ROOM = 16   # "-<job id> (<n>)"


def _free_name(root: Path, name: str, job_id: int) -> Path:
    """The first of NAME, NAME-<job id>, NAME-<job id> (2), (3)... at which nothing stands (not
    even an empty folder or a dangling link): an existing entry is never replaced or merged into."""
    candidate, n = root / name, 1
    while os.path.lexists(candidate):
        n += 1
        candidate = root / (f"{name}-{job_id}" if n == 2 else f"{name}-{job_id} ({n - 1})")
    return candidate


def _holds_result_of(folder: Path, job: Job) -> dict | None:
    """The manifest in folder if it is this job's result (its id and its inputs' contents), else None."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
        inputs = {i["path"]: i["sha256"] for i in manifest["inputs"]}
        return manifest if manifest["job_id"] == job.id and inputs == job.input_hashes else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _recorded_reference(job: Job) -> str | list[str]:
    """The reference as the job was checked and keyed: a reference file itself, or the files
    recorded for a reference folder, never the folder listed again (a file added since is not
    the work the key names)."""
    files = sorted(job.reference_hashes)
    return job.reference if files == [job.reference] else files


def _os_reason(exc: OSError, job: Job, staging: Path | None, final: Path | None) -> str:
    """One line for a failed read or write: the file (a staging path shown as its final path, which
    is what the user will look for) and the system's words for the problem."""
    name = Path(exc.filename) if exc.filename else (staging or Path(job.out_root))
    if staging is not None and final is not None and (name == staging or staging in name.parents):
        name = final / name.relative_to(staging)
    writing = any(name == p or p in name.parents for p in (Path(job.out_root), staging, final) if p is not None)
    return f"{name}: cannot {'write' if writing else 'read'} ({exc.strerror or exc})"


class JobWork:
    """A job's work in one process: the engine (or automixer) built on the first job and kept for
    the next ones with the same settings, and the job run into a staging folder. The local
    executor holds one in its thread; each Ray worker holds one in its own process."""

    def __init__(self):
        self._engine = None
        self._engine_settings: dict | None = None
        self._automixer = None
        self._automixer_settings: dict | None = None

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

    def run(self, job: Job, staging: Path, progress: Progress):
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
        return transfer(inputs, _recorded_reference(job), staging, settings, progress=progress, overwrite=True,
                        engine=self._engine_for(settings), spectra=True)


class LocalExecutor:
    """One worker thread that owns the engine (built once, on the first job) and runs jobs one at a
    time, in submission order. The thread is supervised: whatever a job or the job store raises is
    logged and the loop goes on (a job that fails is marked failed with its reason; a store that
    fails is retried with growing pauses, said once in the log)."""

    def __init__(self, store: JobStore, pattern: str, on_event: EventSink, roots: Roots, max_attempts: int = 3):
        self.store = store
        self.roots = roots  # the inputs are checked against them again before they are read
        self.pattern = pattern
        self.on_event = on_event
        self.max_attempts = max_attempts
        self._work = JobWork()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._cancel: set[int] = set()
        self._current: Job | None = None
        self._progress: tuple[float, str] = (0.0, "")
        self._lock = threading.Lock()
        self._store_trouble: str | None = None  # the store failure last logged, until it clears
        self._backoff = 1.0                      # seconds before the next try after a store failure
        self._thread = threading.Thread(target=self._run, name="mixdaemon-worker", daemon=True)

    # -- recovery after a crash --

    def recover(self, result_roots: Iterable[str | os.PathLike] = ()) -> None:
        """Before starting: finish the bookkeeping a dead daemon left. A job left "running" whose
        final folder holds its manifest completed (the rename happened, the database update did
        not): mark it done. Others go back to the queue, or fail after max_attempts. The staging
        folders the store recorded for them are removed; nothing else is. With a new database (the
        old one deleted or moved away), the results in result_roots are adopted as done jobs, so
        their bounces are not converted again."""
        if self.store.created:
            for root in result_roots:
                self._adopt_results(Path(root))
        for job in self.store.list(("running",)):
            self._remove_staging(job)
            final = Path(job.out_dir) if job.out_dir else None
            manifest = _holds_result_of(final, job) if final is not None else None
            if manifest is not None:
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

    def _adopt_results(self, root: Path) -> None:
        try:
            folders = sorted(e.path for e in os.scandir(root)
                             if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))
        except OSError:
            return
        adopted = [job for folder in folders if (job := self.store.adopt_result(Path(folder) / MANIFEST_NAME))]
        if adopted:
            log.warning("new job database: adopted %d finished result(s) from %s as done jobs; their bounces "
                        "are not converted again", len(adopted), root)

    def _make_staging(self, job: Job) -> Path:
        """Create the job's staging folder: a new name (the job id and 64 random bits) recorded in
        the store before the folder exists, created exclusively (never an existing folder, never
        through a link planted at the name), its inode recorded once it exists. Recovery removes
        only a folder that matches both."""
        staging = Path(job.out_root) / f"{STAGING_PREFIX}{job.id}-{secrets.token_hex(8)}"
        self.store.update(job.id, staging=str(staging), staging_inode=None)
        Path(job.out_root).mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(staging)
        except FileExistsError:
            raise MixdaemonError(f"{staging}: refused, something already stands at this new staging "
                                 "name (planted?); not writing through it") from None
        st = os.lstat(staging)
        self.store.update(job.id, staging_inode=f"{st.st_dev}:{st.st_ino}")
        return staging

    @staticmethod
    def _is_own_staging(job: Job) -> bool:
        """Whether the job's recorded staging path is still the real folder the worker created."""
        try:
            st = os.lstat(job.staging)
        except OSError:
            return False
        return stat.S_ISDIR(st.st_mode) and job.staging_inode == f"{st.st_dev}:{st.st_ino}"

    def _remove_staging(self, job: Job) -> None:
        """Remove the job's recorded staging folder if it is still the one the worker created (never
        a link, never something else put at the name), and forget it."""
        if not job.staging:
            return
        if self._is_own_staging(job):
            try:
                shutil.rmtree(job.staging)
                log.info("job %d: removed its unfinished output %s", job.id, job.staging)
            except OSError as exc:
                log.warning("job %d: cannot remove its unfinished output %s (%s)", job.id, job.staging,
                            exc.strerror or exc)
        elif os.path.lexists(job.staging):
            log.warning("job %d: %s is not provably the staging folder this daemon created (a link, or "
                        "another folder); left as it is", job.id, job.staging)
        self.store.update(job.id, staging=None, staging_inode=None)

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
        try:
            while not self._stopping.is_set():
                job = self._claim()
                if job is not None:
                    self._run_supervised(job)
        except BaseException:  # a bug in this loop itself: at least the log says that the worker is gone
            log.critical("the worker stopped unexpectedly; no job runs until the daemon is restarted", exc_info=True)
            raise

    def _claim(self) -> Job | None:
        """The next queued job, or None after waiting for one (a second, or the back-off after a
        store failure: 1, 2, 4... up to 60 s)."""
        self.store.on_disk()  # a deleted database is said in the log at once, not at the next submission
        try:
            job = self.store.claim_next()
        except Exception as exc:
            reason = str(exc) if isinstance(exc, MixdaemonError) else f"{type(exc).__name__}: {exc}"
            if reason != self._store_trouble:
                log.error("cannot take the next job: %s; retrying until it works", reason)
                self._store_trouble, self._backoff = reason, 1.0
            else:
                self._backoff = min(2 * self._backoff, 60.0)
            self._stopping.wait(self._backoff)
            return None
        if self._store_trouble is not None:
            log.info("the job database works again; taking jobs")
            self._store_trouble = None
        if job is None:
            self._wake.wait(1.0)
            self._wake.clear()
        return job

    def _run_supervised(self, job: Job) -> None:
        try:
            self._run_one(job)
        except Exception as exc:  # failing the job failed too (the store, an event listener...)
            log.exception("job %d: could not be recorded as failed (%s: %s)", job.id, type(exc).__name__, exc)
        finally:
            with self._lock:
                self._current = None
                self._cancel.discard(job.id)

    def _execute(self, job: Job, staging: Path, progress: Progress):
        """Run the job's work into the staging folder (in this process; daemon/ray_executor.py runs
        it on a Ray worker)."""
        return self._work.run(job, staging, progress)

    def _final_dir(self, job: Job) -> Path:
        """Where the result will appear: the name chosen at the job's first attempt if nothing has
        taken it since, else the first free name. Chosen before the work and recorded."""
        if job.out_dir and not os.path.lexists(job.out_dir):
            return Path(job.out_dir)
        final = _free_name(Path(job.out_root), output_folder_name(self.pattern, job), job.id)
        self.store.update(job.id, out_dir=str(final))
        return final

    def _run_one(self, job: Job) -> None:
        from mixdaemon.daemon.report import write_manifest, write_report

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
        staging = final = None
        try:
            t_start = time.perf_counter()
            final = self._final_dir(job)
            staging = self._make_staging(job)
            job = self.store.get(job.id)
            # Read by the names the user gave (Roots.named): a link changed since the submit is refused.
            for paths, what in ((job.inputs, "stem file"), (job.reference_hashes, "reference file")):
                for path in paths:
                    self.roots.file(path, what)
            if hash_files(job.inputs) != job.input_hashes or hash_files(list(job.reference_hashes)) != job.reference_hashes:
                # The manifest would name contents that were not converted; a watched bounce that
                # changed has been queued again as a new job anyway.
                raise MixdaemonError("the input or reference files changed after the job was queued; "
                                     "not converting them under the old contents (submit again)")
            twin = self.store.finished_twin(job)
            if twin is not None:  # the same work is done, its result in another output root: a copy here
                final, outputs, timings = self._copy_result(twin, job, staging, final, progress)
                timings["total"] = round(time.perf_counter() - t_start, 3)
            else:
                # The work is 0–90 % of the job; the report and the manifest the rest.
                result = self._execute(job, staging, lambda stage, f: progress(stage, 0.9 * f))
                progress("writing report", 0.92)
                if os.path.lexists(final):  # taken while the job ran: the next free name, before the manifest names it
                    final = self._final_dir(job)
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
            if not self._is_own_staging(job):
                raise MixdaemonError(f"{staging}: the staging folder was replaced while the job ran; "
                                     "not moving it into the output folder")
            try:
                rename_no_replace(staging, final)  # the result appears whole, or not at all
            except FileExistsError:
                raise MixdaemonError(f"{final}: a folder appeared at the result name just as the job finished; "
                                     "not replacing it (submit again)") from None
            fsync_dir(final.parent)
            self.store.set_state(job.id, "done", manifest=str(final / MANIFEST_NAME), outputs=outputs, error=None,
                                 staging=None, staging_inode=None)
            done = self.store.get(job.id)
            log.info("job %d: done in %.1f s → %s", job.id, timings["total"], final)
            self.on_event(JobEvent("done", done, 100.0, "done"))
        except JobInterrupted as exc:
            self._remove_staging(job)
            if str(exc) == "cancelled":
                self.store.set_state(job.id, "cancelled", error="cancelled by request")
                log.info("job %d: cancelled", job.id)
                self.on_event(JobEvent("cancelled", self.store.get(job.id)))
            else:
                # A graceful stop is not the job's fault: give the attempt back.
                self.store.set_state(job.id, "queued", attempts=max(0, job.attempts - 1), started=None)
                log.info("job %d: interrupted by shutdown; it resumes at the next start", job.id)
        except WorkerLost as exc:
            if job.attempts >= self.max_attempts:
                self._fail(job, f"{exc}; that happened {job.attempts} times running this job, giving up "
                                "(an input that crashes the worker?)")
            else:
                self._remove_staging(self.store.get(job.id) or job)
                self.store.set_state(job.id, "queued", started=None)
                log.warning("job %d: %s; queued again (attempt %d of %d next)", job.id, exc, job.attempts + 1,
                            self.max_attempts)
        except MixdaemonError as exc:
            self._fail(job, str(exc))
        except OSError as exc:  # a full disk, a read-only or vanished output folder, a name too long...
            self._fail(job, _os_reason(exc, job, staging, final))
        except Exception as exc:  # a bug or an unexpected library error: fail this job, keep serving
            log.exception("job %d: unexpected failure", job.id)
            self._fail(job, f"internal error: {type(exc).__name__}: {exc}")

    def _copy_result(self, twin: Job, job: Job, staging: Path, final: Path,
                     progress: Progress) -> tuple[Path, dict, dict]:
        """Copy the result of `twin` (a finished job of the same work) into the job's staging
        folder, with a manifest of this job's own; (final folder, outputs, timings). The result's
        files are read as any input is: regular files inside the roots, never through a link."""
        from mixdaemon.daemon.report import copied_manifest, write_manifest

        t0 = time.perf_counter()
        source = self.roots.folder(twin.out_dir, "finished result")
        try:
            manifest = json.loads((source / MANIFEST_NAME).read_text(encoding="utf-8"))
            outputs = dict(manifest["outputs"])
        except (OSError, ValueError, KeyError, TypeError):
            raise MixdaemonError(f"{source / MANIFEST_NAME}: the finished result of the same work has no readable "
                                 "manifest; not copying it (delete that folder to convert again)") from None
        entries = sorted(e.name for e in os.scandir(source) if e.name != MANIFEST_NAME and not e.name.startswith("."))
        for k, name in enumerate(entries):
            progress(f"copying the result of job {twin.id}", k / max(len(entries), 1))
            shutil.copyfile(self.roots.file(source / name, "result file"), staging / name, follow_symlinks=False)
        if os.path.lexists(final):
            final = self._final_dir(job)
        outputs = {name: str(final / Path(p).name) for name, p in outputs.items()}
        timings = {"copy": round(time.perf_counter() - t0, 3),
                   "queued": round((job.started or time.time()) - job.created, 3)}
        data = copied_manifest(manifest, job, outputs, str(final / REPORT_NAME), timings, str(source))
        write_manifest(staging / MANIFEST_NAME, job, None, outputs, str(final / REPORT_NAME), timings, data=data)
        log.info("job %d: the same work as job %d, done in %s; its result copied", job.id, twin.id, source)
        return final, outputs, timings

    def _fail(self, job: Job, reason: str) -> None:
        self._remove_staging(self.store.get(job.id) or job)
        reason = " ".join(reason.split())  # one line, for OSC and the log
        self.store.set_state(job.id, "error", error=reason)
        log.error("job %d: error: %s", job.id, reason)
        self.on_event(JobEvent("error", self.store.get(job.id)))

