"""Watch folders on a real file system with real watchdog events: a bounce is handed on once,
complete, and only bounces are."""
import json
import struct
import threading
import time

import numpy as np
import pytest

from mixdaemon.daemon.watcher import BounceWatcher, wav_header_is_final
from tests.support.daemon import wav_bytes, write_in_pieces

SETTLE = 0.3


@pytest.fixture
def watched(tmp_path):
    got, cond = [], threading.Condition()

    def on_bounce(bounce):
        with cond:
            got.append((time.monotonic(), bounce))
            cond.notify_all()

    def wait(n, timeout=10.0):
        deadline = time.monotonic() + timeout
        with cond:
            while len(got) < n and time.monotonic() < deadline:
                cond.wait(deadline - time.monotonic())
        return list(got)

    root = tmp_path / "watch"
    root.mkdir()
    watchers = []

    def start(**kw):
        w = BounceWatcher([root], on_bounce, settle_seconds=SETTLE, stale_seconds=kw.pop("stale_seconds", 30.0), **kw)
        w.start()
        watchers.append(w)
        return w

    yield root, start, wait, got
    for w in watchers:
        w.stop()


def _tone(seconds=1.0, channels=2):
    t = np.arange(int(44100 * seconds)) / 44100
    return np.stack([0.3 * np.sin(2 * np.pi * 220 * t)] * channels, axis=1).astype(np.float32)


def test_wav_header_tells_a_file_being_written_from_a_finished_one(tmp_path):
    full = wav_bytes(_tone(0.2))
    cases = {
        "complete": full,
        "declares_more_than_present": full[:len(full) // 2],
        "placeholder_sizes": full[:4] + b"\0\0\0\0" + full[8:40] + b"\0\0\0\0" + full[44:],
        "header_only": full[:44],
        "empty": b"",
        "text_named_wav": b"this is not audio, just text\n" * 4,
    }
    expected = {"complete": True, "declares_more_than_present": False, "placeholder_sizes": False,
                "header_only": False, "empty": False, "text_named_wav": True}
    for name, data in cases.items():
        path = tmp_path / f"{name}.wav"
        path.write_bytes(data)
        assert wav_header_is_final(path) is expected[name], name
    assert struct.unpack("<I", full[40:44])[0] > 0  # the case above really zeroed the data size


def test_stems_written_slowly_in_pieces_become_one_bounce_after_the_last_byte(watched):
    root, start, wait, got = watched
    start()
    song = root / "Song A"
    song.mkdir()
    files = {f"{name}.wav": wav_bytes(_tone(1.0)) for name in ("Kick", "Bass DI", "Keys", "Lead Vox")}
    finished = write_in_pieces(song, files, pieces=5, pause=SETTLE * 1.7)  # pauses longer than the settle time
    bounces = wait(1)
    time.sleep(SETTLE * 3)
    assert len(got) == 1, [b.folder for _, b in got]
    when, bounce = bounces[0]
    assert when >= finished
    assert bounce.folder == song and sorted(p.name for p in bounce.files) == sorted(files)
    assert bounce.reference is None


def test_a_header_patched_on_close_is_waited_for(watched):
    root, start, wait, got = watched
    start()
    song = root / "song"
    song.mkdir()
    data = wav_bytes(_tone(0.5))
    path = song / "vocals.wav"
    with open(path, "wb") as f:  # like a writer that patches the sizes when it closes the file
        f.write(data[:4] + b"\0\0\0\0" + data[8:40] + b"\0\0\0\0")
        f.flush()
        for k in range(44, len(data), 20000):
            f.write(data[k:k + 20000])
            f.flush()
        time.sleep(SETTLE * 3)
        assert got == []
        f.seek(4)
        f.write(data[4:8])
        f.seek(40)
        f.write(data[40:44])
    assert len(wait(1)) == 1


def test_what_is_not_a_bounce_is_ignored(watched, tmp_path):
    root, start, wait, got = watched
    out_root = root / "converted"
    start(ignore=[out_root])
    (root / ".hidden").mkdir()
    (root / ".hidden" / "drums.wav").write_bytes(wav_bytes(_tone(0.3)))
    (out_root / "song-1").mkdir(parents=True)
    (out_root / "song-1" / "drums.wav").write_bytes(wav_bytes(_tone(0.3)))
    result = root / "elsewhere-result"  # a result folder outside the output root: recognised by its manifest
    result.mkdir()
    (result / "manifest.json").write_text(json.dumps({"generator": "mixdaemon", "job_id": 3}))
    (result / "mixture.wav").write_bytes(wav_bytes(_tone(0.3)))
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("not audio")
    song = root / "song"
    song.mkdir()
    (song / ".drums.wav.part").write_bytes(wav_bytes(_tone(0.3)))  # a DAW's temp file
    (song / "bass.wav").write_bytes(wav_bytes(_tone(0.3)))
    (song / "reference.wav").write_bytes(wav_bytes(_tone(0.3)))
    bounces = wait(1)
    time.sleep(SETTLE * 4)
    assert [b.folder for _, b in got] == [song]
    bounce = bounces[0][1]
    assert [p.name for p in bounce.files] == ["bass.wav"] and bounce.reference == song / "reference.wav"


def test_marker_unchanged_files_and_changed_files(watched):
    root, start, wait, got = watched
    song = root / "song"
    song.mkdir()
    (song / "drums.wav").write_bytes(wav_bytes(_tone(0.3)))
    start(marker="bounce.done")  # the folder exists before the start: found by the start-up scan
    time.sleep(SETTLE * 4)
    assert got == []
    (song / "bounce.done").write_text("")
    assert len(wait(1)) == 1
    assert [p.name for p in got[0][1].files] == ["drums.wav"]  # the marker is not a stem
    time.sleep(SETTLE * 4)
    assert len(got) == 1  # nothing changed: not handed on again
    (song / "drums.wav").write_bytes((song / "drums.wav").read_bytes())
    # Rewritten with the same bytes: handed on again (the daemon's content hash then finds the job done).
    assert len(wait(2)) == 2
    (song / "bass.wav").write_bytes(wav_bytes(_tone(0.4)))
    bounces = wait(len(got) + 1)
    assert sorted(p.name for p in bounces[-1][1].files) == ["bass.wav", "drums.wav"]


def test_a_truncated_wav_is_handed_on_after_the_stale_time(watched):
    root, start, wait, got = watched
    start(stale_seconds=1.0)
    song = root / "song"
    song.mkdir()
    data = wav_bytes(_tone(0.5))
    (song / "drums.wav").write_bytes(data[: len(data) // 2])
    t0 = time.monotonic()
    bounces = wait(1, timeout=10)
    assert len(bounces) == 1 and bounces[0][0] - t0 >= 1.0
