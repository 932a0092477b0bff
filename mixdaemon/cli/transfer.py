"""`mixdaemon transfer`, `mixdaemon demo`, `mixdaemon example`: one style-transfer job from the
command line (mixing.transfer.transfer), and the offline example the README's main job runs."""
from __future__ import annotations

from pathlib import Path

from mixdaemon import defaults
from mixdaemon.cli.progress import ProgressBar
from mixdaemon.errors import ConfigError


def add_transfer_options(p) -> None:
    """The job settings (mixing.settings.TransferSettings) as options; shared with `demo`."""
    p.add_argument("--engine", default=defaults.ENGINE, choices=defaults.ENGINES,
                   help="match (the default, the closest to the reference on unseen material: 0.37 of the "
                        "input's distance per stem, Matchering 0.50): measured EQ, dynamics, reverb, width and "
                        "level per stem, no model; param (0.37): an FX chain per stem you can read and tweak, "
                        "written to fx_params.json; neural (0.51): the FXencoder + MixFXcloner research model, "
                        "landed on the reference stems by the match engine's steps (docs/BENCHMARKS.md)")
    p.add_argument("--model", help="neural: model pair name in the model store, or a model file; "
                                   f"param: parameter predictor (default: {defaults.DEFAULT_PREDICTOR})")
    p.add_argument("--backend", default=defaults.BACKEND, choices=defaults.BACKENDS)
    p.add_argument("--chunk-seconds", type=float, default=defaults.CHUNK_SECONDS,
                   help="neural: seconds of audio per MixFXcloner call (default %(default)s; memory grows with it, "
                        "speed does not)")
    p.add_argument("--batch-size", type=int, default=defaults.BATCH_SIZE, help="neural: chunks converted together")
    p.add_argument("--refine-steps", type=int, default=defaults.REFINE_STEPS, metavar="N",
                   help="neural: gradient steps that move each reference embedding so that the converted stem "
                        f"measures like the reference stem (0 = the encoder's embedding; default {defaults.REFINE_STEPS})")
    p.add_argument("--precision", default=defaults.PRECISION, choices=defaults.INFERENCE_PRECISIONS,
                   help="neural: what the MixFXcloner computes in on the CPU; auto picks bf16 where it is measured "
                        "to win (a full-width cloner on a CPU with native bf16), else fp32 (docs/BENCHMARKS.md); "
                        "bf16 needs a CPU with native bf16")
    p.add_argument("--stats", help="FX-normalization statistics file (default: the shipped statistics)")
    p.add_argument("--separation-model", default=defaults.SEPARATION_MODEL, help="demucs model for mixtures")
    p.add_argument("--separation-dir", help="local folder of demucs models (offline use)")
    p.add_argument("--ceiling", type=float, default=defaults.CEILING_DBTP, help="true-peak ceiling of the outputs, dBTP")
    p.add_argument("--seed", type=int, default=defaults.SEED)
    p.add_argument("--amount", default=defaults.AMOUNT, metavar="A",
                   help="how far to move toward the reference: 0 returns the input, 1 (the default) goes all "
                        "the way, 0.5 halfway")
    p.add_argument("--stem-amount", action="append", default=[], metavar="STEM=A",
                   help="the amount for one stem, over --amount (repeatable): --stem-amount vocals=0.3")
    p.add_argument("--match", default=",".join(defaults.ASPECTS), metavar="ASPECTS",
                   help=f"what moves toward the reference, comma-separated, of {', '.join(defaults.ASPECTS)} "
                        "(default: all); e.g. --match level,eq leaves dynamics, width and space alone (the neural "
                        "engine: only those aspects of its landed output are taken)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier outputs in --out")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def aspect_list(text: str) -> list[str]:
    """--match level,eq → ["level", "eq"]."""
    return [a.strip() for a in text.split(",") if a.strip()]


def stem_amounts(pairs: list[str]) -> dict[str, str]:
    """--stem-amount vocals=0.3 ... → {"vocals": "0.3"}; the values are checked with the settings."""
    out = {}
    for pair in pairs:
        stem, sep, amount = pair.partition("=")
        if not sep or not stem.strip() or not amount.strip():
            raise ConfigError(f"--stem-amount {pair!r}: give STEM=AMOUNT, e.g. vocals=0.3")
        out[stem.strip()] = amount.strip()
    return out


def settings_from_args(args):
    """The options as TransferSettings, checked as config.toml's [transfer] is: a wrong value is a
    one-line error naming it."""
    from mixdaemon.mixing.settings import TransferSettings, validated
    return validated(TransferSettings, dict(
        engine=args.engine, model=args.model, backend=args.backend, chunk_seconds=args.chunk_seconds,
        batch_size=args.batch_size, refine_steps=args.refine_steps, stats=args.stats, separation_model=args.separation_model,
        separation_dir=args.separation_dir, ceiling_dbtp=args.ceiling, seed=args.seed, amount=args.amount,
        stem_amount=stem_amounts(args.stem_amount), match=aspect_list(args.match), precision=args.precision))


def run_transfer(args, input_path, reference_path, out_dir) -> int:
    from mixdaemon.mixing.transfer import transfer
    with ProgressBar(enabled=not args.quiet) as bar:
        result = transfer(input_path, reference_path, out_dir, settings_from_args(args), progress=bar,
                          overwrite=args.overwrite, reference_b_path=getattr(args, "reference_b", None))
    print(f"converted {result.seconds_audio:.1f} s of audio with the {result.engine} engine "
          f"in {sum(result.timings.values()):.1f} s; mix true peak {result.true_peak_dbtp:.2f} dBTP")
    for name, path in result.outputs.items():
        print(f"  {name:<8} {result.loudness_before.get(name, float('nan')):7.1f} → "
              f"{result.loudness_after[name]:7.1f} LUFS  {path}")
    if result.fx_params:
        print(f"  FX settings per stem: {result.fx_params}")
    return 0


def cmd_transfer(args) -> int:
    return run_transfer(args, args.input, args.reference, args.out)


def cmd_demo(args) -> int:
    from mixdaemon.audio.examples import make_example
    out = Path(args.out)
    input_dir, reference_dir = make_example(out / "example", seconds=args.seconds)
    print(f"example stems written to {input_dir} and {reference_dir}")
    return run_transfer(args, input_dir, reference_dir, out / "converted")


def cmd_example(args) -> int:
    from mixdaemon.audio.examples import make_example
    input_dir, reference_dir = make_example(args.out, seconds=args.seconds)
    print(f"input stems: {input_dir}\nreference stems: {reference_dir}")
    return 0


def register(sub) -> None:
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
