"""The linked true-peak limiter (mastering.limit_linked) on a 3-minute 4-stem song: the real stems of
song_a repeated to 180 s, as they are (no limiting needed: one envelope pass) and 3x louder (limiting:
two passes and the gain curve). Wall seconds, median of --repeats.

    .venv/bin/python benchmarks/bench_mastering.py
    PYTHONPATH=OTHER_CHECKOUT .venv/bin/python benchmarks/bench_mastering.py   # another revision's code
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

import mixdaemon
from mixdaemon.audio.mastering import limit_linked, true_peak_dbtp
from mixdaemon.audio.stems import STEM_NAMES, load_song

REAL_STEMS = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_stems"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    stems = load_song([REAL_STEMS / "song_a" / f"{name}.wav" for name in STEM_NAMES]).stems
    n = int(args.minutes * 60 * 44100)
    song = {name: np.resize(x, (n, 2)).astype(np.float32) for name, x in stems.items()}
    print(f"mixdaemon from {Path(mixdaemon.__file__).parent}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    for label, gain in (("as is", 1.0), ("3x louder", 3.0)):
        loud = {name: x * np.float32(gain) for name, x in song.items()}
        walls = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            _, mix, _ = limit_linked(loud)
            walls.append(time.perf_counter() - started)
        print(f"{label:10s} {statistics.median(walls):6.2f} s wall   mix true peak {true_peak_dbtp(mix):6.2f} dBTP")


if __name__ == "__main__":
    main()
