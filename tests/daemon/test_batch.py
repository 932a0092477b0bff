"""`mixdaemon batch`: every song folder converted, resumable, the same files on a real local Ray
cluster as on local workers, and no song lost when a Ray worker is killed mid-job."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mixdaemon.daemon.batch import STATE_FOLDER, run_batch
from mixdaemon.daemon.jobstore import STAGING_PREFIX, JobStore
from mixdaemon.mixing.settings import TransferSettings

STEMS = ("drums", "bass", "other", "vocals")
OUTPUTS = (*STEMS, "mixture")


@pytest.fixture(scope="module")
def songs(real_stems, tmp_path_factory) -> tuple[Path, Path]:
    """Four 4-s songs (excerpts of the real songs) in SONGS/<album>/<song>/, and a reference."""
    root = tmp_path_factory.mktemp("batch")
    layout = [("album/one", "song_a", 0), ("album/two", "song_a", 6), ("three", "song_b", 0), ("four", "song_c", 2)]
    for folder, song, start in layout:
        target = root / "songs" / folder
        target.mkdir(parents=True)
        for stem in STEMS:
            x, sr = sf.read(real_stems / song / f"{stem}.wav", dtype="float32")
            sf.write(target / f"{stem}.wav", x[start * sr:(start + 4) * sr], sr, subtype="PCM_24")
    reference = root / "reference"
    reference.mkdir()
    for stem in STEMS:
        x, sr = sf.read(real_stems / "song_b" / f"{stem}.wav", dtype="float32")
        sf.write(reference / f"{stem}.wav", x[6 * sr:12 * sr], sr, subtype="PCM_24")
    return root / "songs", reference


def _audio(folder: Path) -> dict[str, bytes]:
    return {name: (folder / f"{name}.wav").read_bytes() for name in OUTPUTS}


def _mixdaemon(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mixdaemon", *args, "-q"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "RAY_AUTH_MODE": "disabled"})


@pytest.fixture(scope="module")
def local_run(songs, tmp_path_factory) -> Path:
    songs_dir, reference = songs
    out = tmp_path_factory.mktemp("local") / "out"
    result = _mixdaemon("batch", str(songs_dir), "--reference", str(reference), "--out", str(out), "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "4 of 4 songs done" in result.stdout
    return out


def test_every_song_folder_gets_its_result_folder_and_a_rerun_converts_nothing_again(songs, local_run):
    songs_dir, reference = songs
    assert sorted(p.name for p in local_run.iterdir() if not p.name.startswith(".")) == \
        ["album-one", "album-two", "four", "three"]
    for song in ("album-one", "three"):
        audio = _audio(local_run / song)
        assert all(len(data) > 1000 for data in audio.values())
        assert (local_run / song / "manifest.json").is_file()
    before = {song: (local_run / song / "drums.wav").stat().st_mtime_ns for song in ("album-one", "four")}
    again = _mixdaemon("batch", str(songs_dir), "--reference", str(reference), "--out", str(local_run))
    assert again.returncode == 0 and again.stdout.count("done in an earlier run") == 4, again.stdout
    assert before == {song: (local_run / song / "drums.wav").stat().st_mtime_ns for song in before}


def test_a_song_that_cannot_be_read_is_one_line_and_the_others_are_converted(songs, tmp_path):
    songs_dir, reference = songs
    mine = tmp_path / "mine"
    (mine / "good").mkdir(parents=True)
    for stem in STEMS:
        os.link(songs_dir / "three" / f"{stem}.wav", mine / "good" / f"{stem}.wav")
    (mine / "broken").mkdir()
    (mine / "broken" / "drums.wav").write_bytes(b"RIFF not really a wav")
    outcomes = {o.song: o for o in run_batch(mine, reference, tmp_path / "out", TransferSettings())}
    assert outcomes["good"].state == "done"
    assert outcomes["broken"].state == "error" and "drums.wav" in outcomes["broken"].error
    assert "\n" not in outcomes["broken"].error
    # fixed, the batch run again converts only that song
    os.unlink(mine / "broken" / "drums.wav")
    os.link(songs_dir / "four" / "drums.wav", mine / "broken" / "drums.wav")
    outcomes = {o.song: o for o in run_batch(mine, reference, tmp_path / "out", TransferSettings())}
    assert outcomes["good"].earlier and outcomes["broken"].state == "done" and not outcomes["broken"].earlier


def test_ray_executor_on_a_local_cluster_writes_the_same_files_as_local_workers(songs, local_run, tmp_path):
    pytest.importorskip("ray")
    songs_dir, reference = songs
    out = tmp_path / "out"
    result = _mixdaemon("batch", str(songs_dir), "--reference", str(reference), "--out", str(out),
                        "--executor", "ray", "--workers", "2")
    assert result.returncode == 0, result.stderr
    for song in ("album-one", "album-two", "three", "four"):
        assert _audio(out / song) == _audio(local_run / song), song  # bit-identical


def _ray_worker_running_a_job() -> int | None:
    """The pid of a Ray worker process while it runs a job (Ray titles it ray::TransferWorker.run)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if title.startswith(b"ray::TransferWorker.run"):
            return int(pid)
    return None


