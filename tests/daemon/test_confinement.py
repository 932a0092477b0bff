"""Every input the daemon reads passes one confinement check: a stem or reference linked out of the
allowed roots, a FIFO, a huge file is refused in one line naming it, and never opened; hashing
never stalls OSC; a bounce whose hand-on failed is tried again. Real daemon processes, real
symlinks and FIFOs, real UDP; the files outside the roots are watched with inotify for opens."""
import errno
import json
import logging
import os
import resource
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from mixdaemon.daemon.osc import OscClient, OscServer
from mixdaemon.daemon.watcher import BounceWatcher
from tests.support.daemon import (
    DONE,
    ERROR,
    QUEUED,
    DaemonProcess,
    daemon_config,
    request,
    write_stems,
    write_toml,
)

REFUSED = "refused, outside the allowed roots"
NOT_REGULAR = "not a regular file"


class OpenedFiles:
    """Records every open of a file in a folder (inotify, through any link), from now on."""

    def __init__(self, folder: Path):
        self.opened: list[str] = []
        handler = FileSystemEventHandler()
        handler.on_opened = lambda event: self.opened.append(os.fsdecode(event.src_path))
        self._observer = Observer()
        self._observer.schedule(handler, str(folder), recursive=True)
        self._observer.start()

    def stop(self) -> list[str]:
        time.sleep(0.3)  # inotify delivers asynchronously
        self._observer.stop()
        self._observer.join(5)
        return self.opened


def _outside(tmp: Path, reference: Path) -> Path:
    """tmp/outside: a WAV, a reference file and a reference folder, in no root of the daemon."""
    outside = tmp / "outside"
    write_stems(outside / "song", seconds=1.0, seed=21)
    shutil.copytree(reference, outside / "refs")
    shutil.copy(reference / "drums.wav", outside / "ref.wav")
    return outside


def _jobs(tmp: Path) -> list[dict]:
    db = sqlite3.connect(tmp / "state" / "jobs.sqlite3")
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM jobs ORDER BY id")]
    finally:
        db.close()


def _start(tmp: Path, listener, reference: Path, **extra) -> DaemonProcess:
    config = write_toml(tmp / "config.toml", daemon_config(tmp, listener.port, reference=str(reference), **extra))
    return DaemonProcess(config, tmp / "state").start()


def test_watched_links_out_of_the_roots_and_fifos_are_refused_by_name_and_never_opened(tmp_path, listener, reference):
    outside = _outside(tmp_path, reference)
    watch = tmp_path / "watch"
    bounces = {}  # bounce folder → (the file its error must name, the words)
    for name, planted, target, words in [
        ("linked stem", "vocals.wav", outside / "song" / "vocals.wav", REFUSED),
        ("linked reference file", "reference.wav", outside / "ref.wav", REFUSED),
        ("linked reference folder", "reference", outside / "refs", REFUSED),
        ("fifo stem", "bass.wav", None, NOT_REGULAR),
        ("fifo reference", "reference.wav", None, NOT_REGULAR),
    ]:
        folder = watch / name
        for stem in write_stems(folder, seconds=1.0, seed=3):
            if stem.name == planted:
                stem.unlink()
        if target is None:
            os.mkfifo(folder / planted)
        else:
            os.symlink(target, folder / planted)
        bounces[name] = (str(folder / planted), words)
    opened = OpenedFiles(outside)
    proc = _start(tmp_path, listener, reference)
    try:
        write_stems(watch / "good", seconds=1.0, seed=4)  # and the daemon keeps converting
        done = listener.wait_for(lambda a, args: a == DONE, 60)
        assert done is not None, proc.log()[-3000:]
        deadline = time.monotonic() + 30
        while len(listener.of(ERROR)) < len(bounces) and time.monotonic() < deadline:
            time.sleep(0.1)
        errors = [args[1] for args in listener.of(ERROR)]
        log = proc.log()
        for name, (path, words) in bounces.items():
            reason = [e for e in errors if path in e]
            assert len(reason) == 1 and words in reason[0], (name, errors)
            assert "\n" not in reason[0] and reason[0] in log
        assert [Path(json.loads(j["inputs"])[0]).parent.name for j in _jobs(tmp_path)] == ["good"]
        assert [p.name for p in (tmp_path / "out").iterdir()] == [f"good-{done[2][0]}"]
        assert proc.alive() and "Traceback" not in log
    finally:
        outside_opened = opened.stop()
        proc.kill()
    assert outside_opened == []  # no file outside the roots was opened, not even for a header


