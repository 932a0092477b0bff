"""The daemon end to end, with real parts: a daemon subprocess, a real watched folder, real UDP,
real SQLite, the real "match" engine."""
import hashlib
import json
import sqlite3
import time

import numpy as np
import pytest
import soundfile as sf

from tests.support.daemon import (
    DONE,
    ERROR,
    PROGRESS,
    QUEUED,
    RESULT_FILES,
    DaemonProcess,
    OutputMonitor,
    daemon_config,
    request,
    send_cli,
    song_stems,
    wav_bytes,
    write_in_pieces,
    write_stems,
    write_toml,
)


@pytest.fixture
def start_daemon(tmp_path, listener, reference):
    procs = []

    def start(**extra):
        config = write_toml(tmp_path / "config.toml", daemon_config(tmp_path, listener.port, reference=str(reference), **extra))
        proc = DaemonProcess(config, tmp_path / "state").start()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.alive():
            proc.kill()


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _jobs(tmp_path) -> list[dict]:
    db = sqlite3.connect(tmp_path / "state" / "jobs.sqlite3")
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM jobs ORDER BY id")]
    finally:
        db.close()


def test_stems_written_slowly_become_converted_stems_a_manifest_and_a_done_message(tmp_path, listener, start_daemon):
    proc = start_daemon()  # the user's command: `mixdaemon serve --config ...`
    song = tmp_path / "watch" / "Song 1 bounce"
    song.mkdir()
    stems = song_stems(2.5, seed=3)
    data = {f"{name.title()} Stem.wav": wav_bytes(x) for name, x in stems.items()}
    data["Lead Vox Stem.wav"] = data.pop("Vocals Stem.wav")

    def nothing_queued_yet():
        assert listener.of(QUEUED) == [], "a job started on a partial file"

    # Every file grows in pieces, with pauses longer than the settle time.
    last_byte = write_in_pieces(song, data, pieces=6, pause=0.5, between=nothing_queued_yet)

    done = listener.wait_for(lambda a, _: a in (DONE, ERROR), timeout=90)
    assert done is not None and done[1] == DONE, (done, proc.log()[-2000:])
    queued = [(t, args) for t, a, args in listener.messages if a == QUEUED]
    assert len(queued) == 1 and queued[0][0] >= last_byte and queued[0][1][1] == str(song)
    job_id, manifest_path, *outputs = done[2]
    assert job_id == queued[0][1][0]
    assert [p.rsplit("/", 1)[1] for p in outputs] == ["drums.wav", "bass.wav", "other.wav", "vocals.wav", "mixture.wav"]
    result = tmp_path / "out" / f"Song 1 bounce-{job_id}"
    assert {p.name for p in result.iterdir()} == RESULT_FILES
    assert manifest_path == str(result / "manifest.json")
    progress = [args for args in listener.of(PROGRESS) if args[0] == job_id]
    assert progress and all(0.0 <= p[1] <= 100.0 for p in progress)

    manifest = json.loads((result / "manifest.json").read_text())
    assert manifest["job_id"] == job_id and manifest["engine"] == "match"
    assert {i["path"]: i["sha256"] for i in manifest["inputs"]} == {str(song / n): _sha(song / n) for n in data}
    assert {i["role"] for i in manifest["inputs"]} == {"drums", "bass", "other", "vocals"}
    assert manifest["outputs"]["mixture"] == outputs[-1]
    assert set(manifest["loudness_lufs"]["before"]) == set(manifest["loudness_lufs"]["after"]) >= {"drums", "mixture"}
    assert manifest["timings_seconds"]["total"] > 0
    for path in outputs:
        audio, sr = sf.read(path)
        assert sr == 44100 and audio.shape == (len(stems["drums"]), 2) and np.isfinite(audio).all()
    assert (result / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The inputs are untouched.
    assert {n: (song / n).read_bytes() for n in data} == data
    assert "bounce complete" in proc.log() and f"job {job_id}: done" in proc.log()


def test_sigkill_mid_job_then_restart_completes_once_and_never_shows_a_partial_output(tmp_path, listener, start_daemon):
    monitor = OutputMonitor(tmp_path / "out")
    proc = start_daemon()
    write_stems(tmp_path / "watch" / "song", seconds=6.0, seed=5)
    mid = listener.wait_for(lambda a, args: a == PROGRESS and 0.0 < args[1] < 90.0, timeout=60)
    assert mid is not None, proc.log()[-2000:]
    proc.kill()
    assert listener.of(DONE) == []
    job_id = mid[2][0]
    running = _jobs(tmp_path)
    assert [(j["id"], j["state"], j["attempts"]) for j in running] == [(job_id, "running", 1)]

    start = len(listener.messages)
    proc = start_daemon()
    done = listener.wait_for(lambda a, args: a in (DONE, ERROR), timeout=90, start=start)
    assert done is not None and done[1] == DONE and done[2][0] == job_id, proc.log()[-2000:]
    assert f"job {job_id}: was running when the daemon stopped; queued again" in proc.log()

    # Killed again after the job is done, and restarted: the start-up scan finds the same bounce,
    # and it is not processed again.
    proc.kill()
    start = len(listener.messages)
    proc = start_daemon()
    time.sleep(1.5)
    assert listener.wait_for(lambda a, _: a == QUEUED, timeout=0.1, start=start) is None
    assert "not processed again" in proc.log()
    monitor.stop()
    jobs = _jobs(tmp_path)
    assert [(j["id"], j["state"], j["attempts"]) for j in jobs] == [(job_id, "done", 2)]
    assert [p.name for p in (tmp_path / "out").iterdir()] == [f"song-{job_id}"]  # no staging left either
    assert monitor.violations == [] and monitor.seen == {f"song-{job_id}"}


def _bad_bounces(watch):
    """Bounce folders that each hold one bad file among good stems; the words their error must show."""
    stems = song_stems(1.0, seed=9)
    good = {name: wav_bytes(x) for name, x in stems.items()}
    n = len(stems["drums"])
    text = b"This is not audio. It is a text file that somebody named vocals.wav\n" * 20
    nan = stems["vocals"].copy()
    nan[1000:1010] = np.nan
    cases = {
        "corrupt": (good["vocals"][:12] + b"fmt \xff\xff\xff\x7f" + bytes(range(256)) * 40, "not a readable"),
        "truncated": (good["vocals"][: len(good["vocals"]) // 2], "truncated"),
        "nan": (wav_bytes(nan, subtype="FLOAT"), "NaN"),
        "six_channels": (wav_bytes(np.zeros((n, 6), np.float32) + 0.1), "6 channels"),
        "text_named_wav": (text, "not a readable"),
        "empty": (b"", "empty file"),
    }
    for name, (data, _) in cases.items():
        folder = watch / name
        folder.mkdir()
        for stem, content in good.items():
            if stem != "vocals":
                (folder / f"{stem}.wav").write_bytes(content)
        (folder / "vocals.wav").write_bytes(data)
    silent = watch / "silent"
    silent.mkdir()
    for stem in good:
        (silent / f"{stem}.wav").write_bytes(wav_bytes(np.zeros((n, 2), np.float32)))
    expected = {name: words for name, (_, words) in cases.items()}
    expected["silent"] = "silent"
    return expected


def test_bad_inputs_fail_with_a_clear_reason_and_the_daemon_keeps_serving(tmp_path, listener, start_daemon):
    watch = tmp_path / "watch"
    watch.mkdir()
    expected = _bad_bounces(watch)
    proc = start_daemon(stale_seconds=1.0)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        finished = {args[0] for a, args in [(m[1], m[2]) for m in listener.messages] if a in (DONE, ERROR)}
        if len(finished) >= len(expected):
            break
        time.sleep(0.2)
    queued = {args[1].rsplit("/", 1)[1]: args[0] for args in listener.of(QUEUED)}
    errors = {args[0]: args[1] for args in listener.of(ERROR)}
    log = proc.log()
    for name, words in expected.items():
        job_id = queued[name]
        assert job_id in errors, (name, log[-3000:])
        assert words in errors[job_id] and str(watch / name) in errors[job_id], (name, errors[job_id])
        assert f"job {job_id}: error: " in log and words in log
    # ... and a good bounce after all of that is converted.
    write_stems(watch / "good", seconds=1.5, seed=11)
    done = listener.wait_for(lambda a, args: a == DONE and args[1].startswith(str(tmp_path / "out" / "good-")), 60)
    assert done is not None, log[-3000:]
    reply, _ = request(listener, proc.address, "/mixdaemon/ping", reply="/mixdaemon/pong")
    assert reply == "/mixdaemon/pong" and proc.alive()
    assert not any(p.name.startswith(".") for p in (tmp_path / "out").iterdir())


def test_osc_submission_status_cancel_and_graceful_stop(tmp_path, listener, start_daemon, reference):
    proc = start_daemon(allowed_roots=[str(tmp_path)])
    stems = write_stems(tmp_path / "elsewhere" / "song", seconds=1.0, seed=2)
    folder = str(stems[0].parent)
    reply, args = request(listener, proc.address, "/mixdaemon/submit", folder, str(reference), reply=QUEUED)
    assert reply == QUEUED, args
    job_id = args[0]
    done = listener.wait_for(lambda a, a_: a in (DONE, ERROR) and a_[0] == job_id, 60)
    assert done[1] == DONE
    # The same work again: the same job, and its result at once.
    start = len(listener.messages)
    reply, args = request(listener, proc.address, "/mixdaemon/submit", folder, str(reference), reply=QUEUED)
    assert args[0] == job_id
    again = listener.wait_for(lambda a, _: a == DONE, 5, start)
    assert again is not None and again[2] == done[2]
    reply, args = request(listener, proc.address, "/mixdaemon/status", job_id, reply="/mixdaemon/status/reply")
    assert args[:3] == [job_id, "done", 100.0] and args[4] == str(tmp_path / "out" / f"song-{job_id}")
    reply, args = request(listener, proc.address, "/mixdaemon/cancel", job_id, reply="/mixdaemon/cancelled")
    assert reply == ERROR and "only queued or running jobs can be cancelled" in args[1]
    # A running job is cancelled at its next progress point; its output never appears.
    write_stems(tmp_path / "watch" / "long", seconds=8.0, seed=4)
    running = listener.wait_for(lambda a, args: a == PROGRESS and args[0] != job_id and args[1] > 0, 60)
    long_id = running[2][0]
    reply, args = request(listener, proc.address, "/mixdaemon/cancel", long_id, reply="/mixdaemon/cancelled")
    assert (reply, args) == ("/mixdaemon/cancelled", [long_id])
    assert [j["state"] for j in _jobs(tmp_path) if j["id"] == long_id] == ["cancelled"]
    # `mixdaemon send submit --wait` follows a job to its end.
    other = write_stems(tmp_path / "elsewhere" / "other song", seconds=1.0, seed=8)
    status, out, _ = send_cli(proc.port, "submit", *map(str, other), "--reference", str(reference), "--wait",
                              timeout=60)
    lines = out.splitlines()
    assert status == 0 and lines[0].startswith(QUEUED) and lines[-1].startswith(DONE), out
    assert any(line.startswith(PROGRESS) for line in lines)
    # SIGTERM: a clean stop.
    assert proc.terminate() == 0
    assert "stopped" in proc.log().splitlines()[-1]
    assert not (tmp_path / "state" / "daemon.json").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([f"song-{job_id}", f"other song-{job_id + 2}"])
