"""The unpaired protocol: a song converted toward a reference that is another song, as users do it.
There is no ground truth; an engine is judged by how much closer its output's mixing features come
to the reference's than the input's were (features.py: loudness, spectral shape, dynamics, width).

Protocol, for the N ≥ 2 songs of SONGS_DIR (MUSDB18 layout: song/{drums,bass,other,vocals}.wav; a
mixture file beside them is ignored) sorted by name, and per seed s:

1. Pairing: song i is converted toward song j = (i + 1 + (s mod (N − 1))) mod N, never itself; seed 0
   pairs every song with the next one, and further seeds shift the pairing.
2. Segments: each song is cut into K = ⌊length / S⌋ whole segments of S seconds (S =
   --segment-seconds, 10 by default; a song shorter than S is one segment, whole). The input x is
   segment s mod K of song i, raw as it is in the files; the reference is segment s mod K of song j.
3. The reference's style is varied by the seed: each reference stem goes through one pedalboard chain
   (pedalboard_chain.draw from the generator of the seed, song j and the stem — the draw the raw
   protocol makes for that song and seed; its compressor threshold set from the reference stem's
   RMS), and the four stems are then trimmed by one gain so that their sum has a true peak at or
   below −1.5 dBTP, as a mastered song has.
4. Each engine converts x (all four stems) toward the reference (all four stems) through the Engine
   protocol's `convert`; its output goes through the job's linked limiter (audio.mastering.
   limit_linked at −1 dBTP), because that is what users get. "identity" (y = x, limited too) is
   always evaluated. An engine that raises a MixdaemonError on a pair is recorded (one line) and
   scored as y = x.
5. Per stem, the four feature distances d(y, ref) (features.py). A stem whose input or reference is
   silent (RMS below −60 dBFS) has no style to match: it is skipped for every engine, and the skip
   is recorded.

Summaries per feature: ratio = mean over pairs × stems × seeds of d(y, ref) / the same mean of
d(identity, ref) — below 1 an engine moved the input toward the reference — and the mean of the four
ratios; also per stem name.

Engines are built once, with the first seed. Everything is seeded: the same SONGS_DIR, seeds, segment
length and models give the same report.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixdaemon.audio.dsp import WORKING_RATE, db_to_amp, rms_dbfs
from mixdaemon.audio.stems import STEM_NAMES
from mixdaemon.errors import ConfigError
from mixdaemon.evaluation import pedalboard_chain
from mixdaemon.evaluation.features import FEATURES, StemFeatures, feature_distances, stem_features
from mixdaemon.evaluation.songs import (
    REFERENCE_PEAK_DBTP,
    SEGMENT_SECONDS,
    build_engines,
    limited_conversion,
    load_stems,
    mean,
    mean_scores,
    peak_trim_db,
    seconds_span,
    single_blas_thread,
    song_folders,
    stem_rng,
    with_ratios,
)
from mixdaemon.progress import Progress, no_progress

SILENCE_DBFS = -60.0  # RMS below which a stem has no style to compare
PROTOCOL = ("unpaired: x = a raw S-second segment of song i; ref = a segment of song i+1+(seed mod (N-1)), "
            "each stem through one seeded pedalboard chain, trimmed to -1.5 dBTP (sum of the stems); every "
            "output through the job's linked limiter at -1 dBTP; scores: loudness, spectral shape, dynamics "
            "and width distances to ref, ratio to identity")


@dataclass
class UnpairedCase:
    """One pair of the protocol: x (raw segment of the input song), ref (styled segment of another)."""

    key: str
    seed: int
    input_song: str
    reference_song: str
    x: dict[str, np.ndarray]
    ref: dict[str, np.ndarray]
    input_segment: slice
    reference_segment: slice
    chains: dict[str, pedalboard_chain.PedalboardChain]
    trim_db: float
    skipped: dict[str, str]  # stem → why it is not scored


def partner(i: int, n_songs: int, seed: int) -> int:
    """The reference song of song i (step 1 of the module docstring)."""
    return (i + 1 + seed % (n_songs - 1)) % n_songs


def segment(n_samples: int, seed: int, segment_seconds: float) -> slice:
    """The segment a seed takes of a song of n_samples (step 2)."""
    length = int(round(segment_seconds * WORKING_RATE))
    if n_samples < length:
        return slice(0, n_samples)
    start = (seed % (n_samples // length)) * length
    return slice(start, start + length)


def unpaired_case(input_song: str, input_stems: dict[str, np.ndarray], reference_song: str,
                  reference_stems: dict[str, np.ndarray], seed: int,
                  segment_seconds: float = SEGMENT_SECONDS) -> UnpairedCase:
    """Steps 2, 3 and the silence check of step 5 for one pair and seed."""
    a = segment(min(len(s) for s in input_stems.values()), seed, segment_seconds)
    b = segment(min(len(s) for s in reference_stems.values()), seed, segment_seconds)
    x = {name: input_stems[name][a] for name in STEM_NAMES}
    raw_ref = {name: reference_stems[name][b] for name in STEM_NAMES}
    chains = {name: pedalboard_chain.draw(stem_rng(seed, reference_song, name), rms_dbfs(raw_ref[name]))
              for name in STEM_NAMES}
    ref = {name: chains[name].apply(raw_ref[name]) for name in STEM_NAMES}
    trim_db = peak_trim_db([ref], REFERENCE_PEAK_DBTP)
    ref = {name: v * np.float32(db_to_amp(trim_db)) for name, v in ref.items()}
    skipped = {}
    for name in STEM_NAMES:
        for role, stem in (("input", x[name]), ("reference", ref[name])):
            if name not in skipped and rms_dbfs(stem) < SILENCE_DBFS:
                skipped[name] = f"{role} silent ({max(rms_dbfs(stem), -200.0):.1f} dBFS RMS)"
    key = f"{input_song} <- {reference_song} (seed {seed})"
    return UnpairedCase(key, seed, input_song, reference_song, x, ref, a, b, chains, trim_db, skipped)


def score_case(engine, case: UnpairedCase, reference_features: dict[str, StemFeatures]
               ) -> tuple[dict[str, dict | None], list[str]]:
    """({stem: the four distances, None where skipped}, failures) of one engine on one pair (steps 4–5)."""
    y, failures = limited_conversion(engine, case.x, case.ref)
    return {name: None if name in case.skipped else feature_distances(stem_features(y[name]), reference_features[name])
            for name in STEM_NAMES}, failures


def summarize(pairs: list[dict[str, dict | None]], baseline: list[dict[str, dict | None]]) -> dict:
    """Mean distances over pairs × stems and their ratios to identity's, per feature, their mean, and
    the same per stem name; skipped stems are left out of every mean."""
    def level(cases, keys):
        return mean_scores([{k: scores or dict.fromkeys(FEATURES) for k, scores in case.items()} for case in cases],
                           keys, FEATURES)

    def ratios(keys):
        means = with_ratios(level(pairs, keys), level(baseline, keys), FEATURES)
        return {**means, "mean_ratio": mean([means[f"ratio_{f}"] for f in FEATURES])}
    return {**ratios(STEM_NAMES), "per_stem": {k: ratios((k,)) for k in STEM_NAMES}}


def evaluate_unpaired(songs_dir: str | Path, engines: list, seeds: Sequence[int] = (0,),
                      segment_seconds: float = SEGMENT_SECONDS, *, stats_path: str | Path | None = None,
                      backend: str = "torch", progress: Progress = no_progress) -> dict:
    """Run the protocol of the module docstring; engines are specs (anchors.engine_for) or engine
    objects (named by their .name). Returns the report (JSON-serialisable)."""
    with single_blas_thread():
        return _evaluate_unpaired(songs_dir, engines, list(dict.fromkeys(seeds)), segment_seconds, stats_path,
                                  backend, progress)


def _evaluate_unpaired(songs_dir, engines, seeds, segment_seconds, stats_path, backend, progress) -> dict:
    folders = song_folders(songs_dir)
    if len(folders) < 2:
        raise ConfigError(f"{songs_dir}: the unpaired protocol needs two songs or more, found {len(folders)}")
    built = build_engines(engines, stats_path, seeds[0], backend)
    report = {"protocol": PROTOCOL, "songs_dir": str(Path(songs_dir).resolve()), "seeds": seeds,
              "segment_seconds": segment_seconds, "reference_peak_dbtp": REFERENCE_PEAK_DBTP,
              "silence_dbfs": SILENCE_DBFS, "songs": [f.name for f in folders], "pairs": {},
              "engines": {name: {"info": dict(engine.info), "seconds": 0.0, "failures": [], "pairs": {}}
                          for name, engine in built.items()}}
    steps, done = len(folders) * len(seeds) * len(built), 0
    for seed in seeds:
        for i, folder in enumerate(folders):
            other = folders[partner(i, len(folders), seed)]
            case = unpaired_case(folder.name, load_stems(folder), other.name, load_stems(other), seed, segment_seconds)
            reference_features = {k: stem_features(case.ref[k]) for k in STEM_NAMES if k not in case.skipped}
            report["pairs"][case.key] = {
                "seed": seed, "input": case.input_song, "reference": case.reference_song,
                "input_segment_s": seconds_span(case.input_segment),
                "reference_segment_s": seconds_span(case.reference_segment),
                "reference_trim_db": case.trim_db, "reference_chains": {k: c.to_dict() for k, c in case.chains.items()},
                "reference_features": {k: f.scalars() for k, f in reference_features.items()},
                "skipped": [f"{k}: {why}" for k, why in case.skipped.items()]}
            for name, engine in built.items():
                progress(f"{name}: {case.key}", done / steps)
                entry = report["engines"][name]
                started = time.perf_counter()
                entry["pairs"][case.key], failures = score_case(engine, case, reference_features)
                entry["seconds"] = round(entry["seconds"] + time.perf_counter() - started, 2)
                entry["failures"] += [f"{case.key}: {failure}" for failure in failures]
                done += 1
    baseline = list(report["engines"]["identity"]["pairs"].values())
    for entry in report["engines"].values():
        entry["summary"] = summarize(list(entry["pairs"].values()), baseline)
    progress("done", 1.0)
    return report


def format_table(report: dict) -> str:
    """The summary as a Markdown table: each feature distance's ratio to identity, and their mean."""
    def cell(value):
        return "–" if value is None else f"{value:.3f}"

    lines = ["| engine | " + " | ".join(FEATURES) + " | mean |", "|---" * (len(FEATURES) + 2) + "|"]
    for name, entry in report["engines"].items():
        s = entry["summary"]
        lines.append(f"| {name} | " + " | ".join(cell(s[f"ratio_{f}"]) for f in FEATURES)
                     + f" | {cell(s['mean_ratio'])} |")
    return "\n".join(lines)