@pytest.fixture(scope="module")
def osc_daemon(tmp_path_factory, reference):
    """A daemon allowed to read tmp/allowed, with stems in tmp/allowed/song; files outside in tmp/outside."""
    from tests.support.daemon import OscListener
    tmp = tmp_path_factory.mktemp("confined")
    outside = _outside(tmp, reference)
    write_stems(tmp / "allowed" / "song", seconds=1.0, seed=5)
    listener = OscListener()
    proc = _start(tmp, listener, reference, allowed_roots=[str(tmp / "allowed")])
    yield proc, listener, tmp, outside
    listener.close()
    proc.kill()


def test_references_set_over_osc_or_stored_are_checked_at_every_use(osc_daemon, reference):
    proc, listener, tmp, outside = osc_daemon
    opened = OpenedFiles(outside)
    try:
        refs = tmp / "allowed" / "refs"
        shutil.copytree(reference, refs / "with a link")
        os.symlink(outside / "song" / "drums.wav", refs / "with a link" / "zz.wav")
        reply, args = request(listener, proc.address, "/mixdaemon/reference", str(refs / "with a link"))
        assert reply == ERROR and REFUSED in args[1] and str(refs / "with a link" / "zz.wav") in args[1], args
        # Set while it was a plain file; a link out since: refused when it is used.
        shutil.copy(reference / "drums.wav", refs / "plain.wav")
        reply, args = request(listener, proc.address, "/mixdaemon/reference", str(refs / "plain.wav"))
        assert reply == "/mixdaemon/reference/ok", args
        (refs / "plain.wav").unlink()
        os.symlink(outside / "ref.wav", refs / "plain.wav")
        reply, args = request(listener, proc.address, "/mixdaemon/submit", str(tmp / "allowed" / "song"), reply=QUEUED)
        assert reply == ERROR and REFUSED in args[1] and str(refs / "plain.wav") in args[1], args
        # The reference given with the request, a link out: refused too.
        reply, args = request(listener, proc.address, "/mixdaemon/submit", str(tmp / "allowed" / "song"),
                              str(refs / "plain.wav"), reply=QUEUED)
        assert reply == ERROR and REFUSED in args[1], args
        assert request(listener, proc.address, "/mixdaemon/reference", "")[0] == "/mixdaemon/reference/ok"
        reply, args = request(listener, proc.address, "/mixdaemon/status", reply="/mixdaemon/status/summary")
        assert args[:5] == [0, 0, 0, 0, 0]  # nothing was queued
    finally:
        assert opened.stop() == []


def test_a_fifo_or_a_huge_file_is_refused_at_once_and_osc_keeps_answering(osc_daemon, reference):
    proc, listener, tmp, _ = osc_daemon
    fifos = tmp / "allowed" / "fifo"
    write_stems(fifos, seconds=1.0, seed=6)
    (fifos / "drums.wav").unlink()
    os.mkfifo(fifos / "drums.wav")
    huge = tmp / "allowed" / "huge" / "mixture.wav"
    huge.parent.mkdir()
    with open(huge, "wb") as f:
        f.truncate(5 * 2**30)  # sparse: 5 GiB that take no disk
    for address, args, words in [
        ("/mixdaemon/submit", (str(fifos / "drums.wav"), str(reference)), NOT_REGULAR),
        ("/mixdaemon/submit", (str(fifos), str(reference)), NOT_REGULAR),  # the FIFO among stems
        ("/mixdaemon/submit/files", (str(reference), "", str(fifos / "bass.wav"), str(fifos / "drums.wav")), NOT_REGULAR),
        ("/mixdaemon/reference", (str(fifos / "drums.wav"),), NOT_REGULAR),
        ("/mixdaemon/submit", (str(huge), str(reference)), "5.0 GiB is over the 4 GiB limit"),
    ]:
        t0 = time.monotonic()
        reply, values = request(listener, proc.address, address, *args, reply=QUEUED, timeout=5)
        assert reply == ERROR and words in values[1], (address, args, values)
        assert time.monotonic() - t0 < 2.0
        assert request(listener, proc.address, "/mixdaemon/ping", reply="/mixdaemon/pong", timeout=2)[0] \
            == "/mixdaemon/pong"
    assert proc.alive()


class _SlowSubmits:
    """An OSC handler whose submit takes as long as the test says (a large bounce being hashed)."""

    def __init__(self):
        self.release = threading.Event()

    def cmd_ping(self, sender):
        return [("/mixdaemon/pong", ["test"])]

    def cmd_submit(self, sender, stems, reference="", out="", options=""):
        self.release.wait(10)
        return [("/mixdaemon/queued", [1, stems])]


