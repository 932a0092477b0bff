"""The job store: a durable SQLite table of every job, and the content keys that deduplicate them.

A job's life: queued → running → done | error | cancelled. The store is the single source of truth
and survives crashes (WAL journal, synchronous=FULL): on start, jobs left "running" by a dead daemon
go back to the queue (daemon/worker.py), finished ones stay finished. Each claim of a job counts an
attempt before any work starts, so a job that kills the daemon `max_attempts` times is failed
instead of crash-looping.

Two job types: "transfer" (style transfer toward a reference) and "automix" (the stems mixed by the
automix network; no reference, writes mix.wav).

The same work is never done twice: a job's key is the sha256 of its input files' contents, the
reference's contents, the job type, the engine and the settings; submitting a key that is queued,
running or done returns that job.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable

from mixdaemon.audio.io import is_audio_file
from mixdaemon.audio.stems import list_audio_files
from mixdaemon.errors import MixdaemonError
from mixdaemon.files import file_sha256

log = logging.getLogger("mixdaemon.jobstore")

STATES = ("queued", "running", "done", "error", "cancelled")
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
    source: str = ""          # "watch:<folder>", "osc:<host>:<port>" or "request:<request file name>"
    reply_to: str | None = None  # "host:port" of the UDP client that submitted it
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
    h.update(json.dumps(_keyed_settings(settings), sort_keys=True).encode())
    return h.hexdigest()


def _keyed_settings(settings) -> dict:
    """The settings as the key hashes them: a setting added since keys were first stored counts
    only when it differs from its default, so the work done before it existed keeps its key
    (upgrading does not convert every watched bounce again)."""
    values = asdict(settings)
    defaults = {f.name: f.default if f.default is not MISSING else f.default_factory()
                for f in fields(settings) if f.name in ADDED_SETTINGS}
    return {name: value for name, value in values.items()
            if name not in defaults or _comparable(value) != _comparable(defaults[name])}


# Settings that job keys did not hash when they were introduced (see _keyed_settings).
ADDED_SETTINGS = frozenset({"amount", "stem_amount", "match"})


def _comparable(value):
    return list(value) if isinstance(value, tuple) else value


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
