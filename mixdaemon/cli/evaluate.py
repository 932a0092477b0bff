"""`mixdaemon evaluate SONGS_DIR --protocol table2|raw|unpaired --engine E ... --out report.json`: the
evaluation protocols (mixdaemon.evaluation) on a folder of stem songs, every engine against the same
material."""
from __future__ import annotations

import argparse
import json

from mixdaemon import defaults
from mixdaemon.cli.progress import ProgressBar
from mixdaemon.errors import ConfigError
from mixdaemon.files import atomic_write

PROTOCOLS = ("table2", "raw", "unpaired")
DESCRIPTION = ("Every engine on the same material from a folder of stem songs, so that every engine and every "
               "later change is judged by the same numbers. Protocols: table2 (default) is the MST paper's "
               "Table 2 (FX-normalized stems, FXmanipulator targets); raw converts raw stems toward targets "
               "mixed by random pedalboard chains, scored by L_MSS against the ground truth; unpaired converts "
               "each song toward another song, scored by loudness, spectral, dynamics and width distances to the "
               "reference. Every ratio is to the identity row (y = x).")
TABLE2_ONLY = ("embedding_model", "ir_folder")


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"expected a length in seconds above 0, got {text!r}")
    return seconds


def cmd_evaluate(args) -> int:
    from mixdaemon.evaluation import raw, table2, unpaired
    from mixdaemon.evaluation.songs import SEGMENT_SECONDS
    protocol = {"table2": table2, "raw": raw, "unpaired": unpaired}[args.protocol]
    seeds = args.seed or [defaults.SEED]
    engines = args.engine or ["match", "neural"]
    if args.protocol == "table2":
        if len(seeds) > 1:
            raise ConfigError("--seed: the table2 protocol takes one seed")
        if args.segment_seconds is not None:
            raise ConfigError("--segment-seconds: only the raw and unpaired protocols cut segments")
        embedding_model = args.embedding_model or defaults.DEFAULT_MODEL
        with ProgressBar(enabled=not args.quiet) as bar:
            report = table2.evaluate(args.songs_dir, engines, seed=seeds[0], stats_path=args.stats,
                                     embedding_model=None if embedding_model == "none" else embedding_model,
                                     ir_folder=args.ir_folder, backend=args.backend, progress=bar)
    else:
        for option in TABLE2_ONLY:
            if getattr(args, option) is not None:
                raise ConfigError(f"--{option.replace('_', '-')}: only the table2 protocol uses it")
        evaluate = raw.evaluate_raw if args.protocol == "raw" else unpaired.evaluate_unpaired
        with ProgressBar(enabled=not args.quiet) as bar:
            report = evaluate(args.songs_dir, engines, seeds, args.segment_seconds or SEGMENT_SECONDS,
                              stats_path=args.stats, backend=args.backend, progress=bar)
    with atomic_write(args.out, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    print(protocol.format_table(report))
    for spec, entry in report["engines"].items():
        for failure in entry.get("failures", []):
            print(f"{spec}: refused {failure}" if args.protocol == "table2" else f"{spec}: {failure}")
    print(f"report written to {args.out}")
    return 0


def register(subparsers) -> None:
    """`mixdaemon evaluate SONGS_DIR --protocol raw --engine match --engine neural --out report.json`."""
    p = subparsers.add_parser("evaluate", help="evaluation protocols (table2, raw, unpaired) on a folder of stem songs",
                              description=DESCRIPTION)
    p.add_argument("songs_dir", help="folder of songs, each a folder of drums/bass/other/vocals files")
    p.add_argument("--out", required=True, help="report file (JSON)")
    p.add_argument("--protocol", default="table2", choices=PROTOCOLS, help="default: table2")
    p.add_argument("--engine", action="append", default=None,
                   help="identity, rms, matchering, match, neural, neural:NAME, param or param:NAME "
                        "(repeatable; default: match and neural; identity is always evaluated)")
    p.add_argument("--seed", type=int, action="append", default=None,
                   help=f"repeatable for raw and unpaired: every seed is another draw (default: {defaults.SEED})")
    p.add_argument("--segment-seconds", type=_positive_seconds, default=None,
                   help=f"raw and unpaired: segment length in seconds (default: {defaults.EVALUATION_SEGMENT_SECONDS:g})")
    p.add_argument("--stats", help="FX-normalization statistics of the table2 material and of the neural engines "
                                   "(default: the shipped statistics)")
    p.add_argument("--embedding-model", default=None,
                   help=f"table2: model pair whose FXencoder measures y–ref / y–gt (default: the pair "
                        f"{defaults.DEFAULT_MODEL!r}; 'none' to skip)")
    p.add_argument("--ir-folder", help="table2: impulse responses for the FXmanipulator's reverb")
    p.add_argument("--backend", default="torch", choices=defaults.BACKENDS,
                   help="inference backend of the neural engines (default: torch)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)
