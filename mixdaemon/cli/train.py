"""`mixdaemon train material | encoder | cloner | export | automix | params`: the command line of
training (the runs themselves: mixdaemon.train.runs, train.params).

    mixdaemon train material MATERIAL --songs 64 --seconds 30 --seed 0
    mixdaemon train encoder MATERIAL --run-dir runs/encoder --steps 600
    mixdaemon train cloner MATERIAL --encoder runs/encoder --run-dir runs/cloner --steps 600 --name default
    mixdaemon train params MATERIAL --val-dir VAL --run-dir runs/params --name params-default
    mixdaemon train automix MATERIAL --run-dir runs/automix --steps 700 --name automix-default

Every run keeps runs/<name>/checkpoint.pt and runs/<name>/log.csv; `--resume` continues a run exactly.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from mixdaemon import defaults
from mixdaemon.cli.models import STORE_HELP
from mixdaemon.cli.progress import ProgressBar

# `mixdaemon --help` builds every command's parser, so torch and the training modules are imported
# by the functions that use them.

RENDERERS = ("auto", "fluidsynth", "numpy")  # mixdaemon.train.material.RENDERERS
SIZES = ("tiny", "small", "full")            # the presets of train.encoder, train.cloner and nets.automix
AUTOMIX_ARCHITECTURES = ("automix", "wave-u-net")  # mixdaemon.nets.automix.ARCHITECTURES
MANIPULATOR_IR_FOLDER_HELP = "impulse responses for the FXmanipulator's reverb (default: algorithmic)"


def _model_config(preset: str, presets: dict, override: str | None) -> dict:
    from mixdaemon.errors import ConfigError
    base = presets[preset].to_dict() if hasattr(presets[preset], "to_dict") else dict(presets[preset])
    if not override:
        return base
    text = Path(override).read_text() if Path(override).is_file() else override
    try:
        extra = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--model-config: not JSON or a JSON file ({exc})") from None
    if not isinstance(extra, dict):
        raise ConfigError("--model-config: expected a JSON object of model config keys")
    return {**base, **extra}


def _loop(args, bar: ProgressBar):
    from mixdaemon.train.loop import LoopSettings
    return LoopSettings(run_dir=Path(args.run_dir), validate_every=args.validate_every,
                        checkpoint_every=args.checkpoint_every, workers=args.workers, resume=args.resume,
                        stop_after=args.stop_after, progress=bar)


def _training_bar(args) -> ProgressBar:
    """The run's progress bar; the run's log (validation results) is written above it unless --quiet."""
    bar = ProgressBar(enabled=not args.quiet)
    if not args.quiet:
        logger = logging.getLogger("mixdaemon.train")
        logger.setLevel(logging.INFO)
        logger.addHandler(bar.log_handler())
        logger.propagate = False
    return bar


def _common(args) -> dict:
    return {"val_dir": args.val_dir, "cache_dir": args.cache_dir, "stats": args.stats, "device": args.device,
            "threads": args.threads}


def _given(**values) -> dict:
    """The options given on the command line; the rest keep the training config's defaults."""
    return {k: v for k, v in values.items() if v is not None}


def cmd_material(args) -> int:
    from mixdaemon.train.material import make_material
    with ProgressBar(enabled=not args.quiet) as bar:
        folders = make_material(args.out, args.songs, args.seconds, args.seed, args.renderer, args.first,
                                progress=bar)
    print(f"{len(folders)} songs in {args.out}")
    return 0


def cmd_encoder(args) -> int:
    from mixdaemon.train.encoder import ENCODER_PRESETS, EncoderTrainingConfig
    from mixdaemon.train.runs import train_encoder
    cfg = EncoderTrainingConfig(**_given(
        model=_model_config(args.size, ENCODER_PRESETS, args.model_config), steps=args.steps, items=args.items,
        segment=args.segment, strong_negatives=args.negatives, temperature=args.temperature, lr=args.lr,
        lr_final_fraction=args.lr_final, mixture=not args.no_mixture, schedule=not args.no_schedule,
        validation_items=args.validation_items, precision=args.precision, seed=args.seed))
    with _training_bar(args) as bar:
        path = train_encoder(cfg, args.songs_dir, _loop(args, bar), ir_folder=args.ir_folder, **_common(args))
    print(f"encoder checkpoint: {path}")
    return 0


