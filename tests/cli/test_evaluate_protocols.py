"""`mixdaemon evaluate --protocol raw|unpaired` as a user runs it: the installed entry point, a tiny
folder of songs, the report file and the printed table."""
import json
import os
import subprocess
import sys

import pytest

from mixdaemon.audio.io import read_audio, write_audio

STEMS = ("drums", "bass", "other", "vocals")


@pytest.fixture(scope="module")
def songs_dir(real_stems, tmp_path_factory):
    """song_a and song_c, two seconds each."""
    root = tmp_path_factory.mktemp("cli_songs")
    for song in ("song_a", "song_c"):
        for stem in STEMS:
            audio = read_audio(real_stems / song / f"{stem}.wav").samples[44100: 3 * 44100]
            write_audio(root / song / f"{stem}.wav", audio, subtype="FLOAT")
    return root


def _mixdaemon(*args):
    # one torch thread: the scores are of one-second signals, and the machine may be shared
    return subprocess.run([sys.executable, "-m", "mixdaemon", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_raw_protocol_writes_the_report_and_prints_the_table(songs_dir, tmp_path):
    out = tmp_path / "raw.json"
    run = _mixdaemon("evaluate", str(songs_dir), "--protocol", "raw", "--engine", "rms", "--seed", "0",
                     "--seed", "3", "--segment-seconds", "1", "--out", str(out), "-q")
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    assert report["protocol"].startswith("raw:") and report["seeds"] == [0, 3] and report["segment_seconds"] == 1.0
    assert list(report["engines"]) == ["identity", "rms"] and list(report["songs"]) == ["song_a", "song_c"]
    assert set(report["engines"]["rms"]["songs"]["song_c"]) == {"0", "3"}
    assert report["engines"]["identity"]["summary"]["multitrack"]["ratio_lr"] == 1.0
    lines = run.stdout.splitlines()
    assert lines[0].startswith("| engine | ratio L/R stem | ratio L/R multitrack | ratio M/S stem / multitrack |")
    rms = report["engines"]["rms"]["summary"]
    assert any(line.startswith(f"| rms | {rms['stem']['ratio_lr']:.3f} | {rms['multitrack']['ratio_lr']:.3f} |")
               for line in lines)
    assert lines[-1] == f"report written to {out}"


def test_unpaired_protocol_prints_its_table(songs_dir, tmp_path):
    out = tmp_path / "unpaired.json"
    run = _mixdaemon("evaluate", str(songs_dir), "--protocol", "unpaired", "--engine", "rms",
                     "--segment-seconds", "1", "--out", str(out), "-q")
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    assert list(report["pairs"]) == ["song_a <- song_c (seed 0)", "song_c <- song_a (seed 0)"]
    assert run.stdout.splitlines()[0] == "| engine | loudness | spectral | dynamics | width | mean |"
    assert "| identity | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 |" in run.stdout


def test_table2_options_are_refused_by_the_other_protocols(songs_dir, tmp_path):
    run = _mixdaemon("evaluate", str(songs_dir), "--protocol", "raw", "--embedding-model", "default",
                     "--out", str(tmp_path / "r.json"), "-q")
    assert run.returncode == 2
    assert run.stderr.strip() == "mixdaemon: error: --embedding-model: only the table2 protocol uses it"
    assert not (tmp_path / "r.json").exists()
