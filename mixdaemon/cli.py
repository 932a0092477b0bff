"""The `mixdaemon` command line: argument parsing and printing only; the work is in the API modules.

Every user-facing failure is a MixdaemonError: it is printed as one line `mixdaemon: error: ...`
and the exit status is 2. Long work shows a progress bar on stderr.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

import numpy as np

from .errors import MixdaemonError

log = logging.getLogger("mixdaemon")


class ProgressBar:
    """A tqdm bar over 0–100 % whose label follows the job's stage (quiet when stderr is no TTY)."""

    def __init__(self, enabled: bool = True):
        from tqdm import tqdm
        self._bar = tqdm(total=100, unit="%", disable=not enabled, file=sys.stderr,
                         bar_format="{desc:<24} {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")

    def __call__(self, stage: str, fraction: float) -> None:
        self._bar.set_description_str(stage[:24])
        self._bar.update(max(0.0, 100.0 * fraction - self._bar.n))

    def close(self) -> None:
        self._bar.close()


def _settings_from_args(args):
    from .transfer import TransferSettings
    return TransferSettings(engine=args.engine, model=args.model, backend=args.backend,
                            chunk_seconds=args.chunk_seconds, batch_size=args.batch_size, stats=args.stats,
                            separation_model=args.separation_model, separation_dir=args.separation_dir,
                            ceiling_dbtp=args.ceiling, seed=args.seed)


def _run_transfer(args, input_path, reference_path, out_dir) -> int:
    from .transfer import transfer
    bar = ProgressBar(enabled=not args.quiet)
    try:
        result = transfer(input_path, reference_path, out_dir, _settings_from_args(args), progress=bar,
                          overwrite=args.overwrite, reference_b_path=getattr(args, "reference_b", None))
    finally:
        bar.close()
    print(f"converted {result.seconds_audio:.1f} s of audio with the {result.engine} engine "
          f"in {sum(result.timings.values()):.1f} s; mix true peak {result.true_peak_dbtp:.2f} dBTP")
    for name, path in result.outputs.items():
        print(f"  {name:<8} {result.loudness_before.get(name, float('nan')):7.1f} → "
              f"{result.loudness_after[name]:7.1f} LUFS  {path}")
    if result.fx_params:
        print(f"  FX settings per stem: {result.fx_params}")
    return 0


def cmd_transfer(args) -> int:
    return _run_transfer(args, args.input, args.reference, args.out)


def cmd_demo(args) -> int:
    from .examples import make_example
    out = Path(args.out)
    input_dir, reference_dir = make_example(out / "example", seconds=args.seconds)
    print(f"example stems written to {input_dir} and {reference_dir}")
    return _run_transfer(args, input_dir, reference_dir, out / "converted")


def cmd_example(args) -> int:
    from .examples import make_example
    input_dir, reference_dir = make_example(args.out, seconds=args.seconds)
    print(f"input stems: {input_dir}\nreference stems: {reference_dir}")
    return 0


def cmd_fxnorm_fit(args) -> int:
    from .fxnorm_stats import fit
    stats = fit(args.songs_dir, flavour=args.flavour)
    stats.save(args.out)
    print(f"statistics of {args.songs_dir} ({args.flavour}) written to {args.out}")
    return 0


def cmd_fxnorm_apply(args) -> int:
    from .audio import write_audio
    from .fxnorm import ORDER_FLAVOUR, ORDERS, ReverbNormalization, add_reverb, default_stats_path, normalize_stems
    from .fxnorm_stats import FxStats
    from .stems import load_song
    from .transfer import check_output_folder
    song = load_song(args.stems)
    if song.mixture is not None:
        raise MixdaemonError(f"{args.stems}: FX normalization works on stems; give a folder of "
                             "drums/bass/other/vocals files")
    if args.order not in ORDERS:
        raise MixdaemonError(f"--order {args.order}: choose one of {', '.join(ORDERS)}")
    stats = FxStats.load(args.stats or default_stats_path(ORDER_FLAVOUR[args.order]))
    reverb = ReverbNormalization(args.ir_folder) if args.ir_folder else None
    out = Path(args.out)
    check_output_folder(out, song.input_files, args.overwrite)
    bar = ProgressBar(enabled=not args.quiet)
    try:
        normalized = normalize_stems(add_reverb(song.stems, reverb, args.seed), stats, order=args.order, seed=args.seed,
                                     progress=lambda done, total, label: bar(label, done / max(total, 1)))
    finally:
        bar.close()
    for name, samples in normalized.items():
        # The final loudness step hits its target exactly, which can push a very peaky stem past
        # full scale; such a stem is written as 32-bit float so nothing is clipped.
        subtype = args.subtype or ("FLOAT" if np.max(np.abs(samples)) > 1.0 else "PCM_24")
        path = write_audio(out / f"{name}.wav", samples, out_rate=song.output_rate, subtype=subtype,
                           protected=song.input_files)
        print(f"{path} ({subtype})")
    return 0


def cmd_embed(args) -> int:
    """The MST feature-extraction tool: one FXencoder embedding per file, stacked in one .npy."""
    from .audio import read_audio
    from .inference import embed_reference
    from .modelfiles import load_pair
    from .neural import DEFAULT_MODEL
    encoder, _, info = load_pair(args.model or DEFAULT_MODEL)
    embeddings = np.stack([embed_reference(encoder, read_audio(f).samples, name=f) for f in args.files])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, embeddings)
    print(f"{len(args.files)} embeddings of size {embeddings.shape[1]} (model {info.name}) written to {out}")
    return 0


