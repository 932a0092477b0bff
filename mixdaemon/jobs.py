"""Jobs: a durable SQLite store of every job, the executor interface, and the local worker.

A job's life: queued → running → done | error | cancelled. The store is the single source of truth
and survives crashes (WAL journal, synchronous=FULL): on start, jobs left "running" by a dead daemon
go back to the queue, finished ones stay finished. Each claim of a job counts an attempt before any
work starts, so a job that kills the daemon `max_attempts` times is failed instead of crash-looping.

Two job types: "transfer" (style transfer toward a reference, transfer.py) and "automix" (the
stems mixed by the automix network, automix.py; no reference, writes mix.wav).

The same work is never done twice: a job's key is the sha256 of its input files' contents, the
reference's contents, the job type, the engine and the settings; submitting a key that is queued,
running or done returns that job.

Outputs appear atomically: the worker writes the whole result (stems, mixture, manifest, report)
into a hidden staging folder `.mixdaemon-staging-<id>` beside the final folder and renames it into
place when complete, so a DAW or a watcher sees either nothing or the full result. Stale staging
folders from a killed daemon are removed on start.

`Executor` is the seam for other executors (a distributed one): the daemon only calls start(),
wake(), cancel() and stop(), and listens to the events the executor reports.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable, Protocol

from .audio import is_audio_file
from .errors import MixdaemonError
from .hashing import file_sha256
from .stems import list_audio_files
from .transfer import TransferSettings

log = logging.getLogger("mixdaemon.jobs")

STATES = ("queued", "running", "done", "error", "cancelled")
ACTIVE_STATES = ("queued", "running")
STAGING_PREFIX = ".mixdaemon-staging-"
MANIFEST_NAME = "manifest.json"
REPORT_NAME = "report.png"
AUTOMIX_MIX_NAME = "mix.wav"


@dataclass
class Job:
    id: int
    key: str
    state: str
    inputs: list[str]
    reference: str            # "" for automix jobs
    out_root: str
    settings: dict            # TransferSettings or AutomixSettings, by job_type
    source: str = ""          # "watch:<folder>" or "osc:<host>:<port>"
    reply_to: str | None = None  # "host:port" of the OSC client that submitted it
    folder_name: str = ""     # the bounce's name, for the output pattern
    input_hashes: dict = field(default_factory=dict)
    reference_hashes: dict = field(default_factory=dict)
    attempts: int = 0
    out_dir: str | None = None
    error: str | None = None
    manifest: str | None = None
    outputs: dict = field(default_factory=dict)
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    job_type: str = "transfer"  # "transfer" | "automix"


@dataclass
class JobEvent:
    """What the executor reports: kind is queued, progress, done, error or cancelled."""

    kind: str
    job: Job
    percent: float = 0.0
    stage: str = ""


EventSink = Callable[[JobEvent], None]


# --- content hashes ----------------------------------------------------------------------------

def hash_files(paths: Iterable[str | os.PathLike]) -> dict[str, str]:
    """{absolute path: sha256}; a missing or unreadable file is a MixdaemonError naming it."""
    out = {}
    for p in paths:
        p = Path(p).absolute()
        try:
            out[str(p)] = file_sha256(p)
        except OSError as exc:
            raise MixdaemonError(f"{p}: cannot read ({exc.strerror or exc})") from None
    return out


def reference_files(reference: str | os.PathLike) -> list[Path]:
    """The files a reference consists of: itself, or the audio files of a reference folder."""
    reference = Path(reference)
    if reference.is_dir():
        files = sorted(p for p in reference.iterdir() if p.is_file() and is_audio_file(p))
        if not files:
            raise MixdaemonError(f"{reference}: reference folder holds no WAV/FLAC/AIFF files")
        return files
    if not reference.exists():
        raise MixdaemonError(f"{reference}: reference not found")
    return [reference]


def input_files(stems: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """A stems folder's audio files (hidden and reference.* files left out), or the given files."""
    if isinstance(stems, (str, os.PathLike)):
        p = Path(stems)
        if p.is_dir():
            files = list_audio_files(p)
            if not files:
                raise MixdaemonError(f"{p}: no WAV/FLAC/AIFF stems found in this folder")
            return [f.absolute() for f in files]
        if not p.exists():
            raise MixdaemonError(f"{p}: no such file or folder")
        return [p.absolute()]
    files = [Path(f).absolute() for f in stems]
    if not files:
        raise MixdaemonError("no input files given")
    for f in files:
        if not f.is_file():
            raise MixdaemonError(f"{f}: no such file")
    return files


