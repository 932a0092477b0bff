"""The MST paper's objective evaluation (ALGORITHMS.md §7, Table 2) on folders of real stems, so that
every engine and every later change is judged by the same numbers.

Protocol, per song of SONGS_DIR (MUSDB18 layout: song/{drums,bass,other,vocals}.wav):

1. Segment A is the first half of the stems, segment B the second half (same length; an odd
   sample at the end is dropped). Both are FX-normalized on their own (order "mst_training", the
   shipped default statistics unless --stats says otherwise) and clipped to ±1: the state the
   training data is in.
2. Per stem, one FXmanipulator draw (default probabilities, seeded from the run seed, the song
   name and the stem) is applied to both: gt = manipulated A, ref = the same manipulation of B.
3. Each engine converts x = normalized A (all four stems) with ref (all four stems) as reference,
   through its public `convert_song`, as a user's job would (the neural engine FX-normalizes its
   input again, order "mst_inference", which leaves an already normalized stem nearly unchanged).
   "identity" is y = x, the paper's "input" row, and is always evaluated.
4. Scores per stem and for the multitrack sum of the four stems: L_MSS(y, gt) on L/R and on M/S
   (§4.3), and the cosine embedding distances y–ref and y–gt (λ = 1) with the FXencoder of the
   embedding model (the default pair unless --embedding-model names another).

Summaries: the mean over songs (multitrack) and over songs × stems (single stem), and
ratio = mean L_MSS(y, gt) / mean L_MSS(x, gt) — the paper's own best model reaches
0.982 / 1.222 = 0.80 (multitrack, L/R) on MUSDB18.

Engines: "identity", "match", "neural" (model pair "default"), "neural:NAME" (a pair in the engine
store, or a pair file), "param" (predictor "params-default"), "param:NAME" (a predictor in the
engine store, or a predictor file), and "matchering" (PyPI `matchering`, stem by stem: input stem as target,
reference stem as reference; a refused stem is recorded and scored as y = x).

Everything is seeded: the same SONGS_DIR, seed, statistics and models give the same report.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .audio import read_audio, write_audio
from .errors import ConfigError, MixdaemonError
from .stems import STEM_NAMES, load_song

# The CLI builds add_evaluate_parser on every call, so torch and the DSP modules are imported by
# the functions that use them.

log = logging.getLogger(__name__)

NORMALIZE_ORDER = "mst_training"
MULTITRACK = "multitrack"
SCORES = ("lr", "ms", "y_ref", "y_gt")
BASE_ENGINES = ("identity", "match", "matchering")
PAPER_RATIO = {"lr": 0.982 / 1.222, "ms": 1.274 / 1.620}  # Ψ with Φ_p.s., multitrack (Table 2)

Progress = Callable[[str, float], None]


@dataclass
class EvaluationSong:
    """One song's evaluation material: x (normalized A), gt (manipulated A), ref (manipulated B)."""

    name: str
    x: dict[str, np.ndarray]
    gt: dict[str, np.ndarray]
    ref: dict[str, np.ndarray]
    draws: dict[str, dict]


def song_folders(songs_dir: str | Path) -> list[Path]:
    """Sub-folders of songs_dir holding all four stem files, sorted by name."""
    songs_dir = Path(songs_dir)
    if not songs_dir.is_dir():
        raise ConfigError(f"{songs_dir}: not a folder of songs")
    folders = [p for p in sorted(songs_dir.iterdir())
               if p.is_dir() and all(any(p.glob(f"{stem}.*")) for stem in STEM_NAMES)]
    if not folders:
        raise ConfigError(f"{songs_dir}: no song folder with {', '.join(STEM_NAMES)} stems")
    return folders


def _stem_rng(seed: int, song: str, stem: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(song.encode()), STEM_NAMES.index(stem)]))


