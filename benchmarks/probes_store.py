"""Probes of the job store, the worker and its staging folders, and the lock (issue 16, F1 F2 F3
F8 F10 F11 F12), for bench_daemon_faults.py's part `probes`.

Each scenario runs real daemons (`mixdaemon serve` subprocesses) in its own work folder, plants the
fault (a 254-byte bounce name, a corrupt database page, a user's folder or another daemon's
staging folder of the staging name, links at the staging and result names, a deleted lock file or
database, a file-size limit, a result name already taken) and counts what a user would notice:
files changed outside the roots, user files lost or replaced, jobs lost or done twice, a worker
that died without a word.

    .venv/bin/python benchmarks/bench_daemon_faults.py --parts probes --probes f1_long_bounce_name
"""
from __future__ import annotations

import json
import logging
import os
import resource
import signal
import sqlite3
import time
from pathlib import Path

from daemon_harness import Daemon, job_rows, start, write_config
from probes_inputs import _state, _stems

from mixdaemon.daemon.confine import Roots
from mixdaemon.daemon.jobstore import Job, JobStore
from mixdaemon.daemon.osc import PREFIX, OscClient
from mixdaemon.daemon.worker import LocalExecutor

ERROR, STATUS = f"{PREFIX}/error", f"{PREFIX}/status/reply"
FINAL = ("done", "error", "cancelled")