def job_key(input_hashes: dict[str, str], reference_hashes: dict[str, str], settings,
            job_type: str = "transfer") -> str:
    """Same contents + same reference contents + same job type, engine and settings (a
    TransferSettings or AutomixSettings) → same key. File names of the inputs count (they decide the
    stem roles); where the files lie does not."""
    h = hashlib.sha256()
    if job_type != "transfer":
        # only other types name themselves, so that transfer keys stored before job types existed still match
        h.update(f"type {job_type}\n".encode())
    for path, digest in sorted((Path(p).name, d) for p, d in input_hashes.items()):
        h.update(f"in {path} {digest}\n".encode())
    for digest in sorted(reference_hashes.values()):
        h.update(f"ref {digest}\n".encode())
    h.update(json.dumps(asdict(settings), sort_keys=True).encode())
    return h.hexdigest()


# --- the store ---------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'error', 'cancelled')),
    inputs TEXT NOT NULL,
    reference TEXT NOT NULL,
    out_root TEXT NOT NULL,
    settings TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    reply_to TEXT,
    folder_name TEXT NOT NULL DEFAULT '',
    input_hashes TEXT NOT NULL DEFAULT '{}',
    reference_hashes TEXT NOT NULL DEFAULT '{}',
    attempts INTEGER NOT NULL DEFAULT 0,
    out_dir TEXT,
    error TEXT,
    manifest TEXT,
    outputs TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    job_type TEXT NOT NULL DEFAULT 'transfer'
);
-- At most one live job per key: the database itself refuses duplicates. (A finished key may be
-- done again, but only once its results are gone: JobStore.add.)
CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_live_per_key ON jobs(key) WHERE state IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, id);
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_JSON_FIELDS = ("inputs", "settings", "input_hashes", "reference_hashes", "outputs")


