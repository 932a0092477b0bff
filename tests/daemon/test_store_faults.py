"""The job store, the worker and its staging folders, the lock, under the faults of issue 16 (F1,
F2, F3, F8, F10, F11, F12): real daemon processes, real files, real symlinks, a real corrupt
database page, a real file-size limit."""
import hashlib
import logging
import os
import resource
import signal
import sqlite3
import threading
import time

import pytest

from mixdaemon.daemon.confine import Roots
from mixdaemon.daemon.jobstore import Job, JobStore
from mixdaemon.daemon.worker import LocalExecutor
from tests.support.daemon import (
    DONE,
    ERROR,
    PROGRESS,
    QUEUED,
    RESULT_FILES,
    DaemonProcess,
    daemon_config,
    request,
    write_stems,
    write_toml,
)


@pytest.fixture
def daemons(tmp_path, listener, reference):
    """start(name="", **config) → a serving daemon whose files lie in tmp_path/name (state, watch;
    output root tmp_path/out unless given)."""
    procs = []

    def start(name: str = "", spawn_only: bool = False, **extra):
        home = tmp_path / name
        extra.setdefault("output", {"root": str(tmp_path / "out")})
        config = write_toml(home / "config.toml",
                            daemon_config(home, listener.port, reference=str(reference), **extra))
        proc = DaemonProcess(config, home / "state")
        procs.append(proc)
        return proc.spawn() if spawn_only else proc.start()

    yield start
    for proc in procs:
        if proc.alive():
            os.kill(proc.proc.pid, signal.SIGCONT)
            proc.kill()