def _wait_jobs(state: Path, count: int, timeout: float = 60.0) -> list[dict]:
    """The job rows once `count` jobs exist and all are finished (or what there is at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = job_rows(state) if (state / "jobs.sqlite3").exists() else []
        if (len(rows) >= count and all(r["state"] in FINAL for r in rows)) or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def _log(work: Path) -> str:
    path = work / "state" / "mixdaemon.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _changed(before: dict, folder: Path) -> int:
    after = _state(folder)
    return sum(after.get(p) != s for p, s in before.items()) + len(set(after) - set(before))


def _result(*, reason: str | None = None, expected: bool, refused: bool = False, **counts) -> dict:
    counts = {name: counts.get(name, 0) for name in ("outside_read", "outside_written", "user_files_lost",
                                                     "jobs_lost", "jobs_doubled", "silent_worker_deaths")}
    one_line = reason is not None and "\n" not in reason and "internal error" not in reason
    return {**counts, "reason": reason,
            "passed": expected and (one_line or not refused) and not any(counts.values())}


def _doubled(rows: list[dict]) -> int:
    return len(rows) - len({r["key"] for r in rows})


# --- F1: a supervised worker -----------------------------------------------------------------------

def f1_long_bounce_name(work: Path, reference: Path) -> dict:
    """A bounce folder named with 254 bytes (the result name would pass 255), then a plain bounce."""
    client = OscClient()
    daemon = start(work, client, reference)
    _stems(work / "watch" / ("ä" * 100 + "x" * 54), seed=1)
    first = _wait_jobs(daemon.state, 1)
    _stems(work / "watch" / "after", seed=2)
    rows = _wait_jobs(daemon.state, 2)
    alive = daemon.alive()
    daemon.kill()
    client.close()
    stuck = sum(r["state"] not in FINAL for r in rows)
    said = "worker stopped" in _log(work) or "internal error" in _log(work)
    return _result(expected=alive and len(first) == 1 and [r["state"] for r in rows] == ["done", "done"],
                   jobs_lost=stuck + max(0, 2 - len(rows)), silent_worker_deaths=int(stuck > 0 and not said))


def f1_corrupt_database_page(work: Path, reference: Path) -> dict:
    """Every page of the job database but the schema's overwritten under a worker (in process, on
    the real file), then the file repaired: the worker must say so once and serve the job after."""
    path = work / "state" / "jobs.sqlite3"
    store = JobStore(path)
    missing = str(work / "gone" / "drums.wav")
    store.add(Job(id=0, key="k", state="queued", inputs=[missing], reference="", out_root=str(work / "out"),
                  settings={}, folder_name="song", input_hashes={missing: "0" * 64}, job_type="automix"))
    store.close()
    good = path.read_bytes()
    path.write_bytes(good[:4096] + b"\xa5" * (len(good) - 4096))
    said: list[str] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = lambda record: said.append(record.getMessage())
    logging.getLogger("mixdaemon").addHandler(handler)
    events: list = []
    store = JobStore(path)
    executor = LocalExecutor(store, "{folder}-{job_id}", events.append, Roots([work]))
    try:
        executor.start()
        time.sleep(2.5)
        path.write_bytes(good)
        with sqlite3.connect(path) as db:  # a note written with sqlite3: the daemon's cache is renewed
            db.execute("INSERT INTO settings (name, value) VALUES ('repaired', 'yes')")
        db.close()
        deadline = time.monotonic() + 20
        while not events and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        executor.stop(5)
        logging.getLogger("mixdaemon").removeHandler(handler)
        store.close()
    trouble = [m for m in said if m.startswith("cannot take the next job")]
    served = [e.kind for e in events] == ["error"]
    return _result(reason=trouble[0] if trouble else None, refused=True, expected=served and len(trouble) == 1,
                   jobs_lost=int(not served), silent_worker_deaths=int(not served and not trouble))


# --- F2, F3: staging folders that belong to the daemon -------------------------------------------

def f2_user_folder_of_the_staging_name(work: Path, reference: Path) -> dict:
    """A user's folder `.mixdaemon-staging-1` (the old staging name of job 1) in the output root,
    holding a take: the daemon starts, converts a bounce, restarts."""
    user = work / "out" / ".mixdaemon-staging-1"
    user.mkdir(parents=True)
    (user / "take 3.wav").write_bytes(b"RIFF the user's take")
    before = _state(user)
    client = OscClient()
    daemon = start(work, client, reference)
    _stems(work / "watch" / "song", seed=3)
    rows = _wait_jobs(daemon.state, 1)
    daemon.terminate()
    daemon = start(work, client, reference)
    daemon.kill()
    client.close()
    return _result(expected=[r["state"] for r in rows] == ["done"], user_files_lost=_changed(before, user)
                   if user.is_dir() else len(before), jobs_lost=sum(r["state"] != "done" for r in rows))


def f2_shared_output_root(work: Path, reference: Path) -> dict:
    """Two daemons (their own state folders) share one output root; daemon a is frozen (SIGSTOP)
    mid-job, daemon b starts (recovery runs), daemon a goes on: its job must end done."""
    client = OscClient()
    out = work / "out"
    a_work, b_work = work / "a", work / "b"
    a_work.mkdir()
    b_work.mkdir()
    a = Daemon(_config(a_work, client.port, reference, out)).wait_serving()
    _stems(a_work / "watch" / "song", seed=4, seconds=4.0)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(p.name.startswith(".mixdaemon-staging-") for p in _entries(out)):
        time.sleep(0.05)
    os.kill(a.process.pid, signal.SIGSTOP)
    staged = [p for p in _entries(out) if p.name.startswith(".mixdaemon-staging-")]
    b = Daemon(_config(b_work, client.port, reference, out)).wait_serving()
    kept = all(p.is_dir() for p in staged)
    os.kill(a.process.pid, signal.SIGCONT)
    rows = _wait_jobs(a.state, 1)
    a.kill()
    b.kill()
    client.close()
    return _result(expected=bool(staged) and kept and [r["state"] for r in rows] == ["done"],
                   jobs_lost=sum(r["state"] != "done" for r in rows) or int(not rows))


def _config(home: Path, reply_port: int, reference: Path, out: Path) -> Path:
    """write_config's config with the output root `out` (a folder another daemon may share)."""
    config = write_config(home, reply_port, reference)
    config.write_text(config.read_text().replace('root = "out"', f"root = {json.dumps(str(out))}"))
    return config


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def f3_links_at_staging_and_result_names(work: Path, reference: Path) -> dict:
    """Links to a folder outside the roots at the staging names of jobs 1-3 (as they used to be)
    and at the result name song-1; the bounce `song` is converted."""
    outside = work / "outside"
    outside.mkdir()
    (outside / "drums.wav").write_bytes(b"the user's own drums")
    (outside / "manifest.json").write_text('{"job_id": 99}')
    before = _state(outside)
    out = work / "out"
    out.mkdir()
    links = [out / f".mixdaemon-staging-{i}" for i in (1, 2, 3)] + [out / "song-1"]
    for link in links:
        link.symlink_to(outside, target_is_directory=True)
    client = OscClient()
    daemon = start(work, client, reference)
    _stems(work / "watch" / "song", seed=5)
    rows = _wait_jobs(daemon.state, 1)
    daemon.kill()
    client.close()
    result = Path(rows[0]["out_dir"]) if rows and rows[0]["out_dir"] else None
    real_result = result is not None and result.is_dir() and not result.is_symlink()
    links_kept = sum(link.is_symlink() and os.readlink(link) == str(outside) for link in links)
    return _result(expected=[r["state"] for r in rows] == ["done"] and real_result,
                   outside_written=_changed(before, outside), user_files_lost=len(links) - links_kept)


# --- F8: the lock ----------------------------------------------------------------------------------

def f8_deleted_lock_file(work: Path, reference: Path) -> dict:
    """daemon.lock deleted under a running daemon; a second daemon on the same state folder."""
    client = OscClient()
    first = start(work, client, reference)
    (first.state / "daemon.lock").unlink()
    second = Daemon(work / "config.toml")
    try:
        status = second.process.wait(60)
    except Exception:
        status = None
    lines = (work / "daemon.stderr").read_text(errors="replace").strip().splitlines()
    reason = lines[-1].removeprefix("mixdaemon: ") if lines else None
    refused = status not in (None, 0)
    if second.alive():
        second.kill()
    alive = first.alive()
    first.kill()
    client.close()
    return _result(reason=reason, refused=True, expected=refused and alive and "already running" in (reason or ""),
                   jobs_doubled=int(not refused))


# --- F10: a deleted database --------------------------------------------------------------------

