"""Probes of the daemon's inputs (issue 16, F4 F5 F7 F9), for bench_daemon_faults.py's part `probes`.

Each scenario starts a real daemon in its own work folder, plants the input (a symlink out of the
roots, a FIFO, a sparse 8 GiB file, a folder name that is not UTF-8), and counts what a user would
notice. Files outside the roots live in work/outside: every open of one is seen through inotify
(whatever link it was opened by), every change by comparing sizes and times; the user's folders are
compared before and after the same way. A refused input must come with a one-line reason naming it.

    .venv/bin/python benchmarks/bench_daemon_faults.py --parts probes --probes f4_reference_link_beside_stems
"""
from __future__ import annotations

import os
import resource
import shutil
import time
from pathlib import Path

from daemon_harness import job_rows, start
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from mixdaemon.audio.examples import synth_song
from mixdaemon.audio.io import write_audio
from mixdaemon.daemon.osc import PREFIX, OscClient

QUEUED, DONE, ERROR, PONG = f"{PREFIX}/queued", f"{PREFIX}/done", f"{PREFIX}/error", f"{PREFIX}/pong"
PING_LIMIT_SECONDS = 0.5  # the slowest answer to a ping that counts as "OSC kept answering"


def _stems(folder: Path, seed: int, seconds: float = 1.0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, samples in synth_song(seconds, seed=seed).items():
        write_audio(folder / f"{name}.wav", samples)
        paths.append(folder / f"{name}.wav")
    return paths


def _state(folder: Path) -> dict[str, tuple[int, int]]:
    """{path: (size, mtime_ns)} of every file below folder (links not followed)."""
    out = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.join(dirpath, name)] = (st.st_size, st.st_mtime_ns)
    return out


class _Probe:
    """One scenario's daemon, its OSC client, the outside folder (opens and changes counted) and the
    user's folders (losses counted)."""

    def __init__(self, work: Path, reference: Path, user_folders: list[Path], **config):
        self.work, self.outside = work, work / "outside"
        self.user_folders = user_folders
        self.user_before = {f: _state(f) for f in user_folders}
        self.outside_before = _state(self.outside)
        self.opened: list[str] = []
        handler = FileSystemEventHandler()
        handler.on_opened = lambda event: self.opened.append(os.fsdecode(event.src_path))
        self._observer = Observer()
        self._observer.schedule(handler, str(self.outside), recursive=True)
        self._observer.start()
        self.client = OscClient()
        self.daemon = start(work, self.client, reference, **config)
        self.client.target = self.daemon.address

    def ping_seconds(self) -> float:
        """How long the daemon took to answer a ping (inf: not within 5 s)."""
        t0 = time.monotonic()
        reply = self.client.request(f"{PREFIX}/ping", timeout=5)
        return time.monotonic() - t0 if reply is not None and reply[0] == PONG else float("inf")

    def request(self, address: str, args: list, timeout: float = 10.0):
        return self.client.request(address, args, timeout=timeout) or (None, [])

    def finish(self, reason: str | None, expected: bool, refused: bool = True, jobs_lost: int = 0, **extra) -> dict:
        """The counts; passed when all are 0, the outcome is the expected one and, for a refused
        input (`refused`), the reason is one line."""
        self.daemon.kill()
        time.sleep(0.3)  # inotify delivers asynchronously
        self._observer.stop()
        self._observer.join(5)
        self.client.close()
        rows = job_rows(self.daemon.state)
        after = _state(self.outside)
        changed = {p for p in set(after) | set(self.outside_before) if after.get(p) != self.outside_before.get(p)}
        lost = sum(1 for f in self.user_folders for p, s in self.user_before[f].items() if _state(f).get(p) != s)
        counts = {"outside_read": len(set(self.opened)), "outside_written": len(changed), "user_files_lost": lost,
                  "jobs_lost": jobs_lost, "jobs_doubled": len(rows) - len({r["key"] for r in rows}),
                  "silent_worker_deaths": 0}
        one_line = reason is not None and "\n" not in reason
        return {**counts, "reason": reason, **extra,
                "passed": expected and (one_line or not refused) and not any(counts.values())}


