"""`mixdaemon serve`: the background daemon that wires the parts together.

    watch folders (daemon/watcher.py) ──────┐
    OSC requests (daemon/osc.py) ───────────┼→ job store (daemon/jobstore.py, SQLite)
    request files (daemon/requestfiles.py) ─┘    → worker (daemon/worker.py, owns the engine) → results
                                                   + manifest/report (daemon/report.py)
    job events → OSC notifications + log;  OSC preview → sounddevice (daemon/preview.py)

Jobs are style transfers toward a reference, or automix jobs (the stems mixed by the automix model,
no reference): from watch folders configured with job_type = "automix", or /mixdaemon/automix.

One daemon per state folder (a lock on the folder itself enforces it). The state folder holds jobs.sqlite3, the log,
requests/ (the request files) and daemon.json (pid and the OSC address actually bound, so that
tools can find a daemon started with port 0). SIGTERM and SIGINT stop it gracefully: no new jobs,
the running job is interrupted at its next progress point and queued again for the next start.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from dataclasses import asdict
from pathlib import Path

from mixdaemon import __version__
from mixdaemon.audio.io import is_audio_file
from mixdaemon.audio.stems import STEM_NAMES, is_reference_name
from mixdaemon.daemon.config import DaemonConfig
from mixdaemon.daemon.confine import Roots
from mixdaemon.daemon.executors import make_executors
from mixdaemon.daemon.jobstore import (
    Job,
    JobEvent,
    JobStore,
    JobStoreError,
    input_files,
    make_job,
    reference_files,
)
from mixdaemon.daemon.osc import (
    NO_JOB,
    PREFIX,
    LocalClient,
    OscRequestError,
    OscServer,
    Sender,
    Target,
    parse_options,
    printable,
)
from mixdaemon.daemon.preview import MODES, PlaybackUnavailable, Player, job_preview
from mixdaemon.daemon.requestfiles import RequestFolder
from mixdaemon.daemon.watcher import REFERENCE_FOLDER, Bounce, BounceWatcher
from mixdaemon.errors import ConfigError, MixdaemonError
from mixdaemon.files import atomic_write, lock_exclusive
from mixdaemon.mixing.settings import TransferSettings, validated

log = logging.getLogger("mixdaemon")

_DEFAULT_REFERENCE = "reference"
_FOLDER_REFERENCE = "reference:"  # + folder path: a folder's reference set over OSC
_OUTPUT_ORDER = (*STEM_NAMES, "mixture")


def setup_logging(config: DaemonConfig) -> None:
    """The daemon logs to its log file and to stderr."""
    logger = logging.getLogger("mixdaemon")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    try:
        config.log_path.parent.mkdir(parents=True, exist_ok=True)
        # backslashreplace: a line naming a non-UTF-8 file name is logged, not dropped with a traceback
        file_handler = logging.FileHandler(config.log_path, encoding="utf-8", errors="backslashreplace")
    except OSError as exc:
        raise ConfigError(f"log_file: cannot write {config.log_path} ({exc.strerror or exc})") from None
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in (file_handler, logging.StreamHandler(sys.stderr)):
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.setLevel(config.log_level)
    logger.propagate = False
    # python-osc logs every odd packet through the root logger ("Could not identify content type");
    # the daemon answers those packets itself and logs them, rate-limited, above.
    logging.getLogger().setLevel(logging.ERROR)


def _target(text: str | None) -> Target | None:
    if not text:
        return None
    host, _, port = text.rpartition(":")
    return host, int(port)


class Daemon:
    """The running daemon's state; its cmd_* methods answer the OSC commands (osc.COMMANDS), each
    called with the request's sender (a UDP address, or a request file's LocalClient)."""

    def __init__(self, config: DaemonConfig):
        self.config = config
        self.settings = config.transfer
        self.automix_settings = config.automix
        self.roots = Roots(config.roots())
        self.output_root = config.output.root
        self._check_paths()
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fds = self._take_lock()
        self.store = JobStore(config.database_path)
        self.executor = make_executors(config.executor.kind, config.executor.workers, self.store,
                                       config.output.pattern, self._on_job_event, self.roots,
                                       max_attempts=config.max_attempts)
        self._ray_started = False
        # Request files: the OSC commands for clients that cannot send UDP (REAPER's Lua scripts),
        # served in this process; the bridge follows their jobs by hearing every notification.
        self.requests = RequestFolder(config.state_dir / "requests", self)
        reply = (config.osc.reply_host, config.osc.reply_port) if config.osc.reply_port else None
        self.osc = OscServer(config.osc.host, config.osc.port, self, reply_target=reply,
                             listeners=[self.requests.notify])
        self.watcher = BounceWatcher([w.path for w in config.watch], self._on_bounce,
                                     settle_seconds=config.settle_seconds, stale_seconds=config.stale_seconds,
                                     marker=config.marker, ignore=[self.output_root, config.state_dir],
                                     scan_on_start=config.scan_on_start, allowed=self.roots)
        self.player = Player(config.playback.device)
        self._cancel_requesters: dict[int, Sender] = {}
        self._awaiting_reference: set[Path] = set()
        self._lock = threading.Lock()

    # -- start and stop --

    def _check_paths(self) -> None:
        for i, w in enumerate(self.config.watch):
            if not w.path.is_dir():
                raise ConfigError(f"watch[{i}].path: {w.path} is not an existing folder")
            if w.reference is not None and not w.reference.exists():
                raise ConfigError(f"watch[{i}].reference: {w.reference} does not exist")
        if self.config.reference is not None and not self.config.reference.exists():
            raise ConfigError(f"reference: {self.config.reference} does not exist")
        try:
            self.output_root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"output.root: cannot create {self.output_root} ({exc.strerror or exc})") from None

    def _take_lock(self) -> list[int]:
        """Lock the state folder for this daemon, on descriptors held open until stop().

        The lock that counts is on the state folder itself: a lock file can be deleted (and a second
        daemon then locked a new file of the same name and ran on the same jobs), but a folder that
        holds the database and the log cannot be removed while the daemon runs. daemon.lock is
        locked as well because daemons before this one lock only that file: an older and a newer
        daemon on one state folder also exclude each other."""
        fds: list[int] = []
        targets = ((self.config.state_dir, os.O_RDONLY | os.O_DIRECTORY),
                   (self.config.state_dir / "daemon.lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)))
        try:
            for path, flags in targets:
                fds.append(lock_exclusive(path, flags))
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            if isinstance(exc, BlockingIOError):
                raise ConfigError(f"state_dir: another mixdaemon is already running with {self.config.state_dir}; "
                                  "stop it or give this one another state_dir") from None
            raise ConfigError(f"state_dir: cannot lock {path} ({exc.strerror or exc})") from None
        return fds

    def start(self) -> None:
        if self.config.executor.kind == "ray":
            from mixdaemon.daemon.ray_executor import connect
            self._ray_started = connect(self.config.executor.address,
                                        num_cpus=None if self.config.executor.address else self.config.executor.workers)
        self.executor.recover(result_roots=[self.output_root])
        self.osc.start()
        self.executor.start()
        self.watcher.start()
        self.requests.start()
        host, port = self.osc.address
        with atomic_write(self.config.state_dir / "daemon.json", "w", encoding="utf-8") as f:
            json.dump({"pid": os.getpid(), "osc_host": host, "osc_port": port, "version": __version__}, f)
        log.info("mixdaemon %s serving: OSC on udp://%s:%d; watching %s; results in %s; engine %s", __version__,
                 host, port, ", ".join(str(w.path) for w in self.config.watch) or "no folders", self.output_root,
                 self.settings.engine)

    def stop(self) -> None:
        log.info("stopping")
        self.watcher.stop()
        self.requests.stop()
        self.osc.stop()
        self.player.stop()
        self.executor.stop(timeout=10.0)
        if self._ray_started:
            from mixdaemon.daemon.ray_executor import disconnect
            disconnect()
        (self.config.state_dir / "daemon.json").unlink(missing_ok=True)
        self.store.close()
        for fd in self._lock_fds:
            os.close(fd)
        log.info("stopped")

    # -- references --

    def _folder_references(self) -> dict[Path, Path]:
        refs = {Path(folder): Path(ref) for folder, ref in self.store.settings_with_prefix(_FOLDER_REFERENCE).items()}
        for w in self.config.watch:
            if w.reference is not None:
                refs.setdefault(w.path, w.reference)
        return refs

    def reference_for(self, folder: Path, beside: Path | None = None) -> Path | None:
        """The reference for stems in `folder`, most specific first: a reference.* file or reference/
        folder beside the stems; a reference set over OSC for the folder or the nearest folder above
        (over a watch folder's configured one); a reference.* file in the watch folder above; the
        default set over OSC; the configured default."""
        if beside is not None:
            return beside
        local = self._reference_in(folder)
        if local is not None:
            return local
        refs = self._folder_references()
        for candidate in (folder, *folder.parents):
            if candidate in refs:
                return refs[candidate]
        for w in self.config.watch:
            if folder == w.path or w.path in folder.parents:
                root_ref = self._reference_in(w.path)
                if root_ref is not None:
                    return root_ref
        default = self.store.get_setting(_DEFAULT_REFERENCE)
        if default:
            return Path(default)
        return self.config.reference

    @staticmethod
    def _reference_in(folder: Path) -> Path | None:
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            return None
        for p in entries:
            if p.name.startswith("."):
                continue
            if p.is_dir():
                if p.name.lower() == REFERENCE_FOLDER:
                    return p
            elif is_audio_file(p) and is_reference_name(p):
                return p  # a link out, a FIFO, a dangling link too: submit refuses it, naming it
        return None

    # -- submitting jobs --

    def submit(self, files: list[Path], reference: Path | None, out_root: Path, *, source: str, folder_name: str,
               reply_to: Target | None = None, retry_failed: bool = True,
               job_type: str = "transfer", settings: TransferSettings | None = None) -> tuple[Job, bool]:
        """Queue a job (or find the same work already queued, running or done): (job, created).
        An automix job takes no reference (None). A transfer job runs with `settings` (a request's
        options applied) or else the configured ones. With retry_failed=False (watched bounces), work
        that failed before is not queued again (the failed job is returned), nor is finished work
        whose results were deleted since: a user who cleans up the output folder does not want every
        old bounce converted again at the next start. An explicit request (OSC) redoes both.

        Every stem and reference file passes the confinement check (Roots) before it is hashed, and
        the job holds their real paths, wherever they came from."""
        source, folder_name = printable(source), printable(folder_name)  # a non-UTF-8 folder name: still text
        files = input_files(files, self.roots)
        if job_type == "automix":
            settings, ref_files = self.automix_settings, []
        else:
            settings, ref_files = settings or self.settings, reference_files(reference, self.roots)
            real = self.roots.entry(reference, "reference")
            reference = real if real.is_dir() else ref_files[0]  # a file by its own name, as a stem is
        job = make_job(files, reference, ref_files, out_root, settings, job_type=job_type, source=source,
                       folder_name=folder_name, reply_to=f"{reply_to[0]}:{reply_to[1]}" if reply_to else None)
        if not retry_failed:
            failed = self.store.find_key(job.key, ("error",))
            if failed is not None and self.store.find_key(job.key, ("queued", "running", "done")) is None:
                return failed, False
        job, created = self.store.add(job, redo_if_results_gone=retry_failed)
        if created:
            log.info("job %d: queued from %s (%d file(s) in %s)%s", job.id, source, len(files), folder_name,
                     ", to automix" if job_type == "automix" else "")
            self.executor.wake()
        return job, created

    def _on_bounce(self, bounce: Bounce) -> None:
        """Queue a complete bounce (the watcher calls this). A bounce refused for its inputs or its
        reference is logged and notified, and looked at again once it changes. Any other failure (the
        job database, a full disk, a bug) is notified and raised: the watcher logs it and hands the
        bounce on again later, so that it is not lost."""
        source = f"watch:{bounce.folder}"
        job_type = self.config.job_type_for(bounce.watch_root)
        try:
            if job_type == "automix":
                job, created = self.submit(list(bounce.files), None, self.output_root, source=source,
                                           folder_name=bounce.folder.name, retry_failed=False, job_type=job_type)
            else:
                job, created = self._submit_bounce(bounce, source)
        except Exception as exc:
            if isinstance(exc, MixdaemonError) and not isinstance(exc, JobStoreError):
                log.error("%s", exc)
                self.osc.notify(f"{PREFIX}/error", [NO_JOB, " ".join(str(exc).split())])
                return
            reason = str(exc) if isinstance(exc, MixdaemonError) else f"internal error: {type(exc).__name__}: {exc}"
            self.osc.notify(f"{PREFIX}/error", [NO_JOB, f"{bounce.folder}: not queued yet, the watcher tries again "
                                                        f"later: {' '.join(reason.split())}"])
            raise
        if created:
            self.osc.notify(f"{PREFIX}/queued", [job.id, str(bounce.folder)])
        else:
            log.info("%s: same inputs, reference and settings as job %d (%s); not processed again",
                     bounce.folder, job.id, job.state)

    def _submit_bounce(self, bounce: Bounce, source: str) -> tuple[Job, bool]:
        """A style-transfer job for a bounce, with the folder's reference."""
        reference = self.reference_for(bounce.folder, bounce.reference)
        if reference is None:
            with self._lock:
                self._awaiting_reference.add(bounce.folder)
            raise MixdaemonError(f"{bounce.folder}: no reference for this bounce; drop a reference.wav beside "
                                 "the stems, set reference in the config, or send /mixdaemon/reference")
        return self.submit(list(bounce.files), reference, self.output_root, source=source,
                           folder_name=bounce.folder.name, retry_failed=False)

    # -- OSC commands --

    def cmd_ping(self, sender: Sender):
        return [(f"{PREFIX}/pong", [__version__])]

    def _settings_with(self, options: str) -> TransferSettings:
        """The configured transfer settings with a request's options (osc.parse_options) applied,
        checked as config.toml's [transfer] is. Stem amounts are added to the configured ones."""
        changes = parse_options(options)
        if "stem_amount" in changes:
            changes["stem_amount"] = {**self.settings.stem_amount, **changes["stem_amount"]}
        try:
            return validated(TransferSettings, {**asdict(self.settings), **changes})
        except ConfigError as exc:
            raise OscRequestError(f"options: {exc}") from None

    def _submit_request(self, sender: Sender, files: list[Path], folder: Path, reference: str, out: str,
                        job_type: str = "transfer", settings: TransferSettings | None = None):
        out_root = self.roots.folder_or_new(out, "output folder") if out else self.output_root
        ref = None
        if job_type == "transfer":  # submit checks the reference as it checks the stems
            ref = Path(reference) if reference else self.reference_for(folder)
            if ref is None:
                raise OscRequestError("no reference given and no default reference set; pass one, or send "
                                      "/mixdaemon/reference PATH first")
        try:
            out_root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OscRequestError(f"output folder {out_root}: cannot create ({exc.strerror or exc})") from None
        if isinstance(sender, LocalClient):  # its bridge hears every job's notifications anyway
            source, reply_to = f"request:{sender.name}", None
        else:
            source, reply_to = f"osc:{sender[0]}:{sender[1]}", sender
        job, created = self.submit(files, ref, out_root, source=source, folder_name=folder.name, reply_to=reply_to,
                                   job_type=job_type, settings=settings)
        replies = [(f"{PREFIX}/queued", [job.id, str(folder)])]
        if created:
            self.osc.notify(f"{PREFIX}/queued", [job.id, str(folder)], exclude=sender)
        elif job.state == "done":
            replies.append((f"{PREFIX}/done", self._done_args(job)))
        return replies

    def _stem_files(self, stems: str) -> tuple[list[Path], Path]:
        """(the real paths of the stem files of a folder or file inside the roots, the folder they
        are in)."""
        files = input_files(stems, self.roots)
        folder = self.roots.entry(stems, "stems")
        return files, folder if folder.is_dir() else folder.parent

    def cmd_submit(self, sender: Sender, stems: str, reference: str = "", out: str = "", options: str = ""):
        settings = self._settings_with(options) if options.strip() else None
        files, folder = self._stem_files(stems)
        return self._submit_request(sender, files, folder, reference, out, settings=settings)

    def cmd_automix(self, sender: Sender, stems: str, out: str = ""):
        files, folder = self._stem_files(stems)
        return self._submit_request(sender, files, folder, "", out, job_type="automix")

    def cmd_submit_files(self, sender: Sender, reference: str, out: str, *stems: str):
        files = input_files(stems, self.roots)
        return self._submit_request(sender, files, files[0].parent, reference, out)

    def cmd_reference(self, sender: Sender, first: str, second: str | None = None):
        folder, ref_text = (None, first) if second is None else (self.roots.folder_or_new(first, "folder"), second)
        if ref_text:
            # Stored resolved (a file keeps its own name, see Roots.named); checked again at each use.
            files = reference_files(ref_text, self.roots)  # audio inside the roots: a clear error now, not per job
            real = self.roots.entry(ref_text, "reference")
            ref = real if real.is_dir() else files[0]
        else:
            ref = None
        name = _DEFAULT_REFERENCE if folder is None else f"{_FOLDER_REFERENCE}{folder}"
        self.store.set_setting(name, None if ref is None else str(ref))
        log.info("reference for %s %s", "new bounces" if folder is None else folder,
                 f"set to {ref}" if ref else "cleared")
        with self._lock:
            waiting = [f for f in self._awaiting_reference if folder is None or f == folder or folder in f.parents]
            self._awaiting_reference.difference_update(waiting)
        for f in waiting:
            self.watcher.rescan(f)
        return [(f"{PREFIX}/reference/ok", ["" if folder is None else str(folder), "" if ref is None else str(ref)])]

    def _job(self, job_id: int) -> Job:
        job = self.store.get(job_id)
        if job is None:
            raise OscRequestError(f"job {job_id}: no such job")
        return job

    def cmd_status(self, sender: Sender, job_id: int | None = None):
        if job_id is None:
            counts = self.store.counts()
            running = self.store.list(("running",))
            return [(f"{PREFIX}/status/summary", [counts["queued"], counts["running"], counts["done"], counts["error"],
                                                  counts["cancelled"], running[0].id if running else -1])]
        job = self._job(job_id)
        percent, stage = {"done": (100.0, "done"), "queued": (0.0, "queued")}.get(job.state, (0.0, job.state))
        if job.state == "running":
            percent, stage = self.executor.progress_of(job.id) or (0.0, "starting")
        info = job.out_dir if job.state == "done" else (job.error or "")
        return [(f"{PREFIX}/status/reply", [job.id, job.state, float(percent), stage, info or ""])]

    def cmd_cancel(self, sender: Sender, job_id: int):
        job = self._job(job_id)
        if self.store.set_state(job.id, "cancelled", only_from=("queued",), error="cancelled by request"):
            log.info("job %d: cancelled before it started", job.id)
            self.osc.notify(f"{PREFIX}/cancelled", [job.id], requester=_target(job.reply_to), exclude=sender)
            return [(f"{PREFIX}/cancelled", [job.id])]
        if self.store.get(job.id).state == "running":
            with self._lock:
                self._cancel_requesters[job.id] = sender
            if self.executor.cancel(job.id):
                return []  # /cancelled follows when the worker reaches its next progress point
        raise OscRequestError(f"job {job.id}: is {self.store.get(job.id).state}; only queued or running jobs can be cancelled")

    def cmd_preview(self, sender: Sender, job_id: int, mode: str = "converted"):
        if mode not in MODES:
            raise OscRequestError(f"{PREFIX}/preview: mode '{mode[:40]}': choose {', '.join(MODES)}")
        job = self._job(job_id)
        if job.state != "done":
            raise OscRequestError(f"job {job.id}: is {job.state}; only finished jobs can be previewed")

        def load_and_play():
            try:
                inputs = [str(self.roots.file(p, "stem file")) for p in job.inputs]  # links: checked again
                seconds = job_preview(self.player, job.outputs, inputs, mode, self.config.playback.ab_seconds)
            except PlaybackUnavailable as exc:
                log.warning("preview of job %d: %s", job.id, exc)
                self.osc.reply(sender, f"{PREFIX}/warning", [job.id, str(exc)])
                return
            except MixdaemonError as exc:
                log.error("preview of job %d: %s", job.id, exc)
                self.osc.error(sender, job.id, f"preview: {exc}")
                return
            except Exception as exc:
                log.exception("preview of job %d failed", job.id)
                self.osc.error(sender, job.id, f"preview: internal error: {type(exc).__name__}: {exc}")
                return
            log.info("preview of job %d (%s, %.1f s) started", job.id, mode, seconds)
            self.osc.reply(sender, f"{PREFIX}/preview/playing", [job.id, mode, round(seconds, 3)])

        threading.Thread(target=load_and_play, name="mixdaemon-preview", daemon=True).start()
        return []

    def cmd_preview_stop(self, sender: Sender):
        was_playing = self.player.stop()
        return [(f"{PREFIX}/preview/stopped", [1 if was_playing else 0])]

    def cmd_subscribe(self, sender: Sender):
        self.osc.subscribe(sender, True)
        return [(f"{PREFIX}/subscribed", [])]

    def cmd_unsubscribe(self, sender: Sender):
        self.osc.subscribe(sender, False)
        return [(f"{PREFIX}/unsubscribed", [])]

    # -- job events → OSC --

    @staticmethod
    def _done_args(job: Job) -> list:
        return [job.id, job.manifest or "", *(job.outputs[n] for n in _OUTPUT_ORDER if n in job.outputs)]

    def _on_job_event(self, event: JobEvent) -> None:
        job = event.job
        requester = _target(job.reply_to)
        if event.kind == "progress":
            self.osc.notify(f"{PREFIX}/progress", [job.id, float(event.percent), event.stage], requester)
        elif event.kind == "done":
            self.osc.notify(f"{PREFIX}/done", self._done_args(job), requester)
        elif event.kind == "error":
            self.osc.notify(f"{PREFIX}/error", [job.id, job.error or "failed"], requester)
        elif event.kind == "cancelled":
            with self._lock:
                canceller = self._cancel_requesters.pop(job.id, None)
            if canceller is not None:
                self.osc.reply(canceller, f"{PREFIX}/cancelled", [job.id])
            self.osc.notify(f"{PREFIX}/cancelled", [job.id], requester, exclude=canceller)


def serve(config: DaemonConfig) -> int:
    """Run the daemon until SIGTERM or SIGINT; returns the exit status."""
    setup_logging(config)
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    daemon = Daemon(config)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        daemon.start()
        while not stop.wait(0.5):
            pass
    finally:
        daemon.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
