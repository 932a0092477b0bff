"""The realistic evaluation of style transfer: the raw and unpaired protocols
(mixdaemon/evaluation/raw.py, unpaired.py) of every engine, on procedural songs rendered by the
project's own renderer together with the three real songs of ../shared/data/real_stems.

  .venv/bin/python benchmarks/evaluate_transfer.py --work-dir WORK
    = mixdaemon train material WORK/procedural_20s --songs 6 --seconds 20 --seed 1000
      WORK/songs/: links to the six rendered songs and to ../shared/data/real_stems/song_{a,b,c}
      mixdaemon evaluate WORK/songs --protocol raw --engine identity --engine rms --engine matchering \\
          --engine match --engine param --engine neural --seed 0 --seed 1 --seed 2 --out WORK/raw.json
      mixdaemon evaluate WORK/songs --protocol unpaired ... --out WORK/unpaired.json

Rendered songs are kept in WORK and reused by the next run with the same length. Prints each
protocol's Markdown table (ratios to identity: below 1 is better than doing nothing).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL_STEMS = REPO.parent / "shared" / "data" / "real_stems"
REAL_SONGS = ("song_a", "song_b", "song_c")
ENGINES = "identity,rms,matchering,match,param,neural"
MATERIAL_SEED = 1000


def _mixdaemon(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "mixdaemon", *args], cwd=REPO, check=True)


def _songs_folder(work_dir: Path, rendered: Path, songs: int) -> Path:
    """WORK/songs: links to the rendered songs and the real ones (the real stems are never copied)."""
    folder = work_dir / "songs"
    folder.mkdir(parents=True, exist_ok=True)
    for link in folder.iterdir():
        if link.is_symlink():  # the links of an earlier run, which may have had more songs
            link.unlink()
    targets = [rendered / f"song_{i:04d}" for i in range(songs)] + [(REAL_STEMS / s).resolve() for s in REAL_SONGS]
    for target in targets:
        if not target.is_dir():
            raise SystemExit(f"{target}: missing (is ../shared beside the checkout?)")
        (folder / target.name).symlink_to(target, target_is_directory=True)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", required=True, type=Path, help="rendered songs, links and reports")
    parser.add_argument("--engines", default=ENGINES, help=f"comma-separated engine specs (default: {ENGINES})")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    parser.add_argument("--songs", type=int, default=6, help="procedural songs to render (default: 6)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each rendered song (default: 20)")
    parser.add_argument("--segment-seconds", type=float, help="passed on to mixdaemon evaluate (default: its own)")
    args = parser.parse_args()
    work_dir = args.work_dir.resolve()
    rendered = work_dir / f"procedural_{args.seconds:g}s"
    _mixdaemon("train", "material", str(rendered), "--songs", str(args.songs), "--seconds", f"{args.seconds:g}",
               "--seed", str(MATERIAL_SEED), "-q")
    songs = _songs_folder(work_dir, rendered, args.songs)
    options = [a for spec in args.engines.split(",") if spec for a in ("--engine", spec)]
    options += [a for seed in args.seeds.split(",") if seed for a in ("--seed", seed)]
    if args.segment_seconds:
        options += ["--segment-seconds", f"{args.segment_seconds:g}"]
    for protocol in ("raw", "unpaired"):
        print(f"\n## {protocol} protocol: {args.songs} procedural + {len(REAL_SONGS)} real songs, "
              f"seeds {args.seeds}\n", flush=True)
        started = time.perf_counter()
        _mixdaemon("evaluate", str(songs), "--protocol", protocol, *options,
                   "--out", str(work_dir / f"{protocol}.json"), "-q")
        print(f"({time.perf_counter() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