def build_songs(songs_dir: str | Path, stats, seed: int = 0, ir_folder=None,
                progress: Progress = lambda stage, fraction: None, single_fx: str | None = None) -> list[EvaluationSong]:
    """The evaluation material of every song (stats: an fxnorm_stats.FxStats); with single_fx, every
    draw is that one effect alone (FXManipulator's single_fx)."""
    from .fxmanipulator import FXManipulator
    from .fxnorm import normalize_stems
    folders = song_folders(songs_dir)
    songs = []
    for i, folder in enumerate(folders):
        progress(f"preparing {folder.name}", i / len(folders))
        stems = {name: load_song([next(folder.glob(f"{name}.*"))]).stems[name] for name in STEM_NAMES}
        half = min(len(x) for x in stems.values()) // 2
        normalized = [{name: np.clip(x, -1.0, 1.0) for name, x in
                       normalize_stems({name: s[part * half:(part + 1) * half] for name, s in stems.items()},
                                       stats, order=NORMALIZE_ORDER, seed=seed).items()}
                      for part in (0, 1)]
        x, gt, ref, draws = {}, {}, {}, {}
        for name in STEM_NAMES:
            manipulator = FXManipulator(name, ir_folder=ir_folder, single_fx=single_fx)
            (gt[name], ref[name]), draws[name] = manipulator.manipulate(
                [normalized[0][name], normalized[1][name]], _stem_rng(seed, folder.name, name))
            x[name] = normalized[0][name].astype(np.float32)
        songs.append(EvaluationSong(folder.name, x, gt, ref, draws))
    return songs


# --- engines ----------------------------------------------------------------------------------------

class IdentityEngine:
    """y = x: the paper's "input" row, the denominator of every ratio."""

    name = "identity"
    info = {"name": "identity", "kind": "no conversion (y = x)"}

    def convert_song(self, input_stems, reference_stems, progress=lambda stage, fraction: None):
        return dict(input_stems)


class MatcheringEngine:
    """Matchering 2 (sergree/matchering), the tool users reach for today, run stem by stem: the input
    stem is Matchering's target, the reference stem its reference. Stems it refuses (silent, too
    short...) are kept unconverted and listed in `failures`."""

    name = "matchering"

    def __init__(self):
        try:
            import matchering
        except ImportError:
            raise ConfigError("engine 'matchering': the matchering package is not installed "
                              "(pip install matchering)") from None
        self._matchering = matchering
        version = getattr(matchering, "__version__", "unknown")
        self.info = {"name": "matchering", "kind": f"Matchering {version}, stem by stem"}
        self.failures: list[str] = []

    def convert_song(self, input_stems, reference_stems, progress=lambda stage, fraction: None):
        out = {}
        with tempfile.TemporaryDirectory(prefix="mixdaemon-matchering-") as tmp:
            for i, (name, x) in enumerate(input_stems.items()):
                progress(f"matchering {name}", i / len(input_stems))
                target, reference, result = (Path(tmp) / f"{name}_{k}.wav" for k in ("target", "reference", "result"))
                write_audio(target, x, subtype="FLOAT")
                write_audio(reference, reference_stems[name], subtype="FLOAT")
                try:
                    self._matchering.process(target=str(target), reference=str(reference),
                                             results=[self._matchering.pcm24(str(result))])
                    y = read_audio(result).samples
                    out[name] = y[:len(x)] if len(y) >= len(x) else np.pad(y, ((0, len(x) - len(y)), (0, 0)))
                except Exception as exc:  # Matchering signals refusals with bare exceptions
                    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    self.failures.append(f"{name}: {message}")
                    out[name] = x
        return out


def make_engine(spec: str, stats, seed: int = 0, backend: str = "torch"):
    """An engine object with convert_song(input_stems, reference_stems) from a name (module docstring);
    neural engines run on `backend` (backends.py; torch by default, the reference numbers)."""
    if spec == "identity":
        return IdentityEngine()
    if spec == "match":
        from .matching import MatchingEngine
        return MatchingEngine(seed=seed)
    if spec == "matchering":
        return MatcheringEngine()
    if spec == "param" or spec.startswith("param:"):
        from .chain_estimation import DEFAULT_PREDICTOR, ParamPredictor
        from .param_engine import ParamEngine
        engine = ParamEngine(ParamPredictor.load(spec.partition(":")[2] or DEFAULT_PREDICTOR))
        engine.name = spec
        return engine
    if spec == "neural" or spec.startswith("neural:"):
        from .backends import create_backend
        from .modelfiles import load_pair
        from .neural import DEFAULT_MODEL, NeuralEngine
        encoder, cloner, info = load_pair(spec.partition(":")[2] or DEFAULT_MODEL)
        engine = NeuralEngine(create_backend(backend, encoder, cloner, info), info, stats, seed=seed)
        engine.name = spec
        return engine
    raise ConfigError(f"engine {spec!r}: expected identity, match, matchering, neural, neural:NAME, param or param:NAME")


