"""Example audio made by the project's own synthesis, so the main job runs offline out of the box.

`make_example(out_dir)` writes two songs of four stems each: `input/` (a plain, dry-ish mix) and
`reference/` (the same kind of music mixed differently: brighter, more compressed drums, louder
vocals, wider "other"). Pure numpy: drums from shaped noise and pitched sine sweeps, bass from a
band-limited saw, chords from detuned saws, a vocal-like line from a glottal pulse train through
vowel formant resonators.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import signal

from mixdaemon.audio.dsp import (
    WORKING_RATE,
    apply_sos,
    compress,
    high_shelf,
    low_shelf,
    peaking,
)
from mixdaemon.audio.io import write_audio

SR = WORKING_RATE


def _envelope(n: int, attack: float, decay: float) -> np.ndarray:
    t = np.arange(n) / SR
    return np.minimum(1.0, t / max(attack, 1e-4)) * np.exp(-t / decay)


def _saw(freq: np.ndarray | float, n: int, rng: np.random.Generator, harmonics: int = 30) -> np.ndarray:
    """Band-limited sawtooth by additive synthesis (no aliasing), with a random start phase."""
    phase = 2 * np.pi * np.cumsum(np.broadcast_to(freq, (n,))) / SR + rng.uniform(0, 2 * np.pi)
    out = np.zeros(n)
    for k in range(1, harmonics + 1):
        if np.max(freq) * k < SR / 2:
            out += np.sin(k * phase) / k
    return out


def _place(track: np.ndarray, sound: np.ndarray, start: int) -> None:
    end = min(track.shape[0], start + sound.shape[0])
    track[start:end] += sound[: end - start]


def _drums(n: int, beat: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros((n, 2))
    kick_len, snare_len, hat_len = int(0.35 * SR), int(0.25 * SR), int(0.06 * SR)
    t = np.arange(kick_len) / SR
    kick = np.sin(2 * np.pi * (45 * t + 90 * 0.04 * (1 - np.exp(-t / 0.04)))) * _envelope(kick_len, 0.002, 0.18)
    snare_noise = signal.lfilter(*signal.butter(2, [900, 7000], "bandpass", fs=SR), rng.standard_normal(snare_len))
    snare = 0.6 * snare_noise * _envelope(snare_len, 0.001, 0.07)
    snare += 0.4 * np.sin(2 * np.pi * 190 * np.arange(snare_len) / SR) * _envelope(snare_len, 0.001, 0.05)
    hat_b, hat_a = signal.butter(2, 7000, "highpass", fs=SR)
    for i, start in enumerate(range(0, n, beat // 2)):
        hat = 0.25 * signal.lfilter(hat_b, hat_a, rng.standard_normal(hat_len)) * _envelope(hat_len, 0.0005, 0.015)
        _place(out[:, 0], 0.7 * hat, start)
        _place(out[:, 1], 1.0 * hat, start)
        if i % 2 == 0:
            beat_index = i // 2
            if beat_index % 2 == 0:
                _place(out[:, 0], kick, start)
                _place(out[:, 1], kick, start)
            else:
                _place(out[:, 0], snare, start)
                _place(out[:, 1], 0.9 * snare, start)
    return out


def _bass(n: int, beat: int, roots: list[float], rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n)
    note_len = beat
    lp_b, lp_a = signal.butter(2, 900, "lowpass", fs=SR)
    for i, start in enumerate(range(0, n, note_len)):
        root = roots[(i // 8) % len(roots)] / 2
        note = _saw(root, note_len, rng, harmonics=12) * _envelope(note_len, 0.005, 0.5)
        _place(out, signal.lfilter(lp_b, lp_a, note), start)
    return np.stack([out, out], axis=1) * 0.5


def _chords(n: int, beat: int, roots: list[float], rng: np.random.Generator) -> np.ndarray:
    out = np.zeros((n, 2))
    bar = 4 * beat
    lp_b, lp_a = signal.butter(2, 3000, "lowpass", fs=SR)
    for i, start in enumerate(range(0, n, 2 * bar)):
        root = roots[i % len(roots)] * 2
        for ratio, pan in ((1.0, 0.3), (1.26, 0.7), (1.5, 0.5)):
            for detune in (0.997, 1.003):
                tone = _saw(root * ratio * detune, 2 * bar, rng, harmonics=15) * _envelope(2 * bar, 0.3, 3.0)
                tone = signal.lfilter(lp_b, lp_a, tone) * 0.08
                _place(out[:, 0], tone * (1 - pan), start)
                _place(out[:, 1], tone * pan, start)
    return out


_VOWELS = {"a": (800, 1150, 2900), "e": (400, 2100, 2700), "o": (450, 800, 2830), "i": (300, 2300, 3000)}


def _voice(n: int, beat: int, roots: list[float], rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n)
    scale = [1.0, 9 / 8, 5 / 4, 3 / 2, 5 / 3]
    for i, start in enumerate(range(0, n, 2 * beat)):
        if i % 8 == 7:
            continue  # breathe
        length = int(1.8 * beat)
        freq = roots[(i // 4) % len(roots)] * 2 * scale[rng.integers(len(scale))]
        vibrato = freq * (1 + 0.006 * np.sin(2 * np.pi * 5.5 * np.arange(length) / SR))
        pulses = _saw(vibrato, length, rng, harmonics=40)
        formants = _VOWELS["aeoi"[i % 4]]
        voiced = sum(signal.lfilter(*signal.iirpeak(f, 8, fs=SR), pulses) / (k + 1) for k, f in enumerate(formants))
        _place(out, voiced * _envelope(length, 0.04, 1.2) * 0.5, start)
    return np.stack([out, out], axis=1)


def synth_song(seconds: float = 20.0, seed: int = 0, tempo_bpm: float = 112.0) -> dict[str, np.ndarray]:
    """Four dry stems of a short synthetic song, float32 (n, 2) at 44.1 kHz."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    beat = int(SR * 60 / tempo_bpm)
    roots = [110.0, 87.31, 130.81, 98.0] if seed % 2 == 0 else [98.0, 130.81, 87.31, 116.54]
    stems = {"drums": _drums(n, beat, rng), "bass": _bass(n, beat, roots, rng),
             "other": _chords(n, beat, roots, rng), "vocals": _voice(n, beat, roots, rng)}
    return {k: (0.5 * v / max(1e-9, np.max(np.abs(v)))).astype(np.float32) for k, v in stems.items()}


