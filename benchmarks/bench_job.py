"""End-to-end job figures as users wait for them: `mixdaemon transfer` (read → convert → limit →
write, in a fresh process: imports included) per engine and song length, with Matchering run on
the same four stems one by one in the same run as the anchor.

Songs: ../shared's song_a stems (input) looped to each length, toward song_b's stems (reference)
looped to --reference-minutes (3: a song, whatever the session's length), written as 24-bit WAV
under --work-dir. Matchering refuses tracks over 15 minutes (its max_length), so it runs only
on songs up to that. Per job: wall time, CPU time (user + system) and peak RSS of
the job's process (os.wait4), and the real-time factor (audio seconds / wall seconds).

    python benchmarks/bench_job.py --work-dir WORK [--minutes 1,3,10,60] [--engines match,param]

Prints a Markdown table (the one in docs/BENCHMARKS.md) and writes it as JSON to
WORK_DIR/bench_job.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
REAL_STEMS = REPO.parent / "shared" / "data" / "real_stems"
STEMS = ("drums", "bass", "other", "vocals")
MIXDAEMON = [sys.executable, "-m", "mixdaemon"]
MATCHERING_MAX_MINUTES = 15  # matchering.Config().max_length
MATCHERING_STEM_BY_STEM = """
import sys, matchering
src, ref, out = sys.argv[1:4]
for stem in ("drums", "bass", "other", "vocals"):
    matchering.process(target=f"{src}/{stem}.wav", reference=f"{ref}/{stem}.wav",
                       results=[matchering.pcm24(f"{out}/{stem}.wav")])
"""


def looped_song(song: str, seconds: float, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for stem in STEMS:
        target = out / f"{stem}.wav"
        if target.exists():
            continue
        x, sr = sf.read(REAL_STEMS / song / f"{stem}.wav", dtype="float32", always_2d=True)
        n = int(seconds * sr)
        sf.write(target, np.tile(x, (n // len(x) + 1, 1))[:n], sr, subtype="PCM_24")
    return out


def timed(command: list[str]) -> dict:
    """Run a command; its wall time, CPU time and peak RSS (of that process, from wait4)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    stderr = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr[-2000:]}")
    return {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024.0, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", required=True, type=Path)
    parser.add_argument("--minutes", default="1,3", help="song lengths, comma-separated")
    parser.add_argument("--engines", default="match,param", help="mixdaemon engines, comma-separated")
    parser.add_argument("--reference-minutes", type=float, default=3.0, help="length of the reference song")
    parser.add_argument("--no-matchering", action="store_true", help="skip the Matchering anchor")
    args = parser.parse_args()

    rows = []
    for minutes in [float(m) for m in args.minutes.split(",")]:
        seconds = minutes * 60.0
        songs = args.work_dir / f"{minutes:g}min"
        source = looped_song("song_a", seconds, songs / "input")
        reference = looped_song("song_b", args.reference_minutes * 60.0,
                                args.work_dir / f"reference-{args.reference_minutes:g}min")
        for engine in args.engines.split(","):
            out = songs / f"out-{engine}"
            figures = timed([*MIXDAEMON, "transfer", str(source), "--reference", str(reference), "--out", str(out),
                             "--engine", engine, "--overwrite", "-q"])
            rows.append({"job": f"mixdaemon transfer --engine {engine}", "minutes": minutes, **figures})
        if not args.no_matchering and minutes <= MATCHERING_MAX_MINUTES:
            out = songs / "out-matchering"
            out.mkdir(exist_ok=True)
            figures = timed([sys.executable, "-c", MATCHERING_STEM_BY_STEM, str(source), str(reference), str(out)])
            rows.append({"job": "Matchering 2, 4 stems one by one (anchor)", "minutes": minutes, **figures})
        for row in rows:
            if row["minutes"] == minutes:
                row["realtime_x"] = round(seconds / row["wall_s"], 1)

    print("| job | song | wall | CPU | real-time factor | peak RSS |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['job']} | {r['minutes']:g} min | {r['wall_s']:.1f} s | {r['cpu_s']:.1f} s "
              f"| {r['realtime_x']:.1f}x | {r['peak_rss_mb'] / 1024:.2f} GB |")
    (args.work_dir / "bench_job.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