# --- scores -----------------------------------------------------------------------------------------

class Embedder:
    """FXencoder embeddings for the y–ref / y–gt distances; None for a silent signal (no style to
    measure) and for every signal when no embedding model is used."""

    def __init__(self, model: str | None):
        self.encoder, self.source = None, None
        if model is not None:
            from .modelfiles import load_pair
            self.encoder, _, info = load_pair(model)
            self.source = {"name": info.name, "encoder_sha256": info.encoder.weights_sha256}
        self._cache: dict[tuple, np.ndarray | None] = {}

    def cached(self, audio: np.ndarray, key: tuple) -> np.ndarray | None:
        """The embedding of a signal that every engine is compared with (gt, ref), computed once."""
        if key not in self._cache:
            self._cache[key] = self(audio)
        return self._cache[key]

    def __call__(self, audio: np.ndarray) -> np.ndarray | None:
        if self.encoder is None:
            return None
        from .inference import embed_reference
        try:
            return embed_reference(self.encoder, audio)
        except MixdaemonError:
            return None


def _scores(y: np.ndarray, gt: np.ndarray, e_y, e_ref, e_gt) -> dict[str, float | None]:
    from .metrics import embedding_distance, mss_distance
    return {"lr": mss_distance(y, gt, "lr"), "ms": mss_distance(y, gt, "ms"),
            "y_ref": embedding_distance(e_y, e_ref) if e_y is not None and e_ref is not None else None,
            "y_gt": embedding_distance(e_y, e_gt) if e_y is not None and e_gt is not None else None}


