"""Preview through PortAudio on ALSA devices with no sound card: an ALSA `file` device captures what
the daemon played; with no usable device, preview is a warning and the daemon goes on."""
import time

import numpy as np
import pytest
import soundfile as sf

from tests.support.daemon import (
    DaemonProcess,
    OscListener,
    daemon_config,
    make_reference,
    request,
    write_stems,
    write_toml,
)

AB_SECONDS = 1.0


def _alsa_config(path, capture=None):
    device = (f'type file slave.pcm "null" file "{capture}" format "raw"' if capture else "type hw card 7")
    path.write_text(f"</usr/share/alsa/alsa.conf>\npcm.!default {{ {device} }}\n")
    return path


def _captured(path, frames, timeout=20.0) -> np.ndarray:
    """The float32 stereo frames written to the capture file, once at least `frames` arrived."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size >= frames * 8:
            time.sleep(0.2)
            break
        time.sleep(0.05)
    data = np.frombuffer(path.read_bytes(), dtype="<f4")
    return data[: len(data) // 2 * 2].reshape(-1, 2)


def _align(captured: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """captured from the frame where expected's first non-zero frame lands (PortAudio primes the
    device with silence first)."""
    first_expected = int(np.argmax(np.any(expected != 0, axis=1)))
    first_captured = int(np.argmax(np.any(captured != 0, axis=1)))
    start = first_captured - first_expected
    assert start >= 0
    return captured[start:start + expected.shape[0]]


@pytest.fixture(scope="module")
def finished_job(tmp_path_factory):
    """A daemon whose default ALSA device is a file, and one converted job."""
    tmp = tmp_path_factory.mktemp("preview")
    reference = make_reference(tmp / "reference", seconds=2.0)
    capture = tmp / "capture.raw"
    listener = OscListener()
    config = write_toml(tmp / "config.toml", daemon_config(tmp, listener.port, reference=str(reference),
                                                           playback={"ab_seconds": AB_SECONDS}))
    env = {"ALSA_CONFIG_PATH": str(_alsa_config(tmp / "asound-file.conf", capture))}
    proc = DaemonProcess(config, tmp / "state", env=env).start()
    stems = write_stems(tmp / "watch" / "song", seconds=2.5, seed=6)
    done = listener.wait_for(lambda a, _: a in ("/mixdaemon/done", "/mixdaemon/error"), timeout=90)
    assert done is not None and done[1] == "/mixdaemon/done", proc.log()[-2000:]
    yield proc, listener, done[2], stems, capture, tmp, config
    listener.close()
    if proc.alive():
        proc.terminate()


def _play(finished_job, mode: str) -> tuple[list, np.ndarray, int]:
    """Ask for a preview of the finished job: (the /preview/playing reply's args, the converted
    mix, its rate)."""
    proc, listener, done, *_ = finished_job
    reply, args = request(listener, proc.address, "/mixdaemon/preview", done[0], mode,
                          reply="/mixdaemon/preview/playing", timeout=30)
    assert reply == "/mixdaemon/preview/playing", args
    converted, sr = sf.read(done[-1], dtype="float32")
    return args, converted, sr


def test_preview_plays_the_converted_mix_sample_for_sample(finished_job):
    _, _, done, _, capture, _, _ = finished_job
    args, expected, sr = _play(finished_job, "converted")
    assert args == [done[0], "converted", pytest.approx(expected.shape[0] / sr, abs=1e-3)]
    played = _align(_captured(capture, expected.shape[0]), expected)
    np.testing.assert_allclose(played, expected, atol=1e-6)


def test_ab_preview_alternates_converted_and_original(finished_job):
    proc, listener, _, stems, capture, _, _ = finished_job
    _, converted, sr = _play(finished_job, "ab")
    original = np.sum([sf.read(p, dtype="float32")[0] for p in stems], axis=0)
    played = _align(_captured(capture, converted.shape[0]), converted)
    seg, guard = int(AB_SECONDS * sr), int(0.02 * sr)
    a, b = slice(guard, seg - guard), slice(seg + guard, 2 * seg - guard)
    np.testing.assert_allclose(played[a], converted[a], atol=1e-6)  # A: the converted mix
    # B: the original (gained to the converted mix's loudness), not the converted mix.
    gain = np.sum(played[b] * original[b]) / np.sum(original[b] ** 2)
    np.testing.assert_allclose(played[b], gain * original[b], atol=1e-4)
    assert gain > 0 and np.max(np.abs(played[b] - converted[b])) > 0.01
    reply, args = request(listener, proc.address, "/mixdaemon/preview/stop", reply="/mixdaemon/preview/stopped")
    assert reply == "/mixdaemon/preview/stopped"


def test_without_an_audio_device_preview_is_a_warning_not_a_crash(finished_job):
    proc, listener, done, _, _, tmp, config = finished_job
    assert proc.terminate() == 0
    env = {"ALSA_CONFIG_PATH": str(_alsa_config(tmp / "asound-none.conf"))}
    proc = DaemonProcess(config, tmp / "state", env=env).start()
    try:
        reply, args = request(listener, proc.address, "/mixdaemon/preview", done[0],
                              reply="/mixdaemon/warning", timeout=30)
        assert reply == "/mixdaemon/warning" and args[0] == done[0] and "no usable audio output device" in args[1]
        assert request(listener, proc.address, "/mixdaemon/ping", reply="/mixdaemon/pong")[0] == "/mixdaemon/pong"
        assert "WARNING mixdaemon: preview of job" in proc.log()
    finally:
        proc.terminate()