def _destination(args, run_dir: Path, default_name: str = "model.safetensors") -> Path:
    from mixdaemon.train.runs import store_path
    if args.name:
        return store_path(args.name, args.store)
    return Path(args.out) if args.out else run_dir / default_name


def _run_or_pair(given: str) -> str:
    """A path as an absolute path (a resumed run may start elsewhere), a store name as it is."""
    return str(Path(given).resolve()) if Path(given).exists() else given


def cmd_cloner(args) -> int:
    from mixdaemon.train.cloner import CLONER_PRESETS, ClonerTrainingConfig
    from mixdaemon.train.runs import train_cloner
    cfg = ClonerTrainingConfig(**_given(
        encoder=_run_or_pair(args.encoder), init=_run_or_pair(args.init) if args.init else None,
        model=_model_config(args.size, CLONER_PRESETS, args.model_config),
        steps=args.steps, items_per_stem=args.items, segment=args.segment, lr=args.lr, lr_final_fraction=args.lr_final,
        identity_init=False if args.no_identity_init else None, validation_items=args.validation_items,
        precision=args.precision, seed=args.seed, fx_family=args.fx_family))
    with _training_bar(args) as bar:
        path = train_cloner(cfg, args.songs_dir, _loop(args, bar), out=_destination(args, Path(args.run_dir)),
                            ir_folder=args.ir_folder, **_common(args))
    print(f"{'model pair' if path.suffix == '.safetensors' else 'cloner checkpoint'}: {path}")
    return 0


def cmd_automix(args) -> int:
    from mixdaemon.train.automix import AutomixTrainingConfig, model_presets
    from mixdaemon.train.runs import train_automix
    presets = model_presets(args.architecture)
    cfg = AutomixTrainingConfig(**_given(
        architecture=args.architecture, model=_model_config(args.size, presets, args.model_config), loss=args.loss,
        steps=args.steps, batch=args.batch, segment=args.segment, lr=args.lr, lr_final_fraction=args.lr_final,
        validation_items=args.validation_items, precision=args.precision, seed=args.seed,
        ir_folder=str(Path(args.ir_folder).resolve()) if args.ir_folder else None))
    with _training_bar(args) as bar:
        path = train_automix(cfg, args.songs_dir, _loop(args, bar), out=_destination(args, Path(args.run_dir)),
                             **_common(args))
    print(f"{'automix model' if path.suffix == '.safetensors' else 'automix checkpoint'}: {path}")
    return 0


def cmd_export(args) -> int:
    from mixdaemon.train.cloner import export_pair
    info = export_pair(args.run_dir, _destination(args, Path(args.run_dir)))
    print(f"model pair '{info.name}': {info.path}")
    return 0


def cmd_params(args) -> int:
    from mixdaemon.progress import span
    from mixdaemon.train.loop import configure_torch
    from mixdaemon.train.params import ParamsTrainingConfig, train_params
    from mixdaemon.train.runs import PREPARING, training_libraries
    hidden = [int(h) for h in args.hidden.split(",")] if args.hidden else None
    cfg = ParamsTrainingConfig(**_given(examples=args.examples, validation_examples=args.validation_examples,
                                        segment_seconds=args.segment_seconds, hidden=hidden, epochs=args.epochs,
                                        lr=args.lr, fx_probability=args.fx_probability,
                                        same_song_probability=args.same_song_probability, seed=args.seed))
    configure_torch(cfg.seed, args.threads)
    run_dir = Path(args.run_dir)
    with _training_bar(args) as bar:
        train, validation = training_libraries(args.songs_dir, args.val_dir, args.cache_dir, args.stats, cfg.seed,
                                               span(bar, 0.0, PREPARING))
        path, metrics = train_params(cfg, train, validation, run_dir, _destination(args, run_dir, "predictor.safetensors"),
                                     ir_folder=args.ir_folder, progress=span(bar, PREPARING, 1.0 - PREPARING))
    print(", ".join(f"{k} {v}" for k, v in metrics.items()))
    print(f"parameter predictor: {path}")
    return 0