def _with_multitrack(stems: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {**stems, MULTITRACK: sum(stems[name] for name in STEM_NAMES)}


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def score_engine(engine, songs: list[EvaluationSong], embedder: Embedder,
                 progress: Callable[[str, float], None] = lambda song, fraction: None) -> dict[str, dict]:
    """{song: {stem or "multitrack": {lr, ms, y_ref, y_gt}}} of one engine's conversions."""
    per_song = {}
    for i, song in enumerate(songs):
        progress(song.name, i / len(songs))
        y = _with_multitrack(engine.convert_song(song.x, song.ref))
        gt, ref = _with_multitrack(song.gt), _with_multitrack(song.ref)
        per_song[song.name] = {k: _scores(y[k], gt[k], embedder(y[k]), embedder.cached(ref[k], (song.name, "ref", k)),
                                          embedder.cached(gt[k], (song.name, "gt", k)))
                               for k in (*STEM_NAMES, MULTITRACK)}
    return per_song


def summarize(per_song: dict[str, dict[str, dict]], baseline: dict[str, dict[str, dict]]) -> dict:
    """Means over songs (multitrack) and songs × stems (stem), per stem name, and the L_MSS ratios
    to the identity row (ratio of the means)."""
    summary = {}
    for level in (MULTITRACK, "stem"):
        keys = [MULTITRACK] if level == MULTITRACK else list(STEM_NAMES)
        means = {s: _mean([per_song[song][k][s] for song in per_song for k in keys]) for s in SCORES}
        base = {s: _mean([baseline[song][k][s] for song in baseline for k in keys]) for s in ("lr", "ms")}
        means.update({f"ratio_{s}": means[s] / base[s] if base[s] else None for s in ("lr", "ms")})
        summary[level] = means
    summary["per_stem"] = {k: {s: _mean([per_song[song][k][s] for song in per_song]) for s in ("lr", "ms")}
                           for k in STEM_NAMES}
    return summary


def evaluate(songs_dir: str | Path, engines: list[str], *, seed: int = 0, stats_path: str | Path | None = None,
             embedding_model: str | None = "default", ir_folder=None, backend: str = "torch",
             progress: Progress = lambda stage, fraction: None) -> dict:
    """Run the protocol of the module docstring; returns the report (JSON-serialisable)."""
    from threadpoolctl import threadpool_limits
    # numpy's BLAS only serves small dot products in the DSP here; its idle threads spinning
    # against torch's made the FX stages several times slower on a busy machine
    with threadpool_limits(limits=1, user_api="blas"):
        return _evaluate(songs_dir, engines, seed, stats_path, embedding_model, ir_folder, backend, progress)


def _evaluate(songs_dir, engines, seed, stats_path, embedding_model, ir_folder, backend, progress) -> dict:
    from .fxnorm import default_stats_path
    from .fxnorm_stats import FxStats
    engines = ["identity"] + [e for e in dict.fromkeys(engines) if e != "identity"]
    stats_path = Path(stats_path) if stats_path else default_stats_path("mst")
    stats = FxStats.load(stats_path)
    embedder = Embedder(embedding_model)
    built = [make_engine(spec, stats, seed, backend) for spec in engines]
    songs = build_songs(songs_dir, stats, seed, ir_folder, lambda stage, f: progress(stage, 0.2 * f))
    report = {"protocol": "MST Table 2 (ALGORITHMS.md §7): x = FX-normalized first half, gt = manipulated x, "
                          "ref = the same manipulation of the normalized second half",
              "songs_dir": str(Path(songs_dir).resolve()), "seed": seed, "stats": str(stats_path),
              "normalize_order": NORMALIZE_ORDER, "embedding_model": embedder.source,
              "songs": {s.name: {"seconds_per_segment": len(s.x["drums"]) / 44100.0, "draws": s.draws} for s in songs},
              "engines": {}}
    per_engine: dict[str, dict] = {}
    for e, (spec, engine) in enumerate(zip(engines, built)):
        started = time.perf_counter()
        per_engine[spec] = score_engine(engine, songs, embedder, lambda name, f, e=e: progress(
            f"{spec}: {name}", 0.2 + 0.8 * (e + f) / len(engines)))
        report["engines"][spec] = {"info": dict(getattr(engine, "info", {"name": spec})),
                                   "seconds": round(time.perf_counter() - started, 2), "songs": per_engine[spec]}
        if getattr(engine, "failures", None):
            report["engines"][spec]["failures"] = list(engine.failures)
    for spec in engines:
        report["engines"][spec]["summary"] = summarize(per_engine[spec], per_engine["identity"])
    progress("done", 1.0)
    return report


# --- parameter recovery of the param engine ------------------------------------------------------------

def recovery_errors(estimated, true) -> dict[str, float]:
    """How far an estimated chain (fxchain.StemChain) is from the chain of the draw, per parameter
    group: EQ band gains (raw, and offset-free: a common offset is the output gain's job), the EQ
    curve (RMS dB over 40 Hz–16 kHz, offset-free), width (side gain, compared up to 2), pan, and the
    compressor and reverb send as detected on/off."""
    from .fxchain import eq_response_db
    grid = np.geomspace(40.0, 16000.0, 200)
    gains = np.array([b.gain_db for b in estimated.eq]) - np.array([b.gain_db for b in true.eq])
    curve = eq_response_db(estimated.eq, grid) - eq_response_db(true.eq, grid)
    return {"eq_gain_abs_db": float(np.mean(np.abs(gains))),
            "eq_gain_offset_free_abs_db": float(np.mean(np.abs(gains - gains.mean()))),
            "eq_curve_rms_db": float(np.sqrt(np.mean((curve - curve.mean()) ** 2))),
            "width_abs": float(abs(min(estimated.width, 2.0) - min(true.width, 2.0))),
            "pan_abs": float(abs(estimated.pan - true.pan)),
            "compressor_detected": float(estimated.compressor.active == true.compressor.active),
            "reverb_detected": float(estimated.reverb.active == true.reverb.active)}


RECOVERY_GROUPS = {"eq": ("eq_gain_abs_db", "eq_gain_offset_free_abs_db", "eq_curve_rms_db"), "imager": ("width_abs",),
                   "pan": ("pan_abs",), "comp": ("compressor_detected",), "reverb": ("reverb_detected",)}


RECOVERY_REFERENCES = ("other_half", "same_content")


def parameter_recovery(songs_dir: str | Path, predictor, seeds=(0,), stats_path: str | Path | None = None,
                       reference: str = "other_half", single_fx: str | None = None) -> dict:
    """The param engine's estimates on this protocol's material (x = normalized first half; the
    reference = the draw applied to the normalized second half ("other_half", a reference song's
    situation: other music), or to x itself ("same_content": the draw alone separates x from the
    reference)) against the draw's own chain (fxchain.chain_from_draw on x), for the refined
    estimate and for the prediction alone. Each error is averaged over the stems where its FX fired
    (compressor and reverb detection over all). single_fx: draws of that effect alone, which
    separates how well it is recovered from how much the other effects confound it.
    Returns {"refined": {error: mean}, "predicted": {...}, "cases": {error: count}}."""
    if reference not in RECOVERY_REFERENCES:
        raise ValueError(f"reference {reference!r}: one of {RECOVERY_REFERENCES}")
    from .chain_estimation import estimate_chain
    from .fxchain import chain_from_draw
    from .fxnorm import default_stats_path
    from .fxnorm_stats import FxStats
    stats = FxStats.load(Path(stats_path) if stats_path else default_stats_path("mst"))
    collected: dict[str, dict[str, list[float]]] = {"refined": {}, "predicted": {}}
    for seed in seeds:
        for song in build_songs(songs_dir, stats, seed, single_fx=single_fx):
            for name in STEM_NAMES:
                drawn = song.draws[name]
                true = chain_from_draw(drawn, song.x[name])
                target = song.ref[name] if reference == "other_half" else song.gt[name]
                estimate = estimate_chain(predictor, song.x[name], target)
                for kind, chain in (("refined", estimate.chain), ("predicted", estimate.predicted)):
                    errors = recovery_errors(chain, true)
                    for fx, keys in RECOVERY_GROUPS.items():
                        if fx in ("comp", "reverb") or drawn["fired"].get(fx):
                            for key in keys:
                                collected[kind].setdefault(key, []).append(errors[key])
    return {kind: {k: round(float(np.mean(v)), 3) for k, v in values.items()} for kind, values in collected.items()} | {
        "cases": {k: len(v) for k, v in collected["refined"].items()}, "seeds": list(seeds), "reference": reference,
        "single_fx": single_fx}


def format_table(report: dict) -> str:
    """The summary as a Markdown table (Table 2's columns, multitrack / stem)."""
    def cell(summary, key, digits=3):
        values = [summary[level][key] for level in (MULTITRACK, "stem")]
        return " / ".join("–" if v is None else f"{v:.{digits}f}" for v in values)

    lines = ["| engine | L/R | M/S | ratio L/R | ratio M/S | y–ref | y–gt |", "|---|---|---|---|---|---|---|"]
    for spec, entry in report["engines"].items():
        s = entry["summary"]
        lines.append(f"| {spec} | {cell(s, 'lr')} | {cell(s, 'ms')} | {cell(s, 'ratio_lr')} | {cell(s, 'ratio_ms')} "
                     f"| {cell(s, 'y_ref')} | {cell(s, 'y_gt')} |")
    return "\n".join(lines)


# --- command line -----------------------------------------------------------------------------------

def cmd_evaluate(args) -> int:
    from .cli import ProgressBar
    bar = ProgressBar(enabled=not args.quiet)
    try:
        report = evaluate(args.songs_dir, args.engine or ["match", "neural"], seed=args.seed, stats_path=args.stats,
                          embedding_model=None if args.embedding_model == "none" else args.embedding_model,
                          ir_folder=args.ir_folder, backend=args.backend, progress=bar)
    finally:
        bar.close()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(format_table(report))
    for spec, entry in report["engines"].items():
        for failure in entry.get("failures", []):
            print(f"{spec}: refused {failure}")
    print(f"report written to {args.out}")
    return 0


def add_evaluate_parser(subparsers) -> None:
    """`mixdaemon evaluate SONGS_DIR --engine match --engine neural --out report.json`."""
    p = subparsers.add_parser("evaluate", help="the MST paper's Table-2 protocol on a folder of stem songs",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("songs_dir", help="folder of songs, each a folder of drums/bass/other/vocals files")
    p.add_argument("--engine", action="append", default=None,
                   help="identity, match, matchering, neural, neural:NAME, param or param:NAME "
                        "(repeatable; default: match and neural)")
    p.add_argument("--out", required=True, help="report file (JSON)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stats", help="FX-normalization statistics (default: the shipped statistics)")
    p.add_argument("--embedding-model", default="default",
                   help="model pair whose FXencoder measures y–ref / y–gt ('none' to skip)")
    p.add_argument("--ir-folder", help="impulse responses for the FXmanipulator's reverb")
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime", "tensorrt", "auto"],
                   help="inference backend of the neural engines (default: torch)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)
