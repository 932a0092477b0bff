"""The Table-2 evaluation (mixdaemon.evaluation, docs/ALGORITHMS.md §7) of every engine on the held-out real
songs, as reported in docs/BENCHMARKS.md and engines/MODEL_CARD.md.

  .venv/bin/python benchmarks/evaluate_engines.py --out eval.json
    = mixdaemon evaluate ../shared/data/real_stems --engine match --engine neural --engine matchering \\
        --seed 0 --out eval.json

Prints the summary table (multitrack / single stem) and the ratio L_MSS(y, gt) / L_MSS(x, gt) of
each engine beside the paper's 0.80 (multitrack, L/R, MUSDB18), then per stem name.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mixdaemon.evaluation.table2 import MULTITRACK, PAPER_RATIO, evaluate, format_table  # noqa: E402

REAL_STEMS = REPO.parent / "shared" / "data" / "real_stems"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", default=str(REAL_STEMS))
    parser.add_argument("--engines", nargs="+", default=["match", "neural", "matchering"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embedding-model", default="default")
    parser.add_argument("--out", required=True, help="JSON report")
    args = parser.parse_args()
    started = time.perf_counter()
    report = evaluate(args.songs, args.engines, seed=args.seed, embedding_model=args.embedding_model,
                      progress=lambda stage, fraction: print(f"{fraction:5.0%} {stage}", file=sys.stderr, flush=True))
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"songs: {', '.join(report['songs'])} (seed {args.seed}, {time.perf_counter() - started:.0f} s)\n")
    print(format_table(report))
    print(f"\nratio L/R (multitrack / stem); the paper's model: {PAPER_RATIO['lr']:.2f} multitrack on MUSDB18")
    for spec, entry in report["engines"].items():
        s = entry["summary"]
        per_stem = ", ".join(f"{k} {v['lr']:.3f}" for k, v in s["per_stem"].items())
        print(f"  {spec:<12} {s[MULTITRACK]['ratio_lr']:.3f} / {s['stem']['ratio_lr']:.3f}   "
              f"(L_MSS L/R per stem: {per_stem})  {entry['seconds']:.0f} s")
        for failure in entry.get("failures", []):
            print(f"    refused: {failure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
