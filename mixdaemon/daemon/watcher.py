"""Watch folders: turn files appearing on disk into complete bounces, one job each.

A bounce is a folder that receives audio files: the watch folder itself or any folder below it. Its
stems are grouped by that folder, and the bounce is handed on only once it is complete:

- nothing in the folder changed (file list, sizes, modification times) for `settle_seconds`;
- every file can be opened for reading;
- every WAV header is final: the RIFF and data sizes it declares match the bytes present. A DAW
  writes the header first (with the final sizes, or with placeholders it patches on close), so a WAV
  still being written reads as incomplete however slowly it is written. A header that stays
  inconsistent for `stale_seconds` is handed on anyway, and the job fails with a "truncated" reason;
- if a marker name is configured, a file of that name exists in the folder.

Only files inside the allowed roots are opened: a stem linked to a file outside them, or a FIFO
named like a WAV, is not read here; the bounce is handed on and the daemon refuses it, naming the
file (daemon/confine.py). A bounce that could not be handed on (the job database failed, a full
disk) is handed on again later, after 1 s, 2 s, 4 s... up to 5 minutes, until it is.

Not bounces: hidden files and folders (names starting with "."), the output root and the state
folder, folders named `reference` (a reference beside stems), and folders holding a mixdaemon
manifest (results, should they end up under a watch folder). A bounce whose files did not change
since it was last handed on is not handed on again.

watchdog delivers the events; each event only marks its folder "active", and a scanner thread
re-reads active folders, so a missed or coalesced event cannot lose a file.
"""
from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from mixdaemon.audio.io import is_audio_file, wav_layout
from mixdaemon.audio.stems import is_reference_name
from mixdaemon.daemon.confine import ConfinementError, Roots
from mixdaemon.daemon.jobstore import MANIFEST_NAME

log = logging.getLogger("mixdaemon.watcher")

REFERENCE_FOLDER = "reference"
RETRY_MAX_SECONDS = 300.0  # the longest wait before a bounce that could not be handed on is tried again
_MANIFEST_MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class Bounce:
    folder: Path                      # the folder holding the stems
    watch_root: Path                  # the watch folder it was found under
    files: tuple[Path, ...]           # stem files, sorted
    reference: Path | None            # a reference.* file or reference/ folder beside the stems


def wav_header_is_final(path: Path) -> bool:
    """False while a RIFF/WAVE file's declared sizes do not match its length (being written, or
    truncated). Other formats (and non-RIFF files named .wav) are not judged here: True.

    audio.io.read_audio checks only that the data chunk is not shorter than declared; a writer that
    puts zero placeholders in the header and patches them on close passes that check mid-write, so
    this checks for exact agreement instead."""
    try:
        layout = wav_layout(path)
    except OSError:
        return False
    if layout is None:
        return True
    if layout.riff_size is None or layout.data_size is None:
        return False  # the RIFF header or the data chunk's is not written yet
    if layout.riff_size + 8 not in (layout.file_size, layout.file_size - 1):  # an odd pad byte may follow
        return False
    return layout.data_size > 0 and layout.data_offset + layout.data_size <= layout.file_size


def _snapshot(folder: Path, marker: str | None) -> dict[str, tuple[int, int]]:
    """{name: (size, mtime_ns)} of the folder's visible audio files (and the marker), plus the
    reference folder's files under "reference/<name>". A FIFO or a dangling link named like audio
    counts too (its own lstat): the daemon refuses it by name rather than converting the rest."""
    out: dict[str, tuple[int, int]] = {}
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return out
    for e in entries:
        if e.name.startswith("."):
            continue
        try:
            if not e.is_dir() and (is_audio_file(Path(e.name)) or e.name == marker):
                st = e.stat() if os.path.exists(e.path) else e.stat(follow_symlinks=False)
                out[e.name] = (st.st_size, st.st_mtime_ns)
            elif e.is_dir() and e.name.lower() == REFERENCE_FOLDER:
                for r in os.scandir(e.path):
                    if r.is_file() and is_audio_file(Path(r.name)):
                        st = r.stat()
                        out[f"{e.name}/{r.name}"] = (st.st_size, st.st_mtime_ns)
        except OSError:
            continue  # vanished between listing and stat: the next scan sees the new state
    return out


