"""The MST paper's objective evaluation (docs/ALGORITHMS.md §7, Table 2) on folders of real stems, so that
every engine and every later change is judged by the same numbers.

Protocol, per song of SONGS_DIR (MUSDB18 layout: song/{drums,bass,other,vocals}.wav):

1. Segment A is the first half of the stems, segment B the second half (same length; an odd
   sample at the end is dropped). Both are FX-normalized on their own (order "mst_training", the
   shipped default statistics unless --stats says otherwise) and clipped to ±1: the state the
   training data is in.
2. Per stem, one FXmanipulator draw (default probabilities, seeded from the run seed, the song
   name and the stem) is applied to both: gt = manipulated A, ref = the same manipulation of B.
3. Each engine converts x = normalized A (all four stems) with ref (all four stems) as reference,
   through the Engine protocol's `convert`, as a user's job would (the neural engine FX-normalizes its
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
model store, or a predictor file), and "matchering" (PyPI `matchering`, stem by stem: input stem as target,
reference stem as reference; a refused stem is recorded and scored as y = x).

Everything is seeded: the same SONGS_DIR, seed, statistics and models give the same report.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixdaemon import defaults
from mixdaemon.audio.stems import STEM_NAMES
from mixdaemon.errors import MixdaemonError
from mixdaemon.evaluation.songs import (
    LEVELS,
    MSS_SCORES,
    MULTITRACK,
    build_engines,
    load_stems,
    mean_scores,
    mss_scores,
    single_blas_thread,
    song_folders,
    stem_rng,
    with_multitrack,
    with_ratios,
)
from mixdaemon.progress import Progress, no_progress

# `mixdaemon evaluate --help` imports this room's command module only; torch and the DSP modules are
# imported by the functions that use them.

log = logging.getLogger(__name__)

NORMALIZE_ORDER = "mst_training"
SCORES = ("lr", "ms", "y_ref", "y_gt")
PAPER_RATIO = {"lr": 0.982 / 1.222, "ms": 1.274 / 1.620}  # Ψ with Φ_p.s., multitrack (Table 2)



@dataclass
class EvaluationSong:
    """One song's evaluation material: x (normalized A), gt (manipulated A), ref (manipulated B)."""

    name: str
    x: dict[str, np.ndarray]
    gt: dict[str, np.ndarray]
    ref: dict[str, np.ndarray]
    draws: dict[str, dict]


def build_songs(songs_dir: str | Path, stats, seed: int = 0, ir_folder=None,
                progress: Progress = lambda stage, fraction: None, single_fx: str | None = None) -> list[EvaluationSong]:
    """The evaluation material of every song (stats: an fx.stats.FxStats); with single_fx, every
    draw is that one effect alone (FXManipulator's single_fx)."""
    from mixdaemon.mixing.effects import FXManipulator
    from mixdaemon.mixing.normalization import normalize_stems
    folders = song_folders(songs_dir)
    songs = []
    for i, folder in enumerate(folders):
        progress(f"preparing {folder.name}", i / len(folders))
        stems = load_stems(folder)
        half = min(len(x) for x in stems.values()) // 2
        normalized = [{name: np.clip(x, -1.0, 1.0) for name, x in
                       normalize_stems({name: s[part * half:(part + 1) * half] for name, s in stems.items()},
                                       stats, order=NORMALIZE_ORDER, seed=seed).items()}
                      for part in (0, 1)]
        x, gt, ref, draws = {}, {}, {}, {}
        for name in STEM_NAMES:
            manipulator = FXManipulator(name, ir_folder=ir_folder, single_fx=single_fx)
            (gt[name], ref[name]), draws[name] = manipulator.manipulate(
                [normalized[0][name], normalized[1][name]], stem_rng(seed, folder.name, name))
            x[name] = normalized[0][name].astype(np.float32)
        songs.append(EvaluationSong(folder.name, x, gt, ref, draws))
    return songs


# --- scores -----------------------------------------------------------------------------------------

class Embedder:
    """FXencoder embeddings for the y–ref / y–gt distances; None for a silent signal (no style to
    measure) and for every signal when no embedding model is used."""

    def __init__(self, model: str | None):
        self.encoder, self.source = None, None
        if model is not None:
            from mixdaemon.mixing.neural import StyleEncoder
            self.encoder = StyleEncoder(model)
            self.source = self.encoder.source
        self._cache: dict[tuple, np.ndarray | None] = {}

    def cached(self, audio: np.ndarray, key: tuple) -> np.ndarray | None:
        """The embedding of a signal that every engine is compared with (gt, ref), computed once."""
        if key not in self._cache:
            self._cache[key] = self(audio)
        return self._cache[key]

    def __call__(self, audio: np.ndarray) -> np.ndarray | None:
        if self.encoder is None:
            return None
        try:
            return self.encoder.embed(audio)
        except MixdaemonError:
            return None