def _outside(work: Path, reference: Path) -> Path:
    outside = work / "outside"
    _stems(outside / "song", seed=31)
    shutil.copytree(reference, outside / "refs")
    return outside


def _refusal(probe: _Probe, naming: str, timeout: float = 30.0) -> str | None:
    """The first /error notification of no job whose reason names `naming`."""
    got = probe.client.wait_for(lambda a, args: a == ERROR and args[0] == "-" and naming in args[1], timeout)
    return got[1][1] if got else None


def _converted(probe: _Probe, folder: Path, timeout: float = 60.0) -> bool:
    """Whether the bounce in `folder` ends done (its /queued, then its /done)."""
    queued = probe.client.wait_for(lambda a, args: a == QUEUED and args[1] == str(folder), timeout)
    if queued is None:
        return False
    return probe.client.wait_for(lambda a, args: a in (DONE, ERROR) and args[0] == queued[1][0], timeout) is not None


# --- F4: references are confined -------------------------------------------------------------

def f4_reference_link_beside_stems(work: Path, reference: Path) -> dict:
    """A stems folder submitted over OSC with reference.wav beside it, a link to a file outside."""
    outside = _outside(work, reference)
    song = work / "allowed" / "song"
    _stems(song, seed=1)
    os.symlink(outside / "refs" / "drums.wav", song / "reference.wav")
    probe = _Probe(work, reference, [song], allowed_roots=[str(work / "allowed")])
    reply, args = probe.request(f"{PREFIX}/submit", [str(song)])
    reason = args[1] if reply == ERROR else None
    return probe.finish(reason, reason is not None and str(song / "reference.wav") in reason)


def f4_reference_folder_link_beside_stems(work: Path, reference: Path) -> dict:
    """A stems folder submitted over OSC with reference/ beside it, a link to a folder outside."""
    outside = _outside(work, reference)
    song = work / "allowed" / "song"
    _stems(song, seed=2)
    os.symlink(outside / "refs", song / "reference")
    probe = _Probe(work, reference, [song], allowed_roots=[str(work / "allowed")])
    reply, args = probe.request(f"{PREFIX}/submit", [str(song)])
    reason = args[1] if reply == ERROR else None
    return probe.finish(reason, reason is not None and str(song / "reference") in reason)


def f4_link_inside_reference_folder(work: Path, reference: Path) -> dict:
    """A reference folder inside the roots holding a link out: refused when set over OSC; and one
    set while it was clean, the link planted since: refused when a job would use it."""
    outside = _outside(work, reference)
    song, refs = work / "allowed" / "song", work / "allowed" / "refs"
    _stems(song, seed=3)
    shutil.copytree(reference, refs)
    probe = _Probe(work, reference, [song, refs], allowed_roots=[str(work / "allowed")])
    ok, _ = probe.request(f"{PREFIX}/reference", [str(refs)])
    os.symlink(outside / "song" / "vocals.wav", refs / "zz.wav")
    set_reply, set_args = probe.request(f"{PREFIX}/reference", [str(refs)])
    use_reply, use_args = probe.request(f"{PREFIX}/submit", [str(song)])
    refused = [a[1] for r, a in ((set_reply, set_args), (use_reply, use_args)) if r == ERROR]
    expected = ok == f"{PREFIX}/reference/ok" and len(refused) == 2 and all(str(refs / "zz.wav") in r for r in refused)
    return probe.finish(refused[-1] if refused else None, expected)


# --- F5: one slow input stalls nothing -------------------------------------------------------

def f5_fifo_stem_over_osc(work: Path, reference: Path) -> dict:
    """/submit of a FIFO named drums.wav: refused at once, ping answered."""
    _outside(work, reference)
    song = work / "allowed" / "song"
    _stems(song, seed=4)
    (song / "drums.wav").unlink()
    os.mkfifo(song / "drums.wav")
    probe = _Probe(work, reference, [], allowed_roots=[str(work / "allowed")])
    reply, args = probe.request(f"{PREFIX}/submit", [str(song / "drums.wav")], timeout=5)
    ping = probe.ping_seconds()
    reason = args[1] if reply == ERROR else None
    return probe.finish(reason, reason is not None and "not a regular file" in reason and ping < PING_LIMIT_SECONDS,
                        ping_seconds=round(ping, 3))


