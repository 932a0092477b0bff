"""The job store: a durable SQLite table of every job, and the content keys that deduplicate them.

A job's life: queued → running → done | error | cancelled. The store is the single source of truth
and survives crashes (WAL journal, synchronous=FULL): on start, jobs left "running" by a dead daemon
go back to the queue (daemon/worker.py), finished ones stay finished. Each claim of a job counts an
attempt before any work starts, so a job that kills the daemon `max_attempts` times is failed
instead of crash-looping. A running job's staging folder is recorded here (its path before it is
created, its inode once it is), so that recovery removes that folder and nothing else.

Every database failure (a corrupt page, a full disk, a database deleted while the daemon runs) is
a JobStoreError naming the database file, in one line. The store remembers which file it opened
(device and inode) and, once that file is no longer the one at its path, refuses new jobs: they
would be recorded in a file that no longer exists and forgotten at the next start.

Two job types: "transfer" (style transfer toward a reference) and "automix" (the stems mixed by the
automix network; no reference, writes mix.wav).

The same work is never done twice: a job's key is the sha256 of its input files' contents, the
reference's contents, the job type, the engine and the settings; submitting a key that is queued,
running or done returns that job.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable, Iterator

from mixdaemon.audio.io import is_audio_file
from mixdaemon.audio.stems import is_reference_name
from mixdaemon.daemon.confine import Roots
from mixdaemon.errors import MixdaemonError
from mixdaemon.files import file_sha256
from mixdaemon.mixing.settings import AutomixSettings, TransferSettings

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
    staging: str | None = None        # the running job's staging folder, recorded before it is created
    staging_inode: str | None = None  # "device:inode" of that folder once the worker created it


class JobStoreError(MixdaemonError):
    """The job database failed: corrupt, unreadable, full, or no longer the file at its path."""


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


def _audio_entries(folder: Path) -> list[Path]:
    """A folder's audio-named entries that are not folders, hidden and reference.* ones left out
    (as audio.stems lists a folder), sorted. A FIFO or a link among them is listed, for Roots to
    refuse."""
    try:
        entries = list(folder.iterdir())
    except OSError as exc:
        raise MixdaemonError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from None
    return sorted(p for p in entries if is_audio_file(p) and not is_reference_name(p) and not p.is_dir())


def reference_files(reference: str | os.PathLike, roots: Roots) -> list[Path]:
    """The files a reference consists of: itself, or the audio files of a reference folder (those a
    job reads: the worker passes these, not the folder); each one a regular file inside the roots,
    its folders resolved and its own name kept (Roots.entry, Roots.named)."""
    real = roots.entry(reference, "reference")
    if not real.is_dir():
        return [roots.named(reference, "reference")]
    files = [roots.named(p, "reference file") for p in _audio_entries(real)]
    if not files:
        raise MixdaemonError(f"{reference}: reference folder holds no WAV/FLAC/AIFF files")
    return files


def input_files(stems: str | os.PathLike | Iterable[str | os.PathLike], roots: Roots) -> list[Path]:
    """A stems folder's audio files (hidden and reference.* files left out), or the given files;
    each one a regular file inside the roots, its folders resolved and its own name, which decides
    its role, kept (Roots.entry, Roots.named)."""
    if isinstance(stems, (str, os.PathLike)):
        real = roots.entry(stems, "stems")
        if not real.is_dir():
            return [roots.named(stems, "stems")]
        files = [roots.named(p, "stem file") for p in _audio_entries(real)]
        if not files:
            raise MixdaemonError(f"{stems}: no WAV/FLAC/AIFF stems found in this folder")
        return files
    files = [roots.named(f, "stem file") for f in stems]
    if not files:
        raise MixdaemonError("no input files given")
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


def make_job(files: list[Path], reference: Path | None, ref_files: list[Path], out_root: str | os.PathLike,
             settings, *, job_type: str = "transfer", source: str = "", folder_name: str = "",
             reply_to: str | None = None) -> Job:
    """A queued job (not yet stored) for files and reference files that passed the confinement
    check: their contents hashed and keyed. `reference` is how the job names its reference (a
    folder or a file), None for automix."""
    input_hashes, reference_hashes = hash_files(files), hash_files(ref_files)
    return Job(id=0, key=job_key(input_hashes, reference_hashes, settings, job_type), state="queued",
               inputs=[str(f) for f in files], reference=str(reference) if reference is not None else "",
               out_root=str(out_root), settings=asdict(settings), source=source, reply_to=reply_to,
               folder_name=folder_name, input_hashes=input_hashes, reference_hashes=reference_hashes,
               job_type=job_type)


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
    job_type TEXT NOT NULL DEFAULT 'transfer',
    staging TEXT,
    staging_inode TEXT
);
-- At most one live job per key: the database itself refuses duplicates. (A finished key may be
-- done again, but only once its results are gone: JobStore.add.)
CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_live_per_key ON jobs(key) WHERE state IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, id);
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_JSON_FIELDS = ("inputs", "settings", "input_hashes", "reference_hashes", "outputs")
# Columns added since the first schema, with their definitions (older databases gain them on open).
_ADDED_COLUMNS = {"job_type": "TEXT NOT NULL DEFAULT 'transfer'", "staging": "TEXT", "staging_inode": "TEXT"}
_SETTINGS_TYPES = {"transfer": TransferSettings, "automix": AutomixSettings}


def _to_db(value):
    """A value as the database holds it. Text with lone surrogates (a file name that is not valid
    UTF-8, as Python decodes it) cannot be SQLite text: it is stored as its file-system bytes, a
    BLOB, which `_from_db` turns back into the same text."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogateescape")
    return value


