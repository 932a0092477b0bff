"""Batch throughput on a local Ray cluster: the same songs with 1 and with 2 Ray workers (1 CPU,
1 thread each), and with local workers, alternated, in one process and one cluster.

  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_batch.py --work-dir WORK [--songs 8] [--seconds 15]

Songs: excerpts of ../shared/data/real_stems (each song a different stretch), 24-bit WAV; the
reference another stretch of song_b. Every run writes to its own output folder (no song is reused
from an earlier run). Prints one Markdown table: wall seconds per batch, songs per minute and the
speed-up over one worker of the same executor.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
REAL_STEMS = REPO.parent / "shared" / "data" / "real_stems"
STEMS = ("drums", "bass", "other", "vocals")

from mixdaemon.daemon.batch import run_batch  # noqa: E402
from mixdaemon.daemon.ray_executor import connect  # noqa: E402
from mixdaemon.mixing.settings import TransferSettings  # noqa: E402


def make_songs(folder: Path, songs: int, seconds: float) -> tuple[Path, Path]:
    shutil.rmtree(folder, ignore_errors=True)
    sources = ("song_a", "song_b", "song_c")
    for i in range(songs):
        song = sources[i % 3]
        target = folder / "songs" / f"song_{i:02d}"
        target.mkdir(parents=True)
        for stem in STEMS:
            x, sr = sf.read(REAL_STEMS / song / f"{stem}.wav", dtype="float32")
            start = int((i // 3) * 1.5 * sr) % max(1, x.shape[0] - int(seconds * sr))
            sf.write(target / f"{stem}.wav", x[start:start + int(seconds * sr)], sr, subtype="PCM_24")
    reference = folder / "reference"
    reference.mkdir()
    for stem in STEMS:
        x, sr = sf.read(REAL_STEMS / "song_b" / f"{stem}.wav", dtype="float32")
        sf.write(reference / f"{stem}.wav", x[-int(10 * sr):], sr, subtype="PCM_24")
    return folder / "songs", reference


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", required=True, type=Path)
    parser.add_argument("--songs", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2, help="each configuration this many times, alternated")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    songs_dir, reference = make_songs(args.work_dir.resolve(), args.songs, args.seconds)
    connect(None, num_cpus=2)
    runs = [("ray", 1), ("ray", 2), ("local", 1), ("local", 2)]
    walls: dict[tuple[str, int], list[float]] = {run: [] for run in runs}
    for round_ in range(args.rounds):
        for executor, workers in runs:
            out = args.work_dir / f"out-{executor}-{workers}-{round_}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            outcomes = run_batch(songs_dir, reference, out, TransferSettings(), executor=executor, workers=workers)
            walls[(executor, workers)].append(time.perf_counter() - t0)
            assert all(o.state == "done" for o in outcomes), [o for o in outcomes if o.state != "done"]
    load = os.getloadavg()[0]
    print(f"{args.songs} songs of {args.seconds:g} s, match engine, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, best of {args.rounds}, load average {load:.1f}\n")
    print("| executor | workers | wall | songs per minute | speed-up over 1 worker |")
    print("|---|---|---|---|---|")
    for executor, workers in runs:
        best, one = min(walls[(executor, workers)]), min(walls[(executor, 1)])
        print(f"| {executor} | {workers} | {best:.1f} s | {60 * args.songs / best:.1f} | {one / best:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