def test_a_ray_worker_killed_mid_job_loses_no_song_and_leaves_no_partial_result(songs, local_run, tmp_path,
                                                                                monkeypatch):
    ray = pytest.importorskip("ray")
    from mixdaemon.daemon.ray_executor import connect
    songs_dir, reference = songs
    out = tmp_path / "out"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert connect(None, num_cpus=2)
    try:
        outcome: dict = {}
        runner = threading.Thread(target=lambda: outcome.update(
            result=run_batch(songs_dir, reference, out, TransferSettings(), executor="ray", workers=1)))
        runner.start()
        deadline, killed = time.monotonic() + 120, None
        while killed is None and time.monotonic() < deadline and runner.is_alive():
            killed = _ray_worker_running_a_job()
            time.sleep(0.05)
        assert killed is not None, "no Ray worker was seen running a job"
        os.kill(killed, signal.SIGKILL)
        runner.join(300)
    finally:
        ray.shutdown()
    assert [o.state for o in outcome["result"]] == ["done"] * 4
    for song in ("album-one", "album-two", "three", "four"):
        assert _audio(out / song) == _audio(local_run / song), song
    assert not [p for p in out.iterdir() if p.name.startswith(STAGING_PREFIX)]  # the killed job's staging went
    store = JobStore(out / STATE_FOLDER / "jobs.sqlite")
    try:
        jobs = store.list()
        assert len(jobs) == 4 and all(j.state == "done" for j in jobs)
        assert sorted(j.attempts for j in jobs) == [1, 1, 1, 2]  # the killed job ran once more, no other did
    finally:
        store.close()
    assert np.all([(out / s / "manifest.json").is_file() for s in ("album-one", "three")])


def test_the_daemon_runs_watched_bounces_on_ray_workers(songs, local_run, tmp_path):
    """`mixdaemon serve` with `[executor] kind = "ray"`, a local Ray cluster of 2 workers: two bounces
    dropped into the watch folder come back as the local workers' files."""
    pytest.importorskip("ray")
    from tests.support.daemon import DaemonProcess, daemon_config, write_toml
    songs_dir, reference = songs
    config = write_toml(tmp_path / "config.toml", daemon_config(
        tmp_path, None, reference=str(reference), executor={"kind": "ray", "workers": 2}))
    daemon = DaemonProcess(config, tmp_path / "state", env={"RAY_AUTH_MODE": "disabled"}).start(timeout=120)
    try:
        for song in ("three", "four"):
            (tmp_path / "watch" / song).mkdir()
            for stem in STEMS:
                os.link(songs_dir / song / f"{stem}.wav", tmp_path / "watch" / song / f"{stem}.wav")
        deadline = time.monotonic() + 180
        results = []
        while time.monotonic() < deadline and len(results) < 2:
            results = sorted((tmp_path / "out").glob("*/manifest.json"))
            time.sleep(0.2)
        assert len(results) == 2, daemon.log()[-2000:]
        for manifest in results:
            song = manifest.parent.name.rsplit("-", 1)[0]
            assert _audio(manifest.parent) == _audio(local_run / song), song
    finally:
        assert daemon.terminate(timeout=60) == 0


def test_without_ray_the_ray_executor_says_in_one_line_how_to_install_it(songs, tmp_path, monkeypatch, capsys):
    from mixdaemon.cli.main import main
    songs_dir, reference = songs
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed: `import ray` fails
    status = main(["batch", str(songs_dir), "--reference", str(reference), "--out", str(tmp_path / "out"),
                   "--executor", "ray", "-q"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.count("\n") == 0
    assert "pip install 'mixdaemon[ray]'" in err and not (tmp_path / "out").exists()
