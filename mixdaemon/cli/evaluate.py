"""`mixdaemon evaluate SONGS_DIR --engine E ... --out report.json`: the evaluation protocols
(mixdaemon.evaluation) on a folder of stem songs, every engine against the same material."""
from __future__ import annotations

import json

from mixdaemon import defaults
from mixdaemon.cli.progress import ProgressBar
from mixdaemon.files import atomic_write

PROTOCOL = ("The MST paper's objective evaluation (Table 2) on folders of real stems, so that every engine "
            "and every later change is judged by the same numbers.")


def cmd_evaluate(args) -> int:
    from mixdaemon.evaluation.table2 import evaluate, format_table
    with ProgressBar(enabled=not args.quiet) as bar:
        report = evaluate(args.songs_dir, args.engine or ["match", "neural"], seed=args.seed, stats_path=args.stats,
                          embedding_model=None if args.embedding_model == "none" else args.embedding_model,
                          ir_folder=args.ir_folder, backend=args.backend, progress=bar)
    with atomic_write(args.out, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    print(format_table(report))
    for spec, entry in report["engines"].items():
        for failure in entry.get("failures", []):
            print(f"{spec}: refused {failure}")
    print(f"report written to {args.out}")
    return 0


def register(subparsers) -> None:
    """`mixdaemon evaluate SONGS_DIR --engine match --engine neural --out report.json`."""
    p = subparsers.add_parser("evaluate", help="the MST paper's Table-2 protocol on a folder of stem songs",
                              description=PROTOCOL)
    p.add_argument("songs_dir", help="folder of songs, each a folder of drums/bass/other/vocals files")
    p.add_argument("--engine", action="append", default=None,
                   help="identity, match, matchering, neural, neural:NAME, param or param:NAME "
                        "(repeatable; default: match and neural)")
    p.add_argument("--out", required=True, help="report file (JSON)")
    p.add_argument("--seed", type=int, default=defaults.SEED)
    p.add_argument("--stats", help="FX-normalization statistics (default: the shipped statistics)")
    p.add_argument("--embedding-model", default=defaults.DEFAULT_MODEL,
                   help="model pair whose FXencoder measures y–ref / y–gt ('none' to skip)")
    p.add_argument("--ir-folder", help="impulse responses for the FXmanipulator's reverb")
    p.add_argument("--backend", default="torch", choices=defaults.BACKENDS,
                   help="inference backend of the neural engines (default: torch)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)