class JobStore:
    """SQLite job table. One connection, serialised by a lock: the daemon's threads (OSC, watcher,
    worker) all write rarely, and a single writer keeps SQLite simple and safe."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
            if "job_type" not in columns:  # a database from before job types: every job in it is a transfer
                self._db.execute("ALTER TABLE jobs ADD COLUMN job_type TEXT NOT NULL DEFAULT 'transfer'")
        except sqlite3.DatabaseError as exc:
            raise MixdaemonError(f"{self.path}: job database unusable ({exc}); move it away to start afresh") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        data = dict(row)
        for name in _JSON_FIELDS:
            data[name] = json.loads(data[name]) if data[name] is not None else None
        return Job(**data)

    def get(self, job_id: int) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def find_key(self, key: str, states: Iterable[str] = STATES) -> Job | None:
        """The newest job with this key in one of `states`."""
        states = tuple(states)
        marks = ",".join("?" * len(states))
        with self._lock:
            row = self._db.execute(f"SELECT * FROM jobs WHERE key = ? AND state IN ({marks}) ORDER BY id DESC LIMIT 1",
                                   (key, *states)).fetchone()
        return self._job(row) if row else None

    def list(self, states: Iterable[str] = STATES) -> list[Job]:
        states = tuple(states)
        marks = ",".join("?" * len(states))
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id", states).fetchall()
        return [self._job(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        out = dict.fromkeys(STATES, 0)
        out.update({state: n for state, n in rows})
        return out

    def add(self, job: Job, redo_if_results_gone: bool = True) -> tuple[Job, bool]:
        """Insert a queued job; (job, True). If its key is queued or running, or done (with its
        result folder still there, unless redo_if_results_gone is False), that job instead;
        (existing, False)."""
        with self._lock:
            existing = self.find_key(job.key, ("queued", "running", "done"))
            results_there = existing is not None and existing.out_dir and Path(existing.out_dir).is_dir()
            if existing is not None and (existing.state != "done" or results_there or not redo_if_results_gone):
                return existing, False
            values = asdict(job)
            values.pop("id")
            values.update(state="queued", created=time.time())
            for name in _JSON_FIELDS:
                values[name] = json.dumps(values[name])
            cols = ", ".join(values)
            cur = self._db.execute(f"INSERT INTO jobs ({cols}) VALUES ({', '.join('?' * len(values))})",
                                   tuple(values.values()))
            return self.get(cur.lastrowid), True

    def claim_next(self) -> Job | None:
        """Atomically move the oldest queued job to running and count the attempt."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1").fetchone()
                if row is None:
                    self._db.execute("COMMIT")
                    return None
                self._db.execute("UPDATE jobs SET state = 'running', attempts = attempts + 1, started = ? WHERE id = ?",
                                 (time.time(), row[0]))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return self.get(row[0])

    def update(self, job_id: int, **values) -> Job:
        for name in _JSON_FIELDS:
            if name in values:
                values[name] = json.dumps(values[name])
        with self._lock:
            sets = ", ".join(f"{k} = ?" for k in values)
            self._db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*values.values(), job_id))
            return self.get(job_id)

    def set_state(self, job_id: int, state: str, *, only_from: Iterable[str] | None = None, **values) -> bool:
        """Change a job's state (and fields); with only_from, only if it is in one of those states."""
        assert state in STATES
        values["state"] = state
        if state in ("done", "error", "cancelled"):
            values.setdefault("finished", time.time())
        for name in _JSON_FIELDS:
            if name in values:
                values[name] = json.dumps(values[name])
        sets = ", ".join(f"{k} = ?" for k in values)
        where, params = "id = ?", [job_id]
        if only_from is not None:
            only_from = tuple(only_from)
            where += f" AND state IN ({','.join('?' * len(only_from))})"
            params += list(only_from)
        with self._lock:
            cur = self._db.execute(f"UPDATE jobs SET {sets} WHERE {where}", (*values.values(), *params))
            return cur.rowcount == 1

    def out_roots(self) -> list[Path]:
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT out_root FROM jobs").fetchall()
        return [Path(r[0]) for r in rows]

    def get_setting(self, name: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def set_setting(self, name: str, value: str | None) -> None:
        with self._lock:
            if value is None:
                self._db.execute("DELETE FROM settings WHERE name = ?", (name,))
            else:
                self._db.execute("INSERT OR REPLACE INTO settings (name, value) VALUES (?, ?)", (name, value))

    def settings_with_prefix(self, prefix: str) -> dict[str, str]:
        with self._lock:
            rows = self._db.execute("SELECT name, value FROM settings WHERE name LIKE ? ESCAPE '\\'",
                                    (prefix.replace("%", "\\%").replace("_", "\\_") + "%",)).fetchall()
        return {name[len(prefix):]: value for name, value in rows}


# --- executors ---------------------------------------------------------------------------------

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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _manifest_job_id(folder: Path) -> int | None:
    try:
        return int(json.loads((folder / MANIFEST_NAME).read_text())["job_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class LocalExecutor:
    """One worker thread that owns the engine (built once, on the first job) and runs jobs one at a
    time, in submission order."""

    def __init__(self, store: JobStore, pattern: str, on_event: EventSink, max_attempts: int = 3,
                 write_report: bool = True):
        self.store = store
        self.pattern = pattern
        self.on_event = on_event
        self.max_attempts = max_attempts
        self.write_report = write_report
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
        from .transfer import make_engine
        if self._engine is None or self._engine_settings != asdict(settings):
            self._engine = make_engine(settings)
            self._engine_settings = asdict(settings)
        return self._engine

    def _automixer_for(self, settings):
        from .automix import Automixer
        if self._automixer is None or self._automixer_settings != asdict(settings):
            self._automixer = Automixer.from_settings(settings)
            self._automixer_settings = asdict(settings)
        return self._automixer

    def _execute(self, job: Job, staging: Path, progress: Callable[[str, float], None]):
        """Run the job's work into the staging folder; its TransferResult or AutomixResult."""
        inputs = job.inputs if len(job.inputs) > 1 else job.inputs[0]
        progress("loading engine", 0.0)
        if job.job_type == "automix":
            from .automix import AutomixSettings, automix
            settings = AutomixSettings(**job.settings)
            return automix(inputs, staging / AUTOMIX_MIX_NAME, settings, progress=progress, overwrite=True,
                           mixer=self._automixer_for(settings))
        from .transfer import transfer
        settings = TransferSettings(**job.settings)
        return transfer(inputs, job.reference, staging, settings, progress=progress, overwrite=True,
                        engine=self._engine_for(settings))

    def _final_dir(self, job: Job) -> Path:
        root = Path(job.out_root)
        final = root / output_folder_name(self.pattern, job)
        if final.exists() and _manifest_job_id(final) != job.id:
            final = root / f"{final.name}-{job.id}"
        return final

    def _run_one(self, job: Job) -> None:
        from .report import write_manifest, write_report

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
            report_path = None
            timings = dict(result.timings)
            if self.write_report:
                t0 = time.perf_counter()
                write_report(staging / REPORT_NAME, job, result, staging)
                report_path = str(final / REPORT_NAME)
                timings["report"] = round(time.perf_counter() - t0, 3)
            timings["queued"] = round((job.started or time.time()) - job.created, 3)
            timings["total"] = round(time.perf_counter() - t_start, 3)
            write_manifest(staging / MANIFEST_NAME, job, result, outputs, report_path, timings)
            if self._stopping.is_set():
                raise JobInterrupted("daemon stopping")
            _fsync_dir(staging)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(staging, final)  # the result appears whole, or not at all
            _fsync_dir(final.parent)
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