def f5_fifo_reference_watch(work: Path, reference: Path) -> dict:
    """The default reference, set over OSC, replaced by a FIFO: the next bounce is refused naming it,
    and the watcher goes on (a bounce with its own reference after it is converted)."""
    _outside(work, reference)
    refs = work / "allowed" / "ref.wav"
    refs.parent.mkdir(parents=True)
    shutil.copy(reference / "drums.wav", refs)
    probe = _Probe(work, reference, [], allowed_roots=[str(work / "allowed")])
    probe.request(f"{PREFIX}/reference", [str(refs)])
    refs.unlink()
    os.mkfifo(refs)
    _stems(work / "watch" / "first", seed=5)
    reason = _refusal(probe, str(refs))
    second = work / "watch" / "second"
    _stems(second, seed=6)
    shutil.copy(reference / "bass.wav", second / "reference.wav")
    converted = _converted(probe, second)
    return probe.finish(reason, reason is not None and "not a regular file" in reason and converted,
                        jobs_lost=int(not converted))


def f5_sparse_8gb_over_osc(work: Path, reference: Path) -> dict:
    """/submit of an 8 GiB sparse file: refused by size before it is read, ping answered."""
    _outside(work, reference)
    huge = work / "allowed" / "huge" / "mix.wav"
    huge.parent.mkdir(parents=True)
    with open(huge, "wb") as f:
        f.truncate(8 * 2**30)
    probe = _Probe(work, reference, [], allowed_roots=[str(work / "allowed")])
    t0 = time.monotonic()
    reply, args = probe.request(f"{PREFIX}/submit", [str(huge)], timeout=30)
    answered = time.monotonic() - t0
    ping = probe.ping_seconds()
    reason = args[1] if reply == ERROR else None
    huge.unlink()
    return probe.finish(reason, reason is not None and "limit" in reason and max(answered, ping) < PING_LIMIT_SECONDS,
                        answered_seconds=round(answered, 3), ping_seconds=round(ping, 3))


def f5_ping_while_hashing(work: Path, reference: Path) -> dict:
    """/submit of a 1 GiB file (under the limit, so hashed: seconds): pings meanwhile are answered."""
    _outside(work, reference)
    big = work / "allowed" / "big"
    _stems(big, seed=7)
    with open(big / "other.wav", "r+b") as f:
        f.truncate(2**30)  # sparse; still read whole by the hash
    probe = _Probe(work, reference, [], allowed_roots=[str(work / "allowed")])
    probe.client.send(f"{PREFIX}/submit", [str(big)])
    t0, slowest, pings, reply = time.monotonic(), 0.0, 0, None
    while reply is None and time.monotonic() - t0 < 60:
        slowest, pings = max(slowest, probe.ping_seconds()), pings + 1
        reply = probe.client.wait_for(lambda a, args: a == QUEUED or (a == ERROR and args[0] == "-"), 0.05)
    hashed = time.monotonic() - t0
    reason = reply[1][1] if reply and reply[0] == ERROR else None
    result = probe.finish(reason, reply is not None and reply[0] == QUEUED and slowest < PING_LIMIT_SECONDS,
                          refused=False, slowest_ping_seconds=round(slowest, 3), pings=pings,
                          submit_answered_seconds=round(hashed, 3))
    (big / "other.wav").unlink()
    return result


# --- F7: no bounce is lost -------------------------------------------------------------------

def f7_disk_full_while_queueing(work: Path, reference: Path) -> dict:
    """A bounce completes while the daemon cannot write a byte (its file-size limit set to 0 from
    outside: every write fails with EFBIG, as on a full disk): queueing it fails. Once writes work
    again, the watcher's next try queues it and it is converted."""
    _outside(work, reference)
    probe = _Probe(work, reference, [])
    pid = probe.daemon.process.pid
    limits = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, limits[1]))
    song = work / "watch" / "song"
    try:
        _stems(song, seed=12)
        reason = _refusal(probe, str(song))
        time.sleep(1.0)  # one more failed try at least
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, limits)
    converted = _converted(probe, song)
    return probe.finish(reason, reason is not None and "tries again" in reason and converted,
                        jobs_lost=int(not converted))