def cmd_models_import(args) -> int:
    from .modelfiles import import_authors_checkpoints
    paths = import_authors_checkpoints(args.encoder, args.cloner, store=args.store, name=args.name)
    print(f"imported model pair '{args.name}':")
    for p in (paths if isinstance(paths, (list, tuple)) else [paths]):
        print(f"  {p}")
    return 0


_MODEL_KINDS = {"mixdaemon-mst-pair": "MST pair (--engine neural)", "mixdaemon-automix": "automix model (automix)",
                "mixdaemon-param-predictor": "parameter predictor (--engine param)"}


def cmd_models_list(args) -> int:
    from .modelfiles import list_models, store_dir
    models = list_models(args.store)
    print(f"engine store: {store_dir(args.store)}")
    if not models:
        print("no models in the engine store")
    for name, fmt, metadata in models:
        print(f"  {name:<24} {_MODEL_KINDS.get(fmt, fmt):<40} created {metadata.get('created', '?')}")
    return 0


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixdaemon", description="Mixing style transfer and automatic mixing "
                                     "for DAW users: convert stems to a reference song's mixing style.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_transfer_options(p):
        p.add_argument("--engine", default="match", choices=["match", "neural", "param"],
                       help="match: measured-feature matching (fast, no model); neural: FXencoder + MixFXcloner; "
                            "param: an interpretable FX chain per stem, its settings written to fx_params.json")
        p.add_argument("--model", help="neural: model pair name in the engine store, or a model file; "
                                       "param: parameter predictor (default: params-default)")
        p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime", "tensorrt"])
        p.add_argument("--chunk-seconds", type=float, default=12.0, help="neural: audio per conversion chunk")
        p.add_argument("--batch-size", type=int, default=1, help="neural: chunks converted together")
        p.add_argument("--stats", help="FX-normalization statistics file (default: the shipped statistics)")
        p.add_argument("--separation-model", default="htdemucs", help="demucs model for mixtures")
        p.add_argument("--separation-dir", help="local folder of demucs models (offline use)")
        p.add_argument("--ceiling", type=float, default=-1.0, help="true-peak ceiling of the outputs, dBTP")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--overwrite", action="store_true", help="replace earlier outputs in --out")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("transfer", help="convert stems (or a mix) to a reference's mixing style")
    p.add_argument("input", help="folder of stems, or a mixture file")
    p.add_argument("--reference", required=True, help="folder of reference stems, or a reference mixture")
    p.add_argument("--reference-b", help="a second reference: the style fades from --reference to this one "
                                           "over the song (neural engine)")
    p.add_argument("--out", required=True, help="output folder (stems + mixture.wav)")
    add_transfer_options(p)
    p.set_defaults(func=cmd_transfer)

    p = sub.add_parser("demo", help="make example audio with the project's own synthesis and convert it")
    p.add_argument("--out", default="demo-output", help="folder for the example and the result")
    p.add_argument("--seconds", type=float, default=20.0)
    add_transfer_options(p)
    p.set_defaults(func=cmd_demo, overwrite=True)

    p = sub.add_parser("example", help="write example input and reference stems")
    p.add_argument("--out", default="example")
    p.add_argument("--seconds", type=float, default=20.0)
    p.set_defaults(func=cmd_example)

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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ir-folder", help="impulse responses (WAV/FLAC): first add FxNorm's reverb normalization "
                                       "(§1.7) to vocals and other, as automix training does")
    p.add_argument("--subtype", help="output sample format (default: PCM_24, or FLOAT when a stem exceeds full scale)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_fxnorm_apply)

    p = sub.add_parser("embed", help="FXencoder embedding of each file (mean over its non-silent segments)")
    p.add_argument("files", nargs="+", help="audio files (mixes or stems)")
    p.add_argument("--out", required=True, help=".npy file: one row per input file, in order")
    p.add_argument("--model", help="model pair name in the engine store, or a model file (default: default)")
    p.set_defaults(func=cmd_embed)

    models = sub.add_parser("models", help="model files in the engine store")
    msub = models.add_subparsers(dest="models_command", required=True)
    p = msub.add_parser("import", help="import the authors' FXencoder_ps.pt and MixFXcloner_ps.pt")
    p.add_argument("--encoder", required=True)
    p.add_argument("--cloner", required=True)
    p.add_argument("--name", default="mst-official")
    p.add_argument("--store", help="engine store folder (default: engines/ or $MIXDAEMON_ENGINES)")
    p.set_defaults(func=cmd_models_import)
    p = msub.add_parser("list", help="list the models in the engine store")
    p.add_argument("--store")
    p.set_defaults(func=cmd_models_list)

    # Commands whose modules are heavy to import (torch, the daemon's stack) register their own
    # parsers; only the one being run is imported, so `mixdaemon send` starts in a fraction of a
    # second. --help (no command yet) lists them all.
    command = next((a for a in (argv or []) if not a.startswith("-")), None)
    for name, (module, function) in _MODULE_COMMANDS.items():
        if command is None or command == name or command not in _BUILTIN_COMMANDS | _MODULE_COMMANDS.keys():
            getattr(importlib.import_module(f".{module}", __package__), function)(sub)
    return parser


_BUILTIN_COMMANDS = {"transfer", "demo", "example", "fxnorm", "models", "embed"}
_MODULE_COMMANDS = {
    "serve": ("daemon", "add_serve_parser"),
    "send": ("osc", "add_send_parser"),
    "engines": ("backends", "add_engines_parser"),
    "train": ("train.commands", "add_train_parser"),
    "evaluate": ("evaluation", "add_evaluate_parser"),
    "automix": ("automix", "add_automix_parser"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except MixdaemonError as exc:
        print(f"mixdaemon: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mixdaemon: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
