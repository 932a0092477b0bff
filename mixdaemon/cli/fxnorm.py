"""`mixdaemon fxnorm fit | apply`: FX-normalization statistics and normalized stems
(mixing.normalization)."""
from __future__ import annotations

from mixdaemon import defaults
from mixdaemon.cli.progress import ProgressBar


def cmd_fxnorm_fit(args) -> int:
    from mixdaemon.mixing.normalization import fit_statistics
    fit_statistics(args.songs_dir, args.out, flavour=args.flavour)
    print(f"statistics of {args.songs_dir} ({args.flavour}) written to {args.out}")
    return 0


def cmd_fxnorm_apply(args) -> int:
    from mixdaemon.mixing.normalization import normalize_folder
    with ProgressBar(enabled=not args.quiet) as bar:
        written = normalize_folder(args.stems, args.out, stats=args.stats, order=args.order, seed=args.seed,
                                   ir_folder=args.ir_folder, subtype=args.subtype, overwrite=args.overwrite,
                                   progress=bar)
    for path, subtype in written:
        print(f"{path} ({subtype})")
    return 0


def register(sub) -> None:
    fx = sub.add_parser("fxnorm", help="FX normalization: fit statistics, normalize stems")
    fxsub = fx.add_subparsers(dest="fxnorm_command", required=True)
    p = fxsub.add_parser("fit", help="compute statistics from SONGS_DIR/<song>/{drums,bass,other,vocals}.wav")
    p.add_argument("songs_dir")
    p.add_argument("--out", required=True)
    p.add_argument("--flavour", default="mst", choices=["mst", "fxnorm"])
    p.set_defaults(func=cmd_fxnorm_fit)
    p = fxsub.add_parser("apply", help="normalize a folder of stems")
    p.add_argument("stems")
    p.add_argument("--out", required=True)
    p.add_argument("--stats", help="statistics file (.npz of this project, or the papers' .npy)")
    p.add_argument("--order", default="mst_inference",
                   help="mst_inference (default), mst_training, or fxnorm (needs fxnorm statistics)")
    p.add_argument("--seed", type=int, default=defaults.SEED)
    p.add_argument("--ir-folder", help="impulse responses (WAV/FLAC): first add FxNorm's reverb normalization "
                                       "(§1.7) to vocals and other, as automix training does")
    p.add_argument("--subtype", help="output sample format (default: PCM_24, or FLOAT when a stem exceeds full scale)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_fxnorm_apply)