def _tree(folder):
    """{relative path: sha256 or 'link -> target' or 'dir'} of everything under folder."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = os.path.join(root, name)
            rel = os.path.relpath(p, folder)
            if os.path.islink(p):
                out[rel] = f"link -> {os.readlink(p)}"
            elif os.path.isdir(p):
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def _finished(listener, job_id, timeout=60):
    got = listener.wait_for(lambda a, args: a in (DONE, ERROR) and args and args[0] == job_id, timeout)
    return None if got is None else (got[1], got[2])


def _queued_id(listener, proc, folder, timeout=30):
    got = listener.wait_for(lambda a, args: a == QUEUED and args[1] == str(folder), timeout)
    assert got is not None, f"{folder} was not queued: {proc.log()[-2000:]}"
    return got[2][0]


# --- F1: a supervised worker ---------------------------------------------------------------------

def test_a_bounce_with_a_254_byte_name_is_converted_and_the_worker_keeps_serving(tmp_path, listener, daemons):
    proc = daemons()
    long_name = tmp_path / "watch" / ("ä" * 100 + "x" * 54)  # 254 bytes: the result name would pass 255
    write_stems(long_name, seconds=1.0, seed=1)
    first = _queued_id(listener, proc, long_name)
    assert _finished(listener, first) is not None and _finished(listener, first)[0] == DONE, proc.log()[-2000:]
    write_stems(tmp_path / "watch" / "after", seconds=1.0, seed=2)
    second = _queued_id(listener, proc, tmp_path / "watch" / "after")
    assert _finished(listener, second)[0] == DONE, proc.log()[-2000:]
    names = [p.name for p in (tmp_path / "out").iterdir()]
    assert len(names) == 2 and all(len(os.fsencode(n)) <= 255 for n in names)
    assert any(n.startswith("ää") for n in names) and f"after-{second}" in names


def test_a_corrupt_database_page_is_logged_once_and_the_worker_serves_again_once_it_is_repaired(tmp_path):
    path = tmp_path / "state" / "jobs.sqlite3"
    store = JobStore(path)
    missing = tmp_path / "gone" / "drums.wav"
    store.add(Job(id=0, key="k", state="queued", inputs=[str(missing)], reference="", out_root=str(tmp_path / "out"),
                  settings={}, folder_name="song", input_hashes={str(missing): "0" * 64}, job_type="automix"))
    store.close()  # checkpointed: every page is in the database file now
    good = path.read_bytes()
    page = 4096
    path.write_bytes(good[:page] + b"\xa5" * (len(good) - page))  # every page but the schema's

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("mixdaemon")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    events = []
    store = JobStore(path)
    executor = LocalExecutor(store, "{folder}-{job_id}", events.append, Roots([tmp_path]))
    try:
        executor.start()
        time.sleep(2.5)  # the first try and at least one retry
        failures = [r.getMessage() for r in records if r.levelno >= logging.ERROR]
        assert len(failures) == 1, failures
        assert failures[0].startswith("cannot take the next job: ") and str(path) in failures[0]
        assert "malformed" in failures[0] and "\n" not in failures[0]
        path.write_bytes(good)  # repaired: a backup put back, and a note written into it with sqlite3
        with sqlite3.connect(path) as db:
            db.execute("INSERT INTO settings (name, value) VALUES ('repaired', 'yes')")
        db.close()
        deadline = time.monotonic() + 15
        while not events and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [e.kind for e in events] == ["error"], [r.getMessage() for r in records]
        assert events[0].job.error == f"stem file {missing}: not found"
        assert any(r.getMessage() == "the job database works again; taking jobs" for r in records)
    finally:
        executor.stop(5)
        logger.removeHandler(handler)
        logger.setLevel(level)
        store.close()


# --- F2, F3: staging folders that belong to the daemon -------------------------------------------

def test_start_up_removes_no_user_folder_and_no_other_daemons_staging_folder(tmp_path, listener, daemons):
    out = tmp_path / "out"
    user = out / ".mixdaemon-staging-1"  # a user's own folder that happens to bear the old staging name
    user.mkdir(parents=True)
    (user / "take 3.wav").write_bytes(b"RIFF the user's take")
    # Daemon a runs a job; it is frozen while its staging folder exists, and daemon b (another state
    # folder, the same output root) starts meanwhile.
    a = daemons("a")
    write_stems(tmp_path / "a" / "watch" / "song", seconds=4.0, seed=3)
    mid = listener.wait_for(lambda a_, args: a_ == PROGRESS and 0.0 < args[1] < 90.0, timeout=60)
    assert mid is not None, a.log()[-2000:]
    os.kill(a.proc.pid, signal.SIGSTOP)
    staging = [p for p in out.iterdir() if p.name.startswith(".mixdaemon-staging-") and p != user]
    assert len(staging) == 1 and staging[0].is_dir()
    b = daemons("b")
    assert staging[0].is_dir() and user.is_dir()
    os.kill(a.proc.pid, signal.SIGCONT)
    assert _finished(listener, mid[2][0], 90)[0] == DONE, a.log()[-2000:]
    assert (user / "take 3.wav").read_bytes() == b"RIFF the user's take"
    assert b.alive()
    # ... and at a restart daemon a removes no folder it did not create either.
    a.terminate()
    a = daemons("a")
    assert (user / "take 3.wav").read_bytes() == b"RIFF the user's take"
    assert sorted(p.name for p in out.iterdir()) == sorted([user.name, f"song-{mid[2][0]}"])


def test_links_planted_at_staging_and_result_names_are_never_written_through(tmp_path, listener, daemons):
    outside = tmp_path / "outside"  # outside every root of the daemon
    outside.mkdir()
    (outside / "drums.wav").write_bytes(b"the user's own drums")
    (outside / "manifest.json").write_text('{"job_id": 99}')
    before = _tree(outside)
    out = tmp_path / "out"
    out.mkdir()
    planted = [out / f".mixdaemon-staging-{i}" for i in range(1, 4)] + [out / "song-1"]
    for link in planted:
        link.symlink_to(outside, target_is_directory=True)
    proc = daemons()
    write_stems(tmp_path / "watch" / "song", seconds=1.0, seed=4)
    job_id = _queued_id(listener, proc, tmp_path / "watch" / "song")
    assert job_id == 1
    reply, args = _finished(listener, job_id)
    assert reply == DONE, args
    assert _tree(outside) == before  # nothing written, replaced or removed out there
    for link in planted:
        assert link.is_symlink() and os.readlink(link) == str(outside)
    result = out / "song-1-1"
    assert not result.is_symlink() and result.is_dir() and {p.name for p in result.iterdir()} == RESULT_FILES
    assert args[1] == str(result / "manifest.json")


# --- F8: the lock ---------------------------------------------------------------------------------

def test_a_deleted_lock_file_does_not_let_a_second_daemon_run_on_the_same_state_folder(tmp_path, daemons):
    first = daemons()
    (tmp_path / "state" / "daemon.lock").unlink()
    second = daemons(spawn_only=True)
    assert second.proc.wait(60) != 0
    err = second.stderr_path.read_text().strip().splitlines()
    assert "another mixdaemon is already running" in err[-1], err[-3:]
    assert first.alive()


# --- F10: a deleted database --------------------------------------------------------------------------

def test_a_deleted_database_is_said_new_jobs_are_refused_and_a_restart_converts_nothing_again(
        tmp_path, listener, daemons, reference):
    proc = daemons(allowed_roots=[str(tmp_path)])
    write_stems(tmp_path / "watch" / "song", seconds=1.0, seed=5)
    job_id = _queued_id(listener, proc, tmp_path / "watch" / "song")
    assert _finished(listener, job_id)[0] == DONE
    (tmp_path / "state" / "jobs.sqlite3").unlink()
    other = write_stems(tmp_path / "elsewhere" / "other", seconds=1.0, seed=6)
    reply, args = request(listener, proc.address, "/mixdaemon/submit", str(other[0].parent), str(reference),
                          reply=QUEUED)
    assert reply == ERROR and "the job database was deleted or replaced while the daemon ran" in args[1], args
    said = [line for line in proc.log().splitlines() if "ERROR mixdaemon.jobstore: " in line]
    assert len(said) == 1 and "the job database was deleted or replaced" in said[0], said
    assert proc.terminate() == 0

    start = len(listener.messages)
    proc = daemons()
    time.sleep(2.0)  # the start-up scan has seen the bounce
    assert listener.wait_for(lambda a, _: a == QUEUED, timeout=0.1, start=start) is None, proc.log()[-2000:]
    assert "adopted 1 finished result(s)" in proc.log() and "not processed again" in proc.log()
    assert [p.name for p in (tmp_path / "out").iterdir()] == [f"song-{job_id}"]


# --- F11: one line for a write that fails, and for a job id that is not one ------------------------

@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs prlimit (Linux)")
def test_a_write_that_fails_is_one_line_naming_the_file_and_the_problem(tmp_path, listener, daemons):
    proc = daemons()
    # Files of the daemon may not grow past 200 kB (the stems it writes are larger): the kernel
    # refuses the write as a full disk would.
    resource.prlimit(proc.proc.pid, resource.RLIMIT_FSIZE, (200_000, 200_000))
    write_stems(tmp_path / "watch" / "song", seconds=1.5, seed=7)
    job_id = _queued_id(listener, proc, tmp_path / "watch" / "song")
    reply, args = _finished(listener, job_id)
    assert reply == ERROR
    result = tmp_path / "out" / f"song-{job_id}"
    assert args[1].startswith(f"{result}/") and args[1].endswith(": cannot write (File too large)"), args[1]
    assert "internal error" not in proc.log()
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # no result, no staging left behind
    reply, args = request(listener, proc.address, "/mixdaemon/status", "²", reply="/mixdaemon/status/reply")
    assert reply == ERROR and "must be a job id" in args[1] and "internal error" not in args[1]


# --- F12: names already taken ---------------------------------------------------------------------

def test_a_result_never_replaces_or_merges_into_a_folder_already_at_its_name(tmp_path, listener, daemons):
    out = tmp_path / "out"
    (out / "song-1").mkdir(parents=True)
    (out / "song-1" / "notes.txt").write_text("mine")
    (out / "song-1-1").mkdir()  # an empty folder of the user's
    empty_inode = (out / "song-1-1").stat().st_ino
    proc = daemons()
    write_stems(tmp_path / "watch" / "song", seconds=1.0, seed=8)
    job_id = _queued_id(listener, proc, tmp_path / "watch" / "song")
    reply, args = _finished(listener, job_id)
    assert (job_id, reply) == (1, DONE), args
    assert (out / "song-1" / "notes.txt").read_text() == "mine" and len(list((out / "song-1").iterdir())) == 1
    assert (out / "song-1-1").stat().st_ino == empty_inode and list((out / "song-1-1").iterdir()) == []
    assert {p.name for p in (out / "song-1-1 (2)").iterdir()} == RESULT_FILES
    db = sqlite3.connect(tmp_path / "state" / "jobs.sqlite3")
    try:
        assert db.execute("SELECT out_dir, staging FROM jobs").fetchall() == [(str(out / "song-1-1 (2)"), None)]
    finally:
        db.close()


def test_the_supervised_worker_survives_a_failing_event_listener(tmp_path):
    """Whatever escapes a job (here the listener of its events fails) is logged, and the next job runs."""
    store = JobStore(tmp_path / "jobs.sqlite3")
    for key in ("a", "b"):
        drums = str(tmp_path / key / "drums.wav")  # missing: each job fails at once
        store.add(Job(id=0, key=key, state="queued", inputs=[drums], reference="", out_root=str(tmp_path / "out"),
                      settings={}, folder_name=key, job_type="automix", input_hashes={drums: "0" * 64}))
    kinds, second = [], threading.Event()

    def on_event(event):
        kinds.append(event.kind)
        if len(kinds) == 1:
            raise RuntimeError("the listener broke")
        second.set()

    executor = LocalExecutor(store, "{folder}-{job_id}", on_event, Roots([tmp_path]))
    executor.start()
    try:
        assert second.wait(10), kinds
        assert [j.state for j in store.list()] == ["error", "error"]
    finally:
        executor.stop(5)
        store.close()