def _from_db(value):
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _move_aside_orphan_journal(path: Path) -> None:
    """A -wal/-shm file without its database belongs to a database that was deleted: SQLite would
    replay its pages onto the new, empty database. Moved aside (never deleted), and said so."""
    for suffix in ("-wal", "-shm"):
        journal = path.with_name(path.name + suffix)
        if journal.exists():
            aside = journal.with_name(f"{journal.name}.orphaned-{int(time.time())}")
            os.rename(journal, aside)
            log.warning("%s: left by a job database that was deleted; moved aside to %s", journal, aside.name)


class JobStore:
    """SQLite job table. One connection, serialised by a lock: the daemon's threads (OSC, watcher,
    worker) all write rarely, and a single writer keeps SQLite simple and safe."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.RLock()
        self._lost: str | None = None  # why new jobs are refused, once the file is gone or replaced
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # A new database: the worker adopts the results already in the output root (worker.recover).
            self.created = not self.path.exists()
            if self.created:
                _move_aside_orphan_journal(self.path)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
            for name, definition in _ADDED_COLUMNS.items():
                if name not in columns:  # an older database (before job types every job was a transfer)
                    self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {definition}")
        except sqlite3.DatabaseError as exc:
            raise JobStoreError(f"{self.path}: job database unusable ({exc}); move it away to start afresh") from None
        except OSError as exc:
            raise JobStoreError(f"{exc.filename or self.path}: cannot open the job database "
                                f"({exc.strerror or exc})") from None
        self._identity = _identity(self.path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        """The connection, held by this thread; any SQLite failure becomes one JobStoreError line."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise JobStoreError(f"{self.path}: job database failed ({exc})") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def on_disk(self) -> bool:
        """Whether the database file this store opened is still the one at its path. The first time
        it is not (deleted, or replaced by another file), that is logged once; from then on new jobs
        are refused (add), while the jobs already in it still run and report."""
        with self._lock:
            if self._lost is None and _identity(self.path) != self._identity:
                self._lost = (f"{self.path}: the job database was deleted or replaced while the daemon ran; "
                              "new jobs are refused until the daemon is restarted (results already written "
                              "are found again from their manifests at the next start)")
                log.error("%s", self._lost)
            return self._lost is None

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        data = {name: _from_db(value) for name, value in dict(row).items()}
        for name in _JSON_FIELDS:
            data[name] = json.loads(data[name]) if data[name] is not None else None
        return Job(**data)

    def get(self, job_id: int) -> Job | None:
        with self._locked() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def find_key(self, key: str, states: Iterable[str] = STATES) -> Job | None:
        """The newest job with this key in one of `states`."""
        states = tuple(states)
        marks = ",".join("?" * len(states))
        with self._locked() as db:
            row = db.execute(f"SELECT * FROM jobs WHERE key = ? AND state IN ({marks}) ORDER BY id DESC LIMIT 1",
                             (key, *states)).fetchone()
        return self._job(row) if row else None

    def list(self, states: Iterable[str] = STATES) -> list[Job]:
        states = tuple(states)
        marks = ",".join("?" * len(states))
        with self._locked() as db:
            rows = db.execute(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id", states).fetchall()
        return [self._job(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._locked() as db:
            rows = db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        out = dict.fromkeys(STATES, 0)
        out.update({state: n for state, n in rows})
        return out

    def add(self, job: Job, redo_if_results_gone: bool = True) -> tuple[Job, bool]:
        """Insert a queued job; (job, True). If its key is queued or running, or done (with its
        result folder still there, unless redo_if_results_gone is False), that job instead;
        (existing, False). Refused (JobStoreError) once the database file is lost (on_disk).

        An explicit request (redo_if_results_gone) for work that is done, with its result in
        another output root than the one asked for, is a new job: the worker copies that result
        (finished_twin) into the root asked for, so that every request yields a result where its
        client looks (REAPER's `<project>/mixdaemon/`)."""
        if not self.on_disk():
            raise JobStoreError(self._lost)
        with self._lock:
            existing = self.find_key(job.key, ("queued", "running", "done"))
            results_there = existing is not None and existing.out_dir and Path(existing.out_dir).is_dir()
            if existing is not None and existing.state == "done" and results_there and redo_if_results_gone:
                here = self._done_in(job.key, job.out_root)
                return (here, False) if here is not None else (self._insert(job, state="queued", created=time.time()),
                                                               True)
            if existing is not None and (existing.state != "done" or results_there or not redo_if_results_gone):
                return existing, False
            return self._insert(job, state="queued", created=time.time()), True

    def _done_jobs(self, key: str) -> list[Job]:
        """The done jobs of this key whose result folders are still there, newest first."""
        with self._locked() as db:
            rows = db.execute("SELECT * FROM jobs WHERE key = ? AND state = 'done' ORDER BY id DESC", (key,)).fetchall()
        return [job for job in map(self._job, rows) if job.out_dir and Path(job.out_dir).is_dir()]

    def _done_in(self, key: str, out_root: str) -> Job | None:
        """The newest done job of this key with its result folder in out_root, if any."""
        root = os.path.realpath(out_root)
        return next((j for j in self._done_jobs(key) if os.path.realpath(Path(j.out_dir).parent) == root), None)

    def finished_twin(self, job: Job) -> Job | None:
        """Another job of the same work (the same key), done, whose result folder is still there:
        the worker copies its result rather than converting again."""
        return next((j for j in self._done_jobs(job.key) if j.id != job.id), None)

    def adopt_result(self, manifest_path: Path) -> Job | None:
        """A result folder's manifest (written by this daemon, or one that shared the output root)
        as a done job, so that its work is not done again: the job it names, with its key computed
        from the contents and settings the manifest records. None if the manifest is not one of ours
        or its key is already known."""
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            if manifest.get("generator") != "mixdaemon":
                return None
            job_type = manifest.get("job_type", "transfer")
            settings = _SETTINGS_TYPES[job_type](**manifest["settings"])
            input_hashes = {i["path"]: i["sha256"] for i in manifest["inputs"]}
            reference = manifest.get("reference") or {"path": "", "files": []}
            reference_hashes = {f["path"]: f["sha256"] for f in reference["files"]}
            key = job_key(input_hashes, reference_hashes, settings, job_type)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # not a manifest this version can read: the folder is left as it is
        with self._lock:
            if self.find_key(key, ("queued", "running", "done")) is not None:
                return None
            folder = manifest_path.parent
            return self._insert(Job(id=0, key=key, state="done", inputs=list(input_hashes),
                                    reference=reference["path"], out_root=str(folder.parent),
                                    settings=asdict(settings), source=manifest.get("source", ""),
                                    folder_name=Path(next(iter(input_hashes), "")).parent.name,
                                    input_hashes=input_hashes, reference_hashes=reference_hashes,
                                    out_dir=str(folder), manifest=str(manifest_path),
                                    outputs=manifest.get("outputs", {}), job_type=job_type),
                                state="done", created=time.time(), finished=time.time())

    def _insert(self, job: Job, **values) -> Job:
        row = asdict(job)
        row.pop("id")
        row.update(values)
        for name in _JSON_FIELDS:
            row[name] = json.dumps(row[name])
        with self._locked() as db:
            cur = db.execute(f"INSERT INTO jobs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                             tuple(map(_to_db, row.values())))
        return self.get(cur.lastrowid)

    def claim_next(self) -> Job | None:
        """Atomically move the oldest queued job to running and count the attempt."""
        with self._locked() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1").fetchone()
                if row is None:
                    db.execute("COMMIT")
                    return None
                db.execute("UPDATE jobs SET state = 'running', attempts = attempts + 1, started = ? WHERE id = ?",
                           (time.time(), row[0]))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return self.get(row[0])

    def update(self, job_id: int, **values) -> Job:
        for name in _JSON_FIELDS:
            if name in values:
                values[name] = json.dumps(values[name])
        with self._locked() as db:
            sets = ", ".join(f"{k} = ?" for k in values)
            db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*map(_to_db, values.values()), job_id))
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
        with self._locked() as db:
            cur = db.execute(f"UPDATE jobs SET {sets} WHERE {where}", (*map(_to_db, values.values()), *params))
            return cur.rowcount == 1

    def get_setting(self, name: str) -> str | None:
        with self._locked() as db:
            row = db.execute("SELECT value FROM settings WHERE name = ?", (_to_db(name),)).fetchone()
        return _from_db(row[0]) if row else None

    def set_setting(self, name: str, value: str | None) -> None:
        with self._locked() as db:
            if value is None:
                db.execute("DELETE FROM settings WHERE name = ?", (_to_db(name),))
            else:
                db.execute("INSERT OR REPLACE INTO settings (name, value) VALUES (?, ?)", (_to_db(name), _to_db(value)))

    def settings_with_prefix(self, prefix: str) -> dict[str, str]:
        with self._locked() as db:  # a few rows; filtered here, since LIKE does not match a BLOB name (_to_db)
            rows = db.execute("SELECT name, value FROM settings").fetchall()
        named = {_from_db(name): _from_db(value) for name, value in rows}
        return {name[len(prefix):]: value for name, value in named.items() if name.startswith(prefix)}
