"""`mixdaemon automix`: mix a song's stems automatically (mixing.automix.automix)."""
from __future__ import annotations

from mixdaemon import defaults
from mixdaemon.cli.progress import ProgressBar


def cmd_automix(args) -> int:
    from mixdaemon.mixing.automix import MIX_NAME, automix
    from mixdaemon.mixing.settings import AutomixSettings, validated
    settings = validated(AutomixSettings, {"model": args.model, "stats": args.stats, "ir_folder": args.ir_folder,
                                           "loudness": args.loudness})
    with ProgressBar(enabled=not args.quiet) as bar:
        result = automix(args.stems if len(args.stems) > 1 else args.stems[0], args.out, settings, progress=bar,
                         overwrite=args.overwrite)
    print(f"mixed {result.seconds_audio:.1f} s of audio with {result.model['name']} in "
          f"{sum(result.timings.values()):.1f} s: {result.loudness_after[MIX_NAME]:.1f} LUFS, "
          f"true peak {result.true_peak_dbtp:.2f} dBTP  {result.outputs[MIX_NAME]}")
    return 0


def register(subparsers) -> None:
    """`mixdaemon automix STEMS --out mix.wav [--model NAME|PATH] [--stats FILE] [--loudness stems|model|LUFS]
    [--overwrite] [-q]`."""
    p = subparsers.add_parser("automix", help="mix a song's stems automatically (FxNorm-automix)",
                              description="FX-normalize the four stems and mix them with an automix model "
                                          "into one stereo file at the loudness of the stems' plain sum, "
                                          "limited to -1 dBTP.")
    p.add_argument("stems", nargs="+", help="a folder of stems, or the stem files (named by role: drums, bass, "
                                            "vocals, anything else is other)")
    p.add_argument("--out", required=True, help="the mix to write, e.g. mix.wav")
    p.add_argument("--model", default=defaults.DEFAULT_AUTOMIX_MODEL,
                   help=f"automix model: a name in the model store or a model file (default: {defaults.DEFAULT_AUTOMIX_MODEL})")
    p.add_argument("--stats", help="FX-normalization statistics the model was trained with "
                                   "(default: the shipped FxNorm statistics)")
    p.add_argument("--ir-folder", help="impulse responses for reverb normalization of vocals and other "
                                       "(§1.7; use the folder the model was trained with)")
    p.add_argument("--loudness", default=defaults.AUTOMIX_LOUDNESS,
                   help="the mix's integrated loudness: 'stems' (that of the stems' plain sum, the default), "
                        "'model' (the level the network mixes at), or a LUFS value such as -14")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_automix)