def f7_non_utf8_bounce_folder(work: Path, reference: Path) -> dict:
    """A bounce in a folder whose name is not UTF-8 (submitting it used to raise UnicodeEncodeError,
    after the bounce was marked handed on: never retried). It must be queued and reach an end."""
    _outside(work, reference)
    probe = _Probe(work, reference, [])
    song = work / "watch" / os.fsdecode(b"Take \xff\xfe")
    _stems(song, seed=8)
    queued = probe.client.wait_for(lambda a, args: a == QUEUED, 30)
    ended = queued is not None and probe.client.wait_for(
        lambda a, args: a in (DONE, ERROR) and args[0] == queued[1][0], 60)
    reason = ended[1][1] if ended and ended[0] == ERROR else None
    return probe.finish(reason, bool(ended) and ended[0] == DONE, refused=False, jobs_lost=int(not ended),
                        outcome=ended[0].rsplit("/", 1)[1] if ended else "not queued" if queued is None else "stuck")


# --- F9: watch folders do not follow links out -----------------------------------------------

def f9_watched_stem_link_out(work: Path, reference: Path) -> dict:
    """A watched bounce whose vocals.wav links to a WAV outside every root: refused naming it,
    never opened (not even for its header); a good bounce after it is converted."""
    outside = _outside(work, reference)
    song = work / "watch" / "linked"
    _stems(song, seed=9)
    (song / "vocals.wav").unlink()
    os.symlink(outside / "song" / "vocals.wav", song / "vocals.wav")
    probe = _Probe(work, reference, [song])
    reason = _refusal(probe, str(song / "vocals.wav"))
    good = work / "watch" / "good"
    _stems(good, seed=10)
    converted = _converted(probe, good)
    return probe.finish(reason, reason is not None and "outside the allowed roots" in reason and converted,
                        jobs_lost=int(not converted))


def f9_watched_reference_link_out(work: Path, reference: Path) -> dict:
    """A watched bounce whose reference.wav links to a file outside every root: refused naming it,
    never read (it used to be read, and taken for a mix, separated: a model download attempt)."""
    outside = _outside(work, reference)
    song = work / "watch" / "linked reference"
    _stems(song, seed=11)
    os.symlink(outside / "song" / "drums.wav", song / "reference.wav")
    probe = _Probe(work, reference, [song])
    reason = _refusal(probe, str(song / "reference.wav"))
    time.sleep(1.0)  # time for a job, had one been queued, to start separating
    jobs = len(job_rows(probe.daemon.state))
    separated = "demucs" in (probe.daemon.state / "mixdaemon.log").read_text()
    return probe.finish(reason, reason is not None and "outside the allowed roots" in reason and not jobs
                        and not separated, jobs=jobs, separation_attempted=separated)


SCENARIOS = [
    ("f4_reference_link_beside_stems", f4_reference_link_beside_stems),
    ("f4_reference_folder_link_beside_stems", f4_reference_folder_link_beside_stems),
    ("f4_link_inside_reference_folder", f4_link_inside_reference_folder),
    ("f5_fifo_stem_over_osc", f5_fifo_stem_over_osc),
    ("f5_fifo_reference_watch", f5_fifo_reference_watch),
    ("f5_sparse_8gb_over_osc", f5_sparse_8gb_over_osc),
    ("f5_ping_while_hashing", f5_ping_while_hashing),
    ("f7_disk_full_while_queueing", f7_disk_full_while_queueing),
    ("f7_non_utf8_bounce_folder", f7_non_utf8_bounce_folder),
    ("f9_watched_stem_link_out", f9_watched_stem_link_out),
    ("f9_watched_reference_link_out", f9_watched_reference_link_out),
]
