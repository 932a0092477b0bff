"""Probes of the request-file bridge (issue 16, F6), for bench_daemon_faults.py's part `probes`:
each scenario starts a real daemon in its own work folder, puts hostile or broken files in its
request folder (<state>/requests), and counts what a user would notice — a file outside the folder
read or written, a request file lost, a request never answered (jobs_lost), a job run twice, the
bridge stopped answering (silent_worker_deaths) — with the one-line reason the daemon gave.

Each finding of the probing, and what a scenario shows of it:
  requests_fifo             a FIFO as a request (it blocked the bridge for good)
  requests_dev_zero_link    a link to /dev/zero as a request (MemoryError, again and again)
  requests_outside_link     a link to a request file outside the folder (it was read)
  requests_oversized        a 250 MB (sparse) request (read whole, logged whole: a 262 MB log)
  requests_long_logged      a 60 KiB request, under the limit: the log quotes 200 characters of it
  requests_bad_cancel       /mixdaemon/cancel "²" (retried forever, starving the requests after it)
  requests_unwritable_reply a request whose reply cannot be written (a name too long for its
                            partial file): answered never, but taken once, the next one served
  requests_bad_pending      a pending reply with job id "²" and a FIFO as a reply (the daemon did
                            not start)
  requests_many_pending     1,100 submissions of one song pending at once (select() over 1,024
                            sockets crashed): one job, 1,100 replies "done"
  requests_burst            300 requests at once (43 of one UDP send each were lost)
  requests_forged_reply     the daemon's notifications for a running job sent by another local
                            program (a forged "done" was taken)
  requests_planted_tmp_link a link at the old partial name `.NAME.reply.tmp` to a user's file
  requests_half_written     a request written in place, in pieces (read and sent cut short)

Since the request files are served inside the daemon's process there is no socket per request:
requests_many_pending, requests_burst and requests_forged_reply check that this holds.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import soundfile as sf
from daemon_harness import job_rows, start

from mixdaemon.audio.examples import synth_song
from mixdaemon.daemon.osc import OscClient, encode
from mixdaemon.daemon.requestfiles import parse_reply

PING = "mixdaemon-request 1\naddress=/mixdaemon/ping\nend\n"
FINAL = ("done", "error", "cancelled", "ok", "warning")


# --- helpers -----------------------------------------------------------------------------------

def _put(folder: Path, name: str, text: str) -> None:
    """A request written as a client should: under another name, renamed into place."""
    (folder / f".{name}.tmp").write_text(text, encoding="utf-8")
    (folder / f".{name}.tmp").rename(folder / f"{name}.request")


def _submit(stems: Path) -> str:
    return f"mixdaemon-request 1\naddress=/mixdaemon/submit\narg={stems}\nend\n"


def _reply(folder: Path, name: str) -> dict | None:
    try:
        return parse_reply((folder / f"{name}.reply").read_text(encoding="utf-8"))
    except OSError:
        return None


def _finals(folder: Path, names: list[str], timeout: float) -> dict[str, dict]:
    """The final replies of `names` that came within timeout seconds."""
    deadline, got = time.monotonic() + timeout, {}
    while len(got) < len(names) and time.monotonic() < deadline:
        for name in names:
            if name not in got:
                status = _reply(folder, name)
                if status is not None and status.get("state") in FINAL:
                    got[name] = status
        time.sleep(0.05)
    return got


def _still_serves(folder: Path) -> bool:
    """Whether the bridge still answers: a ping request after the fault is answered."""
    name = f"zz-ping-{time.monotonic_ns()}"
    _put(folder, name, PING)
    return _finals(folder, [name], 10).get(name, {}).get("state") == "ok"


def _write_stems(folder: Path, seconds: float, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, x in synth_song(seconds, seed=seed).items():
        sf.write(folder / f"{stem}.wav", x, 44100, subtype="PCM_24")
    return folder


def _outcome(daemon, folder: Path, *, reason: str | None, expected: bool, outside_read: int = 0,
             outside_written: int = 0, user_files_lost: int = 0, jobs_lost: int = 0, jobs_doubled: int = 0) -> dict:
    serving = daemon.alive() and _still_serves(folder)
    counts = {"outside_read": outside_read, "outside_written": outside_written, "user_files_lost": user_files_lost,
              "jobs_lost": jobs_lost, "jobs_doubled": jobs_doubled, "silent_worker_deaths": int(not serving)}
    one_line = reason is None or "\n" not in reason
    return {**counts, "reason": reason, "passed": expected and one_line and not any(counts.values())}


def _daemon(work: Path, reference: Path):
    listener = OscClient()
    daemon = start(work, listener, reference, allowed_roots=[str(work / "music")])
    listener.close()
    return daemon, daemon.state / "requests"


def _refusal(work: Path, reference: Path, plant, words: str, names_file: bool = True) -> dict:
    """A request that must be refused (`plant(folder, work)` puts it at a1.request, and returns a
    file outside whose reading would show): one error reply with `words` (naming the file where
    names_file: one refused unread), and the next request (a2, listed after it) served."""
    daemon, folder = _daemon(work, reference)
    try:
        outside = plant(folder, work)
        _put(folder, "a2", PING)
        replies = _finals(folder, ["a1", "a2"], 10)
        refused = replies.get("a1", {})
        reason = refused.get("message")
        read_outside = int(outside is not None and refused.get("state") == "ok")
        expected = (refused.get("state") == "error" and words in (reason or "")
                    and (not names_file or "a1.request" in reason))
        return _outcome(daemon, folder, reason=reason, expected=expected, outside_read=read_outside,
                        user_files_lost=int(not os.path.lexists(folder / "a1.request")), jobs_lost=2 - len(replies))
    finally:
        daemon.kill()


# --- the scenarios -----------------------------------------------------------------------------

def fifo(work: Path, reference: Path) -> dict:
    return _refusal(work, reference, lambda folder, _: os.mkfifo(folder / "a1.request"), "not a regular file")


def dev_zero_link(work: Path, reference: Path) -> dict:
    return _refusal(work, reference, lambda folder, _: os.symlink("/dev/zero", folder / "a1.request"),
                    "a symbolic link")


def outside_link(work: Path, reference: Path) -> dict:
    def plant(folder: Path, work: Path) -> Path:
        outside = work / "elsewhere.request"
        outside.write_text(PING)
        os.symlink(outside, folder / "a1.request")
        return outside
    return _refusal(work, reference, plant, "a symbolic link")


def oversized(work: Path, reference: Path) -> dict:
    def plant(folder: Path, _: Path) -> None:
        with open(folder / "a1.request", "wb") as f:  # 250 MB, sparse: no disk spent
            f.write(b"mixdaemon-request 1\naddress=/mixdaemon/ping\narg=")
            f.truncate(250 * 2**20)
    outcome = _refusal(work, reference, plant, "byte limit")
    log_bytes = (work / "state" / "mixdaemon.log").stat().st_size
    outcome["passed"] = outcome["passed"] and log_bytes < 64 * 1024
    return outcome


def long_logged(work: Path, reference: Path) -> dict:
    daemon, folder = _daemon(work, reference)
    try:
        _put(folder, "a1", f"mixdaemon-request 1\naddress=/mixdaemon/ping\narg={'y' * 60_000}\nend\n")
        replies = _finals(folder, ["a1"], 10)
        longest = max(map(len, (work / "state" / "mixdaemon.log").read_text().splitlines()))
        reason = replies.get("a1", {}).get("message")
        return _outcome(daemon, folder, reason=reason, expected=bool(reason) and longest < 1000,
                        jobs_lost=1 - len(replies))
    finally:
        daemon.kill()


def bad_cancel(work: Path, reference: Path) -> dict:
    def plant(folder: Path, _: Path) -> None:
        _put(folder, "a1", "mixdaemon-request 1\naddress=/mixdaemon/cancel\narg=\u00b2\nend\n")
    outcome = _refusal(work, reference, plant, "must be a job id", names_file=False)
    log = (work / "state" / "mixdaemon.log").read_text()
    outcome["passed"] = outcome["passed"] and log.count("request a1: /mixdaemon/cancel") == 1
    return outcome


def unwritable_reply(work: Path, reference: Path) -> dict:
    daemon, folder = _daemon(work, reference)
    try:
        long_name = "a1-" + "n" * 244  # NAME.request fits in 255 bytes; .NAME.reply.<pid>.<hex>.part does not
        _put(folder, long_name, PING)
        _put(folder, "a2", PING)
        replies = _finals(folder, ["a2"], 10)
        time.sleep(1.0)  # five scans more: the first request must not be taken again
        lines = [line for line in (work / "state" / "mixdaemon.log").read_text().splitlines()
                 if "cannot write its reply" in line]
        reason = "request a1-nnn…: cannot write" + lines[0].split(": cannot write", 1)[-1] if lines else None
        return _outcome(daemon, folder, reason=reason, expected=len(lines) == 1, jobs_lost=1 - len(replies))
    finally:
        daemon.kill()


def bad_pending(work: Path, reference: Path) -> dict:
    folder = work / "state" / "requests"
    folder.mkdir(parents=True)
    _put(folder, "a1", _submit(work / "nowhere"))
    (folder / "a1.reply").write_text("mixdaemon-reply 1\nstate=queued\njob_id=\u00b2\n")
    _put(folder, "a3", _submit(work / "nowhere"))
    os.mkfifo(folder / "a3.reply")
    try:
        daemon, folder = _daemon(work, reference)
    except RuntimeError as exc:
        return {"outside_read": 0, "outside_written": 0, "user_files_lost": 0, "jobs_lost": 2, "jobs_doubled": 0,
                "silent_worker_deaths": 1, "reason": str(exc).splitlines()[0], "passed": False}
    try:
        replies = _finals(folder, ["a1"], 10)
        reason = replies.get("a1", {}).get("message")
        log = (work / "state" / "mixdaemon.log").read_text()
        expected = "stopped before answering" in (reason or "") and "request a3: cannot resume it, skipped" in log
        return _outcome(daemon, folder, reason=reason, expected=expected, jobs_lost=1 - len(replies))
    finally:
        daemon.kill()


def many_pending(work: Path, reference: Path) -> dict:
    stems = _write_stems(work / "music" / "Song", 3.0, seed=5)
    daemon, folder = _daemon(work, reference)
    try:
        names = [f"s{i:04d}" for i in range(1100)]
        for name in names:
            _put(folder, name, _submit(stems))
        replies = _finals(folder, names, 240)
        done = [r for r in replies.values() if r.get("state") == "done"]
        manifests = {r.get("manifest") for r in done}
        jobs = job_rows(daemon.state)
        return _outcome(daemon, folder, reason=None, expected=len(done) == len(names) and len(manifests) == 1,
                        jobs_lost=len(names) - len(done), jobs_doubled=max(0, len(jobs) - 1))
    finally:
        daemon.kill()


def burst(work: Path, reference: Path) -> dict:
    daemon, folder = _daemon(work, reference)
    try:
        names = [f"p{i:03d}" for i in range(300)]
        for name in names:
            _put(folder, name, PING)
        replies = _finals(folder, names, 60)
        ok = sum(r.get("state") == "ok" for r in replies.values())
        return _outcome(daemon, folder, reason=None, expected=ok == len(names), jobs_lost=len(names) - ok)
    finally:
        daemon.kill()


def forged_reply(work: Path, reference: Path) -> dict:
    stems = _write_stems(work / "music" / "Long Song", 10.0, seed=6)
    daemon, folder = _daemon(work, reference)
    forger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        _put(folder, "a1", _submit(stems))
        deadline = time.monotonic() + 30
        while (_reply(folder, "a1") or {}).get("job_id") is None and time.monotonic() < deadline:
            time.sleep(0.02)
        job_id = int((_reply(folder, "a1") or {}).get("job_id", 0))
        for address, args in (("/mixdaemon/progress", [job_id, 99.0, "forged"]),
                              ("/mixdaemon/done", [job_id, "/forged/manifest.json"]),
                              ("/mixdaemon/error", [job_id, "forged failure"])):
            forger.sendto(encode(address, args), daemon.address)
        forger.sendto(encode("/mixdaemon/ping"), daemon.address)  # answered after the forged ones
        forger.settimeout(10)
        forger.recvfrom(65535)
        during = _reply(folder, "a1") or {}
        final = _finals(folder, ["a1"], 120).get("a1", {})
        manifest = final.get("manifest", "")
        genuine = final.get("state") == "done" and manifest.startswith(str(work / "out")) and os.path.isfile(manifest)
        # None of the forged values was taken (the probe's own folder name holds the word "forged")
        taken = during.get("stage") == "forged" or any(v in str(during) for v in ("/forged/", "forged failure"))
        expected = during.get("state") in ("queued", "running") and not taken and genuine
        return _outcome(daemon, folder, reason=None, expected=expected, jobs_lost=int(not genuine))
    finally:
        forger.close()
        daemon.kill()


def planted_tmp_link(work: Path, reference: Path) -> dict:
    daemon, folder = _daemon(work, reference)
    try:
        victim = work / "music" / "notes.txt"
        victim.parent.mkdir(parents=True, exist_ok=True)
        victim.write_text("the user's notes\n")
        os.symlink(victim, folder / ".a1.reply.tmp")
        _put(folder, "a1", PING)
        replies = _finals(folder, ["a1"], 10)
        written = int(victim.read_text() != "the user's notes\n" or (folder / "a1.reply").is_symlink())
        return _outcome(daemon, folder, reason=None, expected=replies.get("a1", {}).get("state") == "ok",
                        outside_written=written, jobs_lost=1 - len(replies))
    finally:
        daemon.kill()


def half_written(work: Path, reference: Path) -> dict:
    daemon, folder = _daemon(work, reference)
    try:
        song = work / "music" / "Half Song"
        with open(folder / "a1.request", "w", encoding="utf-8") as f:  # in place, in pieces
            early = []
            for piece in (f"mixdaemon-request 1\naddress=/mixdaemon/submit\narg={work / 'music'}/Half", " Song\n", "end\n"):
                f.write(piece)
                f.flush()
                time.sleep(0.6)  # three scans of the bridge
                early.append(_reply(folder, "a1"))
        replies = _finals(folder, ["a1"], 10)
        reason = replies.get("a1", {}).get("message")
        read_early = sum(r is not None for r in early[:2])
        expected = read_early == 0 and f"{song}: not found" in (reason or "")
        return _outcome(daemon, folder, reason=reason, expected=expected, jobs_lost=1 - len(replies))
    finally:
        daemon.kill()


SCENARIOS = [
    ("requests_fifo", fifo),
    ("requests_dev_zero_link", dev_zero_link),
    ("requests_outside_link", outside_link),
    ("requests_oversized", oversized),
    ("requests_long_logged", long_logged),
    ("requests_bad_cancel", bad_cancel),
    ("requests_unwritable_reply", unwritable_reply),
    ("requests_bad_pending", bad_pending),
    ("requests_many_pending", many_pending),
    ("requests_burst", burst),
    ("requests_forged_reply", forged_reply),
    ("requests_planted_tmp_link", planted_tmp_link),
    ("requests_half_written", half_written),
]