def _mix_like_reference(stems: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A distinct mixing style: bright, punchy compressed drums, scooped bass, wide other, upfront vocals."""
    styled = {
        "drums": compress(apply_sos(stems["drums"], np.stack([high_shelf(6000, 6), peaking(400, -4, 1.0)])),
                          -24, 6, 5, 120) * 1.6,
        "bass": apply_sos(stems["bass"], np.stack([low_shelf(120, 5), peaking(800, 4, 1.2)])) * 0.9,
        "other": stems["other"] * np.array([1.4, 0.4]) + stems["other"][:, ::-1] * np.array([-0.3, 0.3]),
        "vocals": compress(apply_sos(stems["vocals"], np.stack([high_shelf(8000, 5), peaking(3000, 4, 0.8)])),
                           -20, 4, 8, 300) * 1.8,
    }
    return {k: (0.7 * v / max(1e-9, np.max(np.abs(v)))).astype(np.float32) for k, v in styled.items()}


def make_example(out_dir: str | Path, seconds: float = 20.0) -> tuple[Path, Path]:
    """Write example/input/*.wav and example/reference/*.wav; return the two folders."""
    out_dir = Path(out_dir)
    input_dir, reference_dir = out_dir / "input", out_dir / "reference"
    for folder, stems in ((input_dir, synth_song(seconds, seed=0)),
                          (reference_dir, _mix_like_reference(synth_song(seconds, seed=1)))):
        for name, samples in stems.items():
            write_audio(folder / f"{name}.wav", samples)
    return input_dir, reference_dir