def _scores(y: np.ndarray, gt: np.ndarray, e_y, e_ref, e_gt) -> dict[str, float | None]:
    from mixdaemon.audio.metrics import embedding_distance
    return {**mss_scores(y, gt),
            "y_ref": embedding_distance(e_y, e_ref) if e_y is not None and e_ref is not None else None,
            "y_gt": embedding_distance(e_y, e_gt) if e_y is not None and e_gt is not None else None}


def score_engine(engine, songs: list[EvaluationSong], embedder: Embedder,
                 progress: Progress = no_progress) -> dict[str, dict]:
    """{song: {stem or "multitrack": {lr, ms, y_ref, y_gt}}} of one engine's conversions."""
    per_song = {}
    for i, song in enumerate(songs):
        progress(song.name, i / len(songs))
        y = with_multitrack(engine.convert(song.x, song.ref).stems)
        gt, ref = with_multitrack(song.gt), with_multitrack(song.ref)
        per_song[song.name] = {k: _scores(y[k], gt[k], embedder(y[k]), embedder.cached(ref[k], (song.name, "ref", k)),
                                          embedder.cached(gt[k], (song.name, "gt", k)))
                               for k in (*STEM_NAMES, MULTITRACK)}
    return per_song


def summarize(per_song: dict[str, dict[str, dict]], baseline: dict[str, dict[str, dict]]) -> dict:
    """Means over songs (multitrack) and songs × stems (stem), per stem name, and the L_MSS ratios
    to the identity row (ratio of the means)."""
    cases, baseline_cases = list(per_song.values()), list(baseline.values())
    summary = {level: with_ratios(mean_scores(cases, keys, SCORES), mean_scores(baseline_cases, keys, MSS_SCORES))
               for level, keys in LEVELS.items()}
    summary["per_stem"] = {k: mean_scores(cases, (k,), MSS_SCORES) for k in STEM_NAMES}
    return summary


def evaluate(songs_dir: str | Path, engines: list[str], *, seed: int = 0, stats_path: str | Path | None = None,
             embedding_model: str | None = defaults.DEFAULT_MODEL, ir_folder=None, backend: str = "torch",
             progress: Progress = no_progress) -> dict:
    """Run the protocol of the module docstring; returns the report (JSON-serialisable)."""
    with single_blas_thread():
        return _evaluate(songs_dir, engines, seed, stats_path, embedding_model, ir_folder, backend, progress)


def _evaluate(songs_dir, engines, seed, stats_path, embedding_model, ir_folder, backend, progress) -> dict:
    from mixdaemon.mixing.normalization import default_stats_path, load_statistics
    stats_path = Path(stats_path) if stats_path else default_stats_path("mst")
    stats = load_statistics(stats_path)
    embedder = Embedder(embedding_model)
    built = build_engines(engines, stats_path, seed, backend)
    songs = build_songs(songs_dir, stats, seed, ir_folder, lambda stage, f: progress(stage, 0.2 * f))
    report = {"protocol": "MST Table 2 (docs/ALGORITHMS.md §7): x = FX-normalized first half, gt = manipulated x, "
                          "ref = the same manipulation of the normalized second half",
              "songs_dir": str(Path(songs_dir).resolve()), "seed": seed, "stats": str(stats_path),
              "normalize_order": NORMALIZE_ORDER, "embedding_model": embedder.source,
              "songs": {s.name: {"seconds_per_segment": len(s.x["drums"]) / 44100.0, "draws": s.draws} for s in songs},
              "engines": {}}
    per_engine: dict[str, dict] = {}
    for e, (spec, engine) in enumerate(built.items()):
        started = time.perf_counter()
        per_engine[spec] = score_engine(engine, songs, embedder, lambda name, f, e=e: progress(
            f"{spec}: {name}", 0.2 + 0.8 * (e + f) / len(built)))
        report["engines"][spec] = {"info": dict(engine.info),
                                   "seconds": round(time.perf_counter() - started, 2), "songs": per_engine[spec]}
        if engine.info.get("refused"):
            report["engines"][spec]["failures"] = list(engine.info["refused"])
    for spec in built:
        report["engines"][spec]["summary"] = summarize(per_engine[spec], per_engine["identity"])
    progress("done", 1.0)
    return report


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
