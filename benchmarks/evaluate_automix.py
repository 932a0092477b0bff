"""The FxNorm-automix evaluation (docs/ALGORITHMS.md §6.5) on the held-out real songs: FxNorm feature
distances to the original mix of automix models and of two baselines — the "sum of normalized
stems", and that sum moved to the loudness the models' mixes are moved to (the control that shows
what the network adds beyond the gain) — and the first model's CPU speed on a long song.

  .venv/bin/python benchmarks/evaluate_automix.py --model automix-default \\
      --model MODEL.safetensors --out automix_eval.json

Per song (../shared/data/real_stems/song_{a,b,c}, never trained on): the four stems are
FX-normalized once, exactly as `mixdaemon automix` does, and every system mixes those normalized
stems; each model's mix is moved to the loudness of the stems' plain sum as `mixdaemon automix`
does (its default --loudness stems) and every output goes through the command's -1 dBTP limiter. Target: the song's mixture.wav (resampled to 44.1 kHz), cut to the stems' length.
Distances are MAPEs (0.1 = 10 %), lower is better; the original mix itself scores 0 by definition.
Unlike FxNorm's evaluate.py there is no 30-s wrap-around intro in the scored signal and no silence
trimming (the excerpts start and end in the music).

Speed: the automix model mixes --speed-seconds of song_a's normalized stems, looped (longer than the
original's 4-minute cap), with torch on one thread; real-time factor = processing time / duration.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mixdaemon.audio.io import read_audio  # noqa: E402
from mixdaemon.audio.mastering import limit_linked  # noqa: E402
from mixdaemon.audio.metrics import fxnorm_feature_distances  # noqa: E402
from mixdaemon.audio.stems import load_song  # noqa: E402
from mixdaemon.mixing.automix import Automixer
from mixdaemon.mixing.settings import AutomixSettings  # noqa: E402
from mixdaemon.nets.automix import INPUT_STEMS  # noqa: E402

REAL_STEMS = REPO.parent / "shared" / "data" / "real_stems"
SUM_BASELINE = "sum of normalized stems"
LANDED_SUM_BASELINE = "sum of normalized stems at the stems' loudness"
REPORTED = ("d_lufs", "d_peak", "loudness", "spectral", "panning", "dynamic")


def _limited(mix: np.ndarray) -> np.ndarray:
    return limit_linked({"mixture": mix}).mixture


def evaluate(songs_dir: Path, models: list[str]) -> dict:
    mixers = {}
    for model in models:
        mixer = Automixer.from_settings(AutomixSettings(model=model))
        mixers[f"{mixer.model_info.name} [{mixer.model_info.architecture}]"] = mixer
    systems = [SUM_BASELINE, LANDED_SUM_BASELINE, *mixers]
    report = {"songs": {}, "systems": systems}
    for song_dir in sorted(p for p in songs_dir.iterdir() if p.is_dir()):
        song = load_song([song_dir / f"{stem}.wav" for stem in INPUT_STEMS])
        target = read_audio(song_dir / "mixture.wav").samples
        n = min(len(target), song.n_samples)
        first = next(iter(mixers.values()))
        normalized = first.normalize(song.stems)
        normalized_sum = np.sum([normalized[s] for s in INPUT_STEMS], axis=0)
        outputs = {SUM_BASELINE: normalized_sum, LANDED_SUM_BASELINE: first.land(normalized_sum, song.stems)}
        for label, mixer in mixers.items():
            outputs[label] = mixer.land(mixer.mix_normalized(normalized), song.stems)
        report["songs"][song_dir.name] = {
            name: fxnorm_feature_distances(_limited(out)[:n], target[:n]) for name, out in outputs.items()}
        print(f"{song_dir.name}: {n / 44100:.1f} s", file=sys.stderr, flush=True)
    report["mean"] = {name: {key: float(np.mean([report["songs"][s][name][key] for s in report["songs"]]))
                             for key in next(iter(report["songs"].values()))[name]} for name in systems}
    return report


def speed(model: str, songs_dir: Path, seconds: float) -> dict:
    torch.set_num_threads(1)
    mixer = Automixer.from_settings(AutomixSettings(model=model))
    song = load_song([songs_dir / "song_a" / f"{stem}.wav" for stem in INPUT_STEMS])
    t0 = time.perf_counter()
    normalized = mixer.normalize(song.stems)
    normalize_seconds = time.perf_counter() - t0
    n = int(seconds * 44100)
    looped = {s: np.resize(x, (n, 2)) for s, x in normalized.items()}
    t0 = time.perf_counter()
    mix = mixer.mix_normalized(looped)
    mix_seconds = time.perf_counter() - t0
    assert mix.shape == (n, 2)
    return {"model": mixer.model_info.name, "song_seconds": seconds, "mix_seconds": round(mix_seconds, 2),
            "real_time_factor": round(mix_seconds / seconds, 4), "torch_threads": 1,
            "normalize_seconds_for_song_a": round(normalize_seconds, 2), "song_a_seconds": song.n_samples / 44100}


def format_table(report: dict) -> str:
    lines = [f"| system | {' | '.join(REPORTED)} |", "|---|" + "---|" * len(REPORTED)]
    for scope in (*report["songs"], "mean"):
        table = report["mean"] if scope == "mean" else report["songs"][scope]
        for name in report["systems"]:
            values = " | ".join(f"{table[name][k]:.3f}" for k in REPORTED)
            lines.append(f"| {scope}: {name} | {values} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", default=str(REAL_STEMS))
    parser.add_argument("--model", action="append", required=True,
                        help="automix model (store name or file), repeatable; the first is timed")
    parser.add_argument("--speed-seconds", type=float, default=300.0)
    parser.add_argument("--out", required=True, help="JSON report")
    args = parser.parse_args()
    report = evaluate(Path(args.songs), args.model)
    report["speed"] = speed(args.model[0], Path(args.songs), args.speed_seconds)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(format_table(report))
    print(f"\nspeed: {json.dumps(report['speed'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