def test_ping_is_answered_while_a_submit_is_being_hashed():
    handler = _SlowSubmits()
    server = OscServer("127.0.0.1", 0, handler)
    server.start()
    client = OscClient(*server.address)
    try:
        client.send("/mixdaemon/submit", ["/music/huge bounce"])
        t0 = time.monotonic()
        assert client.request("/mixdaemon/ping", timeout=2) == ("/mixdaemon/pong", ["test"])
        assert time.monotonic() - t0 < 1.0
        handler.release.set()
        assert client.wait_for(lambda a, _: a == "/mixdaemon/queued", 5) == ("/mixdaemon/queued", [1, "/music/huge bounce"])
    finally:
        handler.release.set()
        client.close()
        server.stop()


def test_a_bounce_whose_hand_on_failed_is_handed_on_again_later(tmp_path, caplog):
    root = tmp_path / "watch"
    write_stems(root / "Song", seconds=0.5)
    calls = []

    def on_bounce(bounce):
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")

    watcher = BounceWatcher([root], on_bounce, settle_seconds=0.3)
    with caplog.at_level(logging.INFO, logger="mixdaemon.watcher"):
        watcher.start()
        try:
            deadline = time.monotonic() + 10
            while len(calls) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.5)  # and not again once it was taken
        finally:
            watcher.stop()
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.9, calls
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failures) == 1 and not failures[0].exc_info
    line = failures[0].getMessage()
    assert str(root / "Song") in line and "No space left on device" in line and "trying again in 1 s" in line


def test_a_bounce_that_could_not_be_queued_on_a_full_disk_is_queued_once_it_can_be(tmp_path, listener, reference):
    proc = _start(tmp_path, listener, reference)
    limits = resource.prlimit(proc.proc.pid, resource.RLIMIT_FSIZE)
    try:
        try:
            # No write of the daemon's succeeds (EFBIG, as ENOSPC on a full disk): the job database
            # cannot record the bounce.
            resource.prlimit(proc.proc.pid, resource.RLIMIT_FSIZE, (0, limits[1]))
            song = tmp_path / "watch" / "song"
            write_stems(song, seconds=1.0, seed=8)
            failed = listener.wait_for(lambda a, args: a == ERROR and str(song) in args[1], 30)
            assert failed is not None and "not queued yet, the watcher tries again later" in failed[2][1], failed
            assert listener.of(QUEUED) == []
        finally:
            resource.prlimit(proc.proc.pid, resource.RLIMIT_FSIZE, limits)
        done = listener.wait_for(lambda a, args: a == DONE, 60)
        assert done is not None, proc.log()[-3000:]
        assert [args[1] for args in listener.of(QUEUED)] == [str(song)]
        assert [p.name for p in (tmp_path / "out").iterdir()] == [f"song-{done[2][0]}"]
        log = proc.log()
        assert f"{song}: the bounce could not be handed on (JobStoreError: " in log and "trying again in" in log
    finally:
        proc.kill()


def test_a_bounce_in_a_folder_named_in_no_encoding_is_queued_and_converted(tmp_path, listener, reference):
    proc = _start(tmp_path, listener, reference)
    try:
        song = tmp_path / "watch" / os.fsdecode(b"Song \xff\xfe")  # not UTF-8: Python holds it as surrogates
        write_stems(song, seconds=1.0, seed=7)
        queued = listener.wait_for(lambda a, args: a == QUEUED, 30)
        assert queued is not None, proc.log()[-3000:]
        assert queued[2][1] == str(tmp_path / "watch" / "Song \ufffd\ufffd")  # shown as U+FFFD
        jobs = _jobs(tmp_path)
        assert [(j["id"], j["folder_name"]) for j in jobs] == [(queued[2][0], "Song \ufffd\ufffd")]
        assert json.loads(jobs[0]["inputs"])[0].startswith(str(song))  # the real path, as the file system has it
        assert "could not be handed on" not in proc.log()
        assert "Logging error" not in proc.stderr_path.read_text()  # the log lines naming it were written
        # Its files are read by their real names (bytes no encoding decodes) and converted.
        ended = listener.wait_for(lambda a, args: a in (DONE, ERROR) and args[0] == queued[2][0], 60)
        assert ended is not None and ended[1] == DONE, (ended, proc.log()[-3000:])
        result = tmp_path / "out" / f"Song \ufffd\ufffd-{queued[2][0]}"
        assert {p.name for p in result.glob("*.wav")} >= {"drums.wav", "bass.wav", "other.wav", "vocals.wav"}
    finally:
        proc.kill()