def _is_result_folder(folder: Path) -> bool:
    """Whether the folder holds a mixdaemon manifest: a regular file, not a link or a FIFO (which
    would block the watcher), of a manifest's size."""
    try:
        fd = os.open(folder / MANIFEST_NAME, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > _MANIFEST_MAX_BYTES:
                return False
            return json.loads(f.read()).get("generator") == "mixdaemon"
    except (OSError, ValueError, AttributeError):
        return False


class _Activity:
    __slots__ = ("last_event", "last_change", "snapshot", "failures", "retry_at")

    def __init__(self, now: float):
        self.last_event = now
        self.last_change = now
        self.snapshot: dict | None = None
        self.failures = 0      # hand-ons of this snapshot that raised
        self.retry_at = 0.0    # not handed on again before this (monotonic) time


class BounceWatcher:
    """Watches folders and calls on_bounce(Bounce) from its scanner thread when a bounce is complete;
    if on_bounce raises, the bounce is handed on again later. `allowed`: where stems may lie to be
    opened here (the daemon's roots; by default the watched folders)."""

    def __init__(self, roots: Iterable[Path], on_bounce: Callable[[Bounce], None], *, settle_seconds: float = 2.0,
                 stale_seconds: float = 60.0, marker: str | None = None, ignore: Iterable[Path] = (),
                 scan_on_start: bool = True, allowed: Roots | None = None):
        self.roots = [Path(r).resolve() for r in roots]
        self.allowed = allowed or Roots(self.roots)
        self.on_bounce = on_bounce
        self.settle = settle_seconds
        self.stale = max(stale_seconds, settle_seconds)
        self.marker = marker
        self.ignore = [Path(p).resolve() for p in ignore]
        self.scan_on_start = scan_on_start
        self._active: dict[Path, _Activity] = {}
        self._handed_on: dict[Path, dict] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._observer = Observer()
        self._scanner = threading.Thread(target=self._scan_loop, name="mixdaemon-watcher", daemon=True)

    # -- which paths count --

    def _root_of(self, path: Path) -> Path | None:
        for root in self.roots:
            if path == root or root in path.parents:
                return root
        return None

    def ignored(self, path: Path) -> bool:
        root = self._root_of(path)
        if root is None:
            return True
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            return True
        return any(path == p or p in path.parents for p in self.ignore)

    def touch(self, path: Path, is_dir: bool = False) -> None:
        """Note activity at path (a file, or a folder that appeared)."""
        path = Path(os.path.abspath(path))
        folder = path if is_dir else path.parent
        if folder.name.lower() == REFERENCE_FOLDER and self._root_of(folder.parent) is not None:
            folder = folder.parent  # a reference folder changed: its bounce changed
        if self.ignored(folder) or (not is_dir and path.name.startswith(".")):
            return
        now = time.monotonic()
        with self._lock:
            activity = self._active.get(folder)
            if activity is None:
                self._active[folder] = _Activity(now)
            else:
                activity.last_event = now

    # -- lifecycle --

    def start(self) -> None:
        handler = _Handler(self)
        for root in self.roots:
            self._observer.schedule(handler, str(root), recursive=True)
        self._observer.start()
        if self.scan_on_start:
            for root in self.roots:
                self._scan_tree(root)
        self._scanner.start()

    def stop(self) -> None:
        self._stop.set()
        if self._observer.is_alive():
            self._observer.stop()
            self._observer.join(timeout=5)
        if self._scanner.is_alive():
            self._scanner.join(timeout=5)

    def rescan(self, folder: Path) -> None:
        """Forget what was handed on for this folder (and those below) and look at it again: used
        when its reference changes."""
        folder = Path(folder).resolve()
        with self._lock:
            for f in [f for f in self._handed_on if f == folder or folder in f.parents]:
                del self._handed_on[f]
        self._scan_tree(folder)

    def _scan_tree(self, top: Path) -> None:
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and not self.ignored(Path(dirpath) / d)]
            if any(is_audio_file(Path(f)) for f in filenames):
                self.touch(Path(dirpath), is_dir=True)

    # -- the scanner --

    def _scan_loop(self) -> None:
        tick = min(0.25, self.settle / 3)
        while not self._stop.wait(tick):
            try:
                self._scan_once()
            except Exception:  # never let one odd folder stop the watching
                log.exception("watch scan failed; continuing")

    def _scan_once(self) -> None:
        now = time.monotonic()
        with self._lock:
            folders = list(self._active.items())
        for folder, activity in folders:
            seen_event = activity.last_event
            snapshot = _snapshot(folder, self.marker)
            if snapshot != activity.snapshot:
                activity.snapshot, activity.last_change = snapshot, now
                activity.failures, activity.retry_at = 0, 0.0  # changed: a new bounce, handed on once settled
                continue
            if not snapshot or not folder.is_dir():
                self._forget(folder, activity, seen_event)
                continue
            quiet = now - max(activity.last_event, activity.last_change)
            if quiet < self.settle or now < activity.retry_at:
                continue
            bounce = self._complete_bounce(folder, snapshot, quiet)
            if bounce is False:
                continue  # still being written: look again next tick
            with self._lock:
                done = bounce is None or self._handed_on.get(folder) == snapshot
            if not done:
                log.info("bounce complete: %s (%d file(s))", folder, len(bounce.files))
                try:
                    self.on_bounce(bounce)
                except Exception as exc:  # kept active: handed on again at retry_at, until it is taken
                    self._retry_later(folder, activity, exc, now)
                    continue
                with self._lock:  # only now: a bounce that was not taken is never marked as handed on
                    self._handed_on[folder] = snapshot
            self._forget(folder, activity, seen_event)

    def _retry_later(self, folder: Path, activity: _Activity, exc: Exception, now: float) -> None:
        activity.failures += 1
        delay = min(max(self.settle, 1.0) * 2 ** (activity.failures - 1), RETRY_MAX_SECONDS)
        activity.retry_at = now + delay
        log.error("%s: the bounce could not be handed on (%s: %s); trying again in %.0f s", folder,
                  type(exc).__name__, " ".join(str(exc).split())[:500], delay)
        log.debug("handing on %s failed", folder, exc_info=True)

    def _forget(self, folder: Path, activity: _Activity, seen_event: float) -> None:
        """Stop looking at a folder, unless an event arrived while it was being looked at."""
        with self._lock:
            if self._active.get(folder) is activity and activity.last_event == seen_event:
                del self._active[folder]

    def _complete_bounce(self, folder: Path, snapshot: dict, quiet: float) -> Bounce | None | bool:
        """The bounce if complete; False to wait longer; None if this folder is not a bounce."""
        if _is_result_folder(folder):
            return None
        if self.marker and self.marker not in snapshot:
            return False
        stems = sorted(folder / name for name in snapshot
                       if "/" not in name and name != self.marker and not is_reference_name(Path(name)))
        if not stems:
            return None
        for path in stems:
            try:
                real = self.allowed.file(path, "stem file")
            except ConfinementError:
                if not os.path.lexists(path):
                    return False  # gone since the snapshot: the next one shows the new state
                continue  # not opened here: the daemon refuses the bounce, naming the file
            try:
                os.close(os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
            except OSError:
                return False
            if real.suffix.lower() in (".wav", ".wave") and not wav_header_is_final(real):
                if quiet < self.stale:
                    return False
                log.warning("%s: WAV header still does not match the file after %.0f s; processing it as it is",
                            path, quiet)
        reference = next((folder / n for n in sorted(snapshot) if "/" not in n and is_reference_name(Path(n))), None)
        if reference is None:
            reference = next((p for p in folder.iterdir() if p.is_dir() and p.name.lower() == REFERENCE_FOLDER), None)
        return Bounce(folder=folder, watch_root=self._root_of(folder), files=tuple(stems), reference=reference)


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: BounceWatcher):
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        self.watcher.touch(Path(os.fsdecode(event.src_path)), event.is_directory)
        dest = getattr(event, "dest_path", None)
        if dest:
            self.watcher.touch(Path(os.fsdecode(dest)), event.is_directory)
