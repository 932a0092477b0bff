"""Preview: play a finished job's converted mix, the original, or both alternating (A/B), through
sounddevice (PortAudio) without blocking the daemon.

Playback runs in PortAudio's callback thread; `Player.play` returns as soon as the stream has
started. The original is the sum of the input stems (or the input mixture), gained to the converted
mix's integrated loudness so that an A/B compares the mixing style, not the level (then scaled down
if that gain would clip). A/B starts with the converted mix and switches every `ab_seconds`, with a
10 ms crossfade at each switch so that the switch does not click.

No PortAudio library, no output device, or a device that refuses the stream: PlaybackUnavailable,
which the daemon reports as a warning; nothing else in the daemon depends on audio output.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from mixdaemon.audio.dsp import WORKING_RATE, integrated_loudness, peak
from mixdaemon.audio.io import read_audio
from mixdaemon.audio.stems import load_song
from mixdaemon.errors import MixdaemonError

log = logging.getLogger("mixdaemon.preview")

MODES = ("converted", "original", "ab")
CROSSFADE_SECONDS = 0.010


class PlaybackUnavailable(MixdaemonError):
    """Audio output is not possible here (no PortAudio, no device, device busy)."""


def converted_and_original(outputs: dict[str, str], inputs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The job's converted mix and its loudness-matched original, float32 (n, 2) at the working rate,
    trimmed to a common length."""
    converted = read_audio(outputs["mixture"]).samples
    song = load_song(inputs if len(inputs) > 1 else inputs[0])
    original = song.mixture if song.mixture is not None else np.sum(list(song.stems.values()), axis=0)
    n = min(converted.shape[0], original.shape[0])
    converted, original = converted[:n], np.asarray(original[:n], dtype=np.float64)
    target, current = integrated_loudness(converted), integrated_loudness(original)
    if np.isfinite(target) and np.isfinite(current):
        original = original * 10.0 ** ((target - current) / 20.0)
    top = peak(original)
    if top > 0.999:
        original = original * (0.999 / top)
    return converted, original.astype(np.float32)


def ab_signal(converted: np.ndarray, original: np.ndarray, ab_seconds: float, sr: int = WORKING_RATE) -> np.ndarray:
    """Converted for the first ab_seconds, then original, and so on, crossfaded at each switch."""
    n = converted.shape[0]
    segment = max(1, int(round(ab_seconds * sr)))
    fade = max(2, int(CROSSFADE_SECONDS * sr))
    square = ((np.arange(n) // segment) % 2 == 0).astype(np.float64)  # 1: converted, 0: original
    # A moving average over `fade` samples turns each switch into a linear ramp centred on it.
    padded = np.concatenate([np.full(fade // 2 + 1, square[0]), square, np.full(fade - fade // 2, square[-1])])
    total = np.cumsum(padded)
    weight = ((total[fade:fade + n] - total[:n]) / fade)[:, None].astype(np.float32)
    return (weight * converted + (1.0 - weight) * original).astype(np.float32)


def preview_signal(outputs: dict[str, str], inputs: list[str], mode: str, ab_seconds: float) -> np.ndarray:
    if mode not in MODES:
        raise MixdaemonError(f"preview mode '{mode}': choose {', '.join(MODES)}")
    if mode == "converted":
        return read_audio(outputs["mixture"]).samples
    converted, original = converted_and_original(outputs, inputs)
    return original if mode == "original" else ab_signal(converted, original, ab_seconds)


class Player:
    """One playback at a time on one output device; play() replaces what is playing."""

    def __init__(self, device: str | int | None = None):
        self.device = device
        self._stream = None
        self._lock = threading.Lock()

    @staticmethod
    def _sounddevice():
        try:
            import sounddevice
        except OSError as exc:  # the Python package is there, the PortAudio library is not
            raise PlaybackUnavailable(f"audio preview unavailable: {exc} (install PortAudio, e.g. "
                                      "apt-get install libportaudio2)") from None
        return sounddevice

    def play(self, samples: np.ndarray, rate: int = WORKING_RATE) -> float:
        """Start playing (n, 2) float32 samples; returns their duration in seconds."""
        sd = self._sounddevice()
        data = np.ascontiguousarray(samples, dtype=np.float32)
        position = [0]

        def callback(outdata, frames, _time, _status):
            start = position[0]
            chunk = data[start:start + frames]
            outdata[:len(chunk)] = chunk
            if len(chunk) < frames:
                outdata[len(chunk):] = 0
                raise sd.CallbackStop
            position[0] = start + frames

        with self._lock:
            self._stop_locked()
            try:
                stream = sd.OutputStream(samplerate=rate, channels=data.shape[1], dtype="float32",
                                         device=self.device, callback=callback)
                stream.start()
            except (sd.PortAudioError, ValueError) as exc:
                raise PlaybackUnavailable(f"no usable audio output device"
                                          f"{'' if self.device is None else f' {self.device!r}'}: {exc}") from None
            self._stream = stream
        return data.shape[0] / rate

    def _stop_locked(self) -> bool:
        stream, self._stream = self._stream, None
        if stream is None:
            return False
        try:
            stream.abort()  # stop now, without draining the buffers
            stream.close()
        except Exception as exc:  # a device that vanished mid-play: nothing left to stop
            log.debug("closing the preview stream: %s", exc)
        return True

    def stop(self) -> bool:
        """Stop playback; True if something was playing."""
        with self._lock:
            return self._stop_locked()

    @property
    def playing(self) -> bool:
        with self._lock:
            return self._stream is not None and self._stream.active


def job_preview(player: Player, outputs: dict[str, str], inputs: list[str], mode: str, ab_seconds: float) -> float:
    """Load and start a job's preview; its duration in seconds."""
    if "mixture" not in outputs or not Path(outputs["mixture"]).exists():
        raise MixdaemonError("the converted mix is gone from the output folder; nothing to preview")
    return player.play(preview_signal(outputs, inputs, mode, ab_seconds))
