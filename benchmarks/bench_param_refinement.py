"""How far the param engine moves each stem toward an unpaired reference, and how fast it is.

unpaired  the three real songs (REAL_STEMS, a centred SEGMENT_SECONDS segment of each), each song's
          stems converted toward each other song's (6 ordered pairs × 4 stems). Per feature, the
          mean over the 24 cases of |feature(y) − feature(reference)| for the output y and for the
          input x, and their ratio after / before (0: the reference's value reached, 1: no move,
          > 1: moved away). The features:
            loudness   integrated loudness, LUFS (BS.1770, audio.dsp.integrated_loudness);
            spectral   third-octave band levels (THIRD_OCTAVE_HZ, both channels' Welch power),
                       mean removed; the distance is the RMS dB difference over the bands;
            dynamics   peak-to-loudness ratio (true peak, audio.mastering.true_peak_dbtp, minus the
                       integrated loudness) and loudness range (the 10th to 95th percentile of the
                       loudness of 3-s windows every LRA_HOP_SECONDS, windows 20 LU below their mean
                       power gated out); the distance is the mean of the two absolute differences;
            width      side/mid energy ratio 10·log10(Es/Em), floored at WIDTH_FLOOR_DB (mono).
speed     the whole param conversion (workers=2) of a synthetic 3-minute 4-stem song
          (audio.examples.synth_song) toward another; wall seconds, median of --repeats.

    .venv/bin/python benchmarks/bench_param_refinement.py [--sections unpaired speed] [--json out.json]
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import numpy as np
from scipy import signal

from mixdaemon.audio.dsp import WORKING_RATE, integrated_loudness
from mixdaemon.audio.examples import synth_song
from mixdaemon.audio.io import read_audio
from mixdaemon.audio.mastering import true_peak_dbtp
from mixdaemon.audio.stems import STEM_NAMES
from mixdaemon.defaults import DEFAULT_PREDICTOR
from mixdaemon.mixing.param import ParamEngine
from mixdaemon.mixing.param_estimation import ParamPredictor

REAL_STEMS = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_stems"
SONGS = ("song_a", "song_b", "song_c")
SEGMENT_SECONDS = 10.0
THIRD_OCTAVE_HZ = 1000.0 * 2.0 ** (np.arange(-15, 14) / 3.0)   # 31.5 Hz … 16 kHz
WELCH_FFT = 8192
LRA_WINDOW_SECONDS, LRA_HOP_SECONDS = 3.0, 0.5
WIDTH_FLOOR_DB = -40.0
FEATURES = ("loudness", "spectral", "dynamics", "width")


def third_octave_shape_db(x: np.ndarray) -> np.ndarray:
    freqs, power = signal.welch(np.asarray(x, dtype=np.float64), fs=WORKING_RATE, nperseg=WELCH_FFT, axis=0)
    power = power.sum(axis=1)
    edges = THIRD_OCTAVE_HZ[:, None] * 2.0 ** (np.array([-1.0, 1.0]) / 6.0)
    bands = np.array([power[(freqs >= lo) & (freqs < hi)].mean() for lo, hi in edges])
    levels = 10.0 * np.log10(np.maximum(bands, 1e-20))
    return levels - levels.mean()


def loudness_range_lu(x: np.ndarray) -> float:
    window, hop = int(LRA_WINDOW_SECONDS * WORKING_RATE), int(LRA_HOP_SECONDS * WORKING_RATE)
    levels = np.array([integrated_loudness(x[s:s + window]) for s in range(0, x.shape[0] - window + 1, hop)])
    levels = levels[np.isfinite(levels)]
    if levels.size < 2:
        return 0.0
    mean_power = 10.0 * np.log10(np.mean(10.0 ** (levels / 10.0)))
    levels = levels[levels > mean_power - 20.0]
    return float(np.percentile(levels, 95) - np.percentile(levels, 10))


def stem_features(x: np.ndarray) -> dict:
    x = np.asarray(x, dtype=np.float64)
    loudness = integrated_loudness(x)
    mid, side = (x[:, 0] + x[:, 1]) / 2.0, (x[:, 0] - x[:, 1]) / 2.0
    width = 10.0 * np.log10(max(np.sum(side ** 2), 1e-20) / max(np.sum(mid ** 2), 1e-20))
    return {"loudness": loudness, "shape": third_octave_shape_db(x), "plr": true_peak_dbtp(x) - loudness,
            "lra": loudness_range_lu(x), "width": max(width, WIDTH_FLOOR_DB)}


def distances(a: dict, b: dict) -> dict:
    return {"loudness": abs(a["loudness"] - b["loudness"]),
            "spectral": float(np.sqrt(np.mean((a["shape"] - b["shape"]) ** 2))),
            "dynamics": (abs(a["plr"] - b["plr"]) + abs(a["lra"] - b["lra"])) / 2.0,
            "width": abs(a["width"] - b["width"])}


def segment(path: Path) -> np.ndarray:
    x = read_audio(path).samples
    n = int(SEGMENT_SECONDS * WORKING_RATE)
    start = max(0, (x.shape[0] - n) // 2)
    return x[start:start + n]


def unpaired(engine: ParamEngine) -> dict:
    songs = {song: {name: segment(REAL_STEMS / song / f"{name}.wav") for name in STEM_NAMES} for song in SONGS}
    features = {song: {name: stem_features(x) for name, x in stems.items()} for song, stems in songs.items()}
    before = {f: [] for f in FEATURES}
    after = {f: [] for f in FEATURES}
    per_stem = {name: {f: [] for f in FEATURES} for name in STEM_NAMES}
    for source, target in itertools.permutations(SONGS, 2):
        converted = engine.convert(songs[source], songs[target]).stems
        for name in STEM_NAMES:
            reference = features[target][name]
            d_before = distances(features[source][name], reference)
            d_after = distances(stem_features(converted[name]), reference)
            for f in FEATURES:
                before[f].append(d_before[f])
                after[f].append(d_after[f])
                per_stem[name][f].append((d_after[f], d_before[f]))
    ratio = lambda pairs: round(sum(a for a, _ in pairs) / max(sum(b for _, b in pairs), 1e-9), 3)  # noqa: E731
    return {"cases": len(before["loudness"]),
            "mean_distance_before": {f: round(float(np.mean(v)), 3) for f, v in before.items()},
            "mean_distance_after": {f: round(float(np.mean(v)), 3) for f, v in after.items()},
            "ratio_after_over_before": {f: ratio(list(zip(after[f], before[f]))) for f in FEATURES},
            "ratio_per_stem": {name: {f: ratio(v) for f, v in rows.items()} for name, rows in per_stem.items()}}


def speed(engine: ParamEngine, repeats: int) -> dict:
    x, reference = synth_song(180.0, seed=0), synth_song(180.0, seed=1, tempo_bpm=96.0)
    engine.convert({k: v[:44100 * 5] for k, v in x.items()}, {k: v[:44100 * 5] for k, v in reference.items()})
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.convert(x, reference)
        walls.append(time.perf_counter() - start)
    return {"song_seconds": 180.0, "stems": len(x), "workers": engine.workers, "repeats": repeats,
            "wall_seconds_median": round(statistics.median(walls), 3), "wall_seconds": [round(w, 3) for w in walls]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sections", nargs="+", default=["unpaired", "speed"], choices=["unpaired", "speed"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    engine = ParamEngine(ParamPredictor.load(DEFAULT_PREDICTOR), workers=2)
    report = {}
    if "unpaired" in args.sections:
        report["unpaired"] = unpaired(engine)
    if "speed" in args.sections:
        report["speed"] = speed(engine, args.repeats)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