def _deleted_database(work: Path, reference: Path, then_kill: bool) -> dict:
    client, asker = OscClient(), OscClient()  # notifications come to client; asker's replies to it alone
    daemon = start(work, client, reference, allowed_roots=[str(work)])
    asker.target = daemon.address
    _stems(work / "watch" / "song", seed=6)
    rows = _wait_jobs(daemon.state, 1)
    (daemon.state / "jobs.sqlite3").unlink()
    other = work / "elsewhere" / "other"
    _stems(other, seed=7)
    reply = asker.request(f"{PREFIX}/submit", [str(other), str(reference)], timeout=10) or (None, [])
    reason = reply[1][1] if reply[0] == ERROR else None
    time.sleep(1.2)  # the worker's check
    said = _log(work).count("ERROR mixdaemon.jobstore: ")
    if then_kill:
        daemon.kill()
    else:
        daemon.terminate()
    daemon = start(work, client, reference, allowed_roots=[str(work)])
    time.sleep(2.0)  # the start-up scan has seen the bounce
    again = job_rows(daemon.state)
    daemon.kill()
    client.close()
    asker.close()
    reconverted = sum(r["state"] != "done" or not r["out_dir"] or Path(r["out_dir"]).name != f"song-{rows[0]['id']}"
                      for r in again)
    return _result(reason=reason, refused=True,
                   expected=[r["state"] for r in rows] == ["done"] and said == 1 and reason is not None
                   and "deleted or replaced" in reason and "adopted 1 finished result" in _log(work),
                   jobs_doubled=reconverted)


def f10_deleted_database(work: Path, reference: Path) -> dict:
    """jobs.sqlite3 deleted under a running daemon: said once, a submission refused in one line;
    after a graceful restart the finished bounce is not converted again."""
    return _deleted_database(work, reference, then_kill=False)


def f10_deleted_database_then_killed(work: Path, reference: Path) -> dict:
    """As f10_deleted_database, but the daemon is SIGKILLed afterwards: its -wal file outlives
    the database and must not be replayed onto the new one."""
    return _deleted_database(work, reference, then_kill=True)


# --- F11: one line for a write that fails, and for a job id that is not one --------------------------

def f11_write_fails(work: Path, reference: Path) -> dict:
    """The daemon's files may not grow past 200 kB (the kernel refuses the write as a full disk
    would): the job fails with one line naming the file; a status request for job "²"."""
    client, asker = OscClient(), OscClient()
    daemon = start(work, client, reference)
    asker.target = daemon.address
    resource.prlimit(daemon.process.pid, resource.RLIMIT_FSIZE, (200_000, 200_000))
    _stems(work / "watch" / "song", seed=8, seconds=1.5)
    rows = _wait_jobs(daemon.state, 1)
    reason = rows[0]["error"] if rows else None
    status = asker.request(f"{PREFIX}/status", ["²"], timeout=5) or (None, [])
    id_reason = status[1][1] if status[0] == ERROR else None
    alive = daemon.alive()
    daemon.kill()
    client.close()
    asker.close()
    left = [p.name for p in _entries(work / "out")]
    ok = (reason is not None and reason.endswith("cannot write (File too large)") and str(work / "out") in reason
          and id_reason is not None and "must be a job id" in id_reason and "internal error" not in _log(work))
    return _result(reason=reason, refused=True, expected=ok and alive and left == [])


# --- F12: names already taken ----------------------------------------------------------------------

def f12_taken_result_names(work: Path, reference: Path) -> dict:
    """song-1 (the user's notes in it) and song-1-1 (an empty folder of the user's) exist; the
    bounce `song` becomes job 1."""
    out = work / "out"
    (out / "song-1").mkdir(parents=True)
    (out / "song-1" / "notes.txt").write_text("mine")
    (out / "song-1-1").mkdir()
    before = {**_state(out), "empty": (out / "song-1-1").stat().st_ino}
    client = OscClient()
    daemon = start(work, client, reference)
    _stems(work / "watch" / "song", seed=9)
    rows = _wait_jobs(daemon.state, 1)
    daemon.kill()
    client.close()
    empty_kept = (out / "song-1-1").is_dir() and (out / "song-1-1").stat().st_ino == before.pop("empty") \
        and not list((out / "song-1-1").iterdir())
    lost = sum(_state(out).get(p) != s for p, s in before.items()) + int(not empty_kept)
    return _result(expected=[r["state"] for r in rows] == ["done"] and (out / "song-1-1 (2)" / "manifest.json").is_file(),
                   user_files_lost=lost, jobs_lost=sum(r["state"] != "done" for r in rows), jobs_doubled=_doubled(rows))


SCENARIOS = [
    ("f1_long_bounce_name", f1_long_bounce_name),
    ("f1_corrupt_database_page", f1_corrupt_database_page),
    ("f2_user_folder_of_the_staging_name", f2_user_folder_of_the_staging_name),
    ("f2_shared_output_root", f2_shared_output_root),
    ("f3_links_at_staging_and_result_names", f3_links_at_staging_and_result_names),
    ("f8_deleted_lock_file", f8_deleted_lock_file),
    ("f10_deleted_database", f10_deleted_database),
    ("f10_deleted_database_then_killed", f10_deleted_database_then_killed),
    ("f11_write_fails", f11_write_fails),
    ("f12_taken_result_names", f12_taken_result_names),
]