def _training_parser(sub, name: str, help: str, config: str, *, description: str = "",
                     ir_folder_help: str = MANIPULATOR_IR_FOLDER_HELP, resumable: bool = True,
                     run_dir_holds: str = "checkpoint.pt and log.csv"):
    """The parser of `train NAME` with what every training shares: the songs, the run folder and
    impulse responses, plus the options of a resumable run. Its description ends by saying that
    unset options keep the defaults of `config` (the training config class)."""
    p = sub.add_parser(name, help=help, description=f"{description}Unset options keep the defaults of {config}.")
    p.add_argument("songs_dir", help="training songs: SONGS_DIR/<song>/{drums,bass,other,vocals}.wav")
    p.add_argument("--run-dir", required=True, help=f"folder for {run_dir_holds}")
    p.add_argument("--val-dir", help="validation songs (default: every 8th training song is held out)")
    p.add_argument("--cache-dir", help="FX-normalized stems cache (default: SONGS_DIR/.mixdaemon-normalized)")
    p.add_argument("--stats", help="FX-normalization statistics (default: the shipped statistics)")
    if resumable:
        _add_run_options(p)
    p.add_argument("--ir-folder", help=ir_folder_help)
    return p


def _add_run_options(p) -> None:
    """The options of a resumable run (encoder, cloner, automix)."""
    p.add_argument("--size", default="small", choices=SIZES, help="model size preset (default: small)")
    p.add_argument("--model-config", help="JSON object (or file) of model config keys overriding the preset")
    p.add_argument("--steps", type=int, help="total updates of the run")
    p.add_argument("--segment", type=int, help="samples per training segment (L)")
    p.add_argument("--lr", type=float, help="Adam learning rate")
    p.add_argument("--lr-final", type=float,
                   help="cosine-decay the learning rate to this fraction of --lr by the last step (1: constant)")
    p.add_argument("--precision", choices=["fp32", "bf16"], help="bf16: autocast (fast on AMX CPUs and GPUs)")
    p.add_argument("--validate-every", type=int, default=100)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--workers", type=int, default=1, help="processes making batches ahead (0: none)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its checkpoint")
    p.add_argument("--stop-after", type=int, help="end this session after that update (resume later)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _add_destination(p, what: str = "model", example: str = "default", file: str = "model.safetensors") -> None:
    p.add_argument("--name", help=f"write the {what} into the model store under this name (e.g. {example})")
    p.add_argument("--store", help=STORE_HELP)
    p.add_argument("--out", help=f"{what} file to write (default: RUN_DIR/{file})")


def register(subparsers) -> None:
    """`mixdaemon train material|encoder|cloner|automix|params|export` (see the module docstring)."""
    train = subparsers.add_parser("train", help="train the MST and automix networks on the project's own material")
    sub = train.add_subparsers(dest="train_command", required=True)

    p = sub.add_parser("material", help="render procedural training songs (MUSDB18 layout)")
    p.add_argument("out", help="folder for song_NNNN/{drums,bass,other,vocals}.wav")
    p.add_argument("--songs", type=int, default=64)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--first", type=int, default=0, help="index of the first song (to extend a set)")
    p.add_argument("--renderer", default="auto", choices=RENDERERS,
                   help="fluidsynth (GM soundfont, needs the fluidsynth program) or numpy (built-in synth)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_material)

    p = _training_parser(sub, "encoder", "contrastive FXencoder training (§3.3) with probability scheduling (§2.4)",
                         "train.encoder.EncoderTrainingConfig")
    p.add_argument("--items", type=int, help="contents per batch")
    p.add_argument("--negatives", type=int, help="strong negatives K per content")
    p.add_argument("--temperature", type=float)
    p.add_argument("--validation-items", type=int)
    p.add_argument("--no-mixture", action="store_true", help="contrast the stems only, not their sum")
    p.add_argument("--no-schedule", action="store_true", help="keep the default FX probabilities")
    p.set_defaults(func=cmd_encoder)

    p = _training_parser(sub, "cloner", "MixFXcloner training with a frozen encoder (§4.3)",
                         "train.cloner.ClonerTrainingConfig")
    p.add_argument("--encoder", required=True,
                   help="the encoder run (folder or checkpoint.pt), or a model pair (store name or file) whose encoder "
                        "the cloner is trained for")
    p.add_argument("--init", metavar="PAIR",
                   help="start from this model pair's cloner (store name or file; its size replaces --size)")
    p.add_argument("--fx-family", choices=defaults.CLONER_FX_FAMILIES,
                   help="what mixes targets and references: the paper's FXmanipulator (default), pedalboard "
                        "mixing chains (EQ, compression without make-up gain, reverb or delay, width, pan, level), "
                        "or either by a coin")
    p.add_argument("--items", type=int, help="triplets per stem per batch")
    p.add_argument("--validation-items", type=int, help="per stem")
    p.add_argument("--no-identity-init", action="store_true", help="start from random weights instead of y = x")
    _add_destination(p)
    p.set_defaults(func=cmd_cloner)

    p = _training_parser(sub, "automix", "FxNorm-automix training (§6.4): normalized stems in, the original mix out",
                         "train.automix.AutomixTrainingConfig",
                         description="Inputs: the stems FX-normalized with the FxNorm statistics (cached); target: "
                                     "SONG/mixture.wav, or the sum of the stems. With --ir-folder, vocals and other "
                                     "get reverb normalization first (§1.7). ",
                         ir_folder_help="impulse responses (RT60 2–4 s) for the reverb normalization of vocals "
                                        "and other (§1.7); pass the same folder to `mixdaemon automix`")
    p.add_argument("--architecture", default="automix", choices=AUTOMIX_ARCHITECTURES,
                   help="automix: the paper's network; wave-u-net: the baseline (default: automix)")
    p.add_argument("--loss", choices=["La", "Lb"], help="§6.3 loss (default: Lb)")
    p.add_argument("--batch", type=int, help="excerpts per update")
    p.add_argument("--validation-items", type=int, help="validation excerpts (one per held-out song in turn)")
    _add_destination(p)
    p.set_defaults(func=cmd_automix)

    p = _training_parser(sub, "params", "the param engine's predictor, on FXmanipulator draws with known parameters",
                         "train.params.ParamsTrainingConfig", resumable=False,
                         run_dir_holds="the examples, log.csv and metrics.json")
    p.add_argument("--examples", type=int, help="training examples (one stem each)")
    p.add_argument("--validation-examples", type=int)
    p.add_argument("--segment-seconds", type=float, help="length of x and of the reference per example")
    p.add_argument("--hidden", help="hidden layer sizes, comma-separated (e.g. 128,128)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float, help="AdamW learning rate")
    p.add_argument("--fx-probability", type=float,
                   help="every effect fires with this probability (default: the FXmanipulator's own)")
    p.add_argument("--same-song-probability", type=float,
                   help="share of examples whose reference is another passage of the same stem (default 0: "
                        "always another song)")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    _add_destination(p, "predictor", "params-default", "predictor.safetensors")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("export", help="write a cloner run's current checkpoint and its encoder as a model pair")
    p.add_argument("run_dir", help="the cloner run")
    _add_destination(p)
    p.set_defaults(func=cmd_export)

