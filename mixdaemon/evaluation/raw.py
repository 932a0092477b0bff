"""The raw protocol: engines judged on stems as users bounce them (not FX-normalized), against targets
mixed by effects that are not the project's own (pedalboard's JUCE effects, pedalboard_chain.py),
with level offsets of ±12 dB, and with every output through the job's limiter.

Protocol, per song of SONGS_DIR (MUSDB18 layout: song/{drums,bass,other,vocals}.wav; a mixture file
beside them is ignored) and per seed:

1. Segment A is the first S seconds of the stems (S = --segment-seconds, 10 by default), segment B
   the next S seconds; a song shorter than 2·S is cut into halves instead (an odd sample at the end
   dropped). x = A as it is in the files: raw, not normalized.
2. Per stem, one chain is drawn (pedalboard_chain.draw, from a generator seeded by the seed, the song
   name and the stem; its compressor threshold is set from the stem's RMS over A and B together):
   gt = chain(A), ref = chain(B), the same chain on both segments.
3. gt and ref are trimmed by one gain (all four stems, both segments: the balance is kept) so that
   the sums of their four stems have true peaks at or below −1.5 dBTP, as a mastered song has.
4. Each engine converts x (all four stems) toward ref (all four stems) through the Engine protocol's
   `convert`, and its output goes through the job's linked limiter (audio.mastering.limit_linked at
   −1 dBTP), because that is what users get; "identity" (y = x, limited too) is always evaluated.
   An engine that raises a MixdaemonError on a song is recorded (one line) and scored as y = x.
5. Scores per stem and for the multitrack sum of the four stems: L_MSS(y, gt) on L/R and on M/S
   (§4.3).

Summaries: the means over songs × seeds (multitrack), over songs × seeds × stems (stem) and over songs
× seeds per stem name, each with ratio = mean L_MSS(y, gt) / mean L_MSS(identity, gt): below 1 an
engine moved x toward the target, above 1 it moved it away.

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
from mixdaemon.evaluation import pedalboard_chain
from mixdaemon.evaluation.songs import (
    LEVELS,
    MSS_SCORES,
    MULTITRACK,
    REFERENCE_PEAK_DBTP,
    SEGMENT_SECONDS,
    build_engines,
    limited_conversion,
    load_stems,
    mean_scores,
    mss_scores,
    peak_trim_db,
    seconds_span,
    single_blas_thread,
    song_folders,
    stem_rng,
    with_multitrack,
    with_ratios,
)
from mixdaemon.progress import Progress, no_progress

PROTOCOL = ("raw: x = the raw first S seconds of the stems; gt and ref = one pedalboard chain per stem "
            "(EQ, compressor without make-up gain, reverb on about half the stems, width, pan, gain ±12 dB) "
            "on the first and on the next S seconds, trimmed together to -1.5 dBTP (sum of the stems); every "
            "output through the job's linked limiter at -1 dBTP; scores L_MSS(y, gt), ratio to identity")


@dataclass
class RawCase:
    """One song and seed of the protocol: x (raw A), gt (chains on A), ref (the same chains on B)."""

    song: str
    seed: int
    x: dict[str, np.ndarray]
    gt: dict[str, np.ndarray]
    ref: dict[str, np.ndarray]
    chains: dict[str, pedalboard_chain.PedalboardChain]
    trim_db: float


def segments(n_samples: int, segment_seconds: float) -> tuple[slice, slice]:
    """Segments A and B (step 1 of the module docstring) of a song of n_samples."""
    length = int(round(segment_seconds * WORKING_RATE))
    if n_samples < 2 * length:
        length = n_samples // 2
    return slice(0, length), slice(length, 2 * length)


def raw_case(song: str, stems: dict[str, np.ndarray], seed: int,
             segment_seconds: float = SEGMENT_SECONDS) -> RawCase:
    """Steps 1–3 of the module docstring for one song's stems and one seed."""
    a, b = segments(min(len(s) for s in stems.values()), segment_seconds)
    x = {name: stems[name][a] for name in STEM_NAMES}
    chains = {name: pedalboard_chain.draw(stem_rng(seed, song, name), rms_dbfs(stems[name][a.start:b.stop]))
              for name in STEM_NAMES}
    gt = {name: chains[name].apply(stems[name][a]) for name in STEM_NAMES}
    ref = {name: chains[name].apply(stems[name][b]) for name in STEM_NAMES}
    trim_db = peak_trim_db([gt, ref], REFERENCE_PEAK_DBTP)
    trim = np.float32(db_to_amp(trim_db))
    return RawCase(song, seed, x, {k: v * trim for k, v in gt.items()}, {k: v * trim for k, v in ref.items()},
                   chains, trim_db)


def score_case(engine, case: RawCase) -> tuple[dict[str, dict], list[str]]:
    """({stem or "multitrack": {lr, ms}}, failures) of one engine on one case (steps 4–5)."""
    y, failures = limited_conversion(engine, case.x, case.ref)
    y, gt = with_multitrack(y), with_multitrack(case.gt)
    return {k: mss_scores(y[k], gt[k]) for k in (*STEM_NAMES, MULTITRACK)}, failures


def summarize(cases: list[dict[str, dict]], baseline: list[dict[str, dict]]) -> dict:
    """Means over the cases (multitrack), cases × stems (stem) and per stem name, each with its
    L_MSS ratios to the identity row's (ratio of the means)."""
    def level(keys):
        return with_ratios(mean_scores(cases, keys, MSS_SCORES), mean_scores(baseline, keys, MSS_SCORES))
    return {**{name: level(keys) for name, keys in LEVELS.items()},
            "per_stem": {k: level((k,)) for k in STEM_NAMES}}


def evaluate_raw(songs_dir: str | Path, engines: list, seeds: Sequence[int] = (0,),
                 segment_seconds: float = SEGMENT_SECONDS, *, stats_path: str | Path | None = None,
                 backend: str = "torch", progress: Progress = no_progress) -> dict:
    """Run the protocol of the module docstring; engines are specs (anchors.engine_for) or engine
    objects (named by their .name). Returns the report (JSON-serialisable)."""
    with single_blas_thread():
        return _evaluate_raw(songs_dir, engines, list(dict.fromkeys(seeds)), segment_seconds, stats_path,
                             backend, progress)


def _evaluate_raw(songs_dir, engines, seeds, segment_seconds, stats_path, backend, progress) -> dict:
    folders = song_folders(songs_dir)
    built = build_engines(engines, stats_path, seeds[0], backend)
    report = {"protocol": PROTOCOL, "songs_dir": str(Path(songs_dir).resolve()), "seeds": seeds,
              "segment_seconds": segment_seconds, "reference_peak_dbtp": REFERENCE_PEAK_DBTP, "songs": {},
              "engines": {name: {"info": dict(engine.info), "seconds": 0.0, "failures": [], "songs": {}}
                          for name, engine in built.items()}}
    steps, done = len(folders) * len(seeds) * len(built), 0
    for folder in folders:
        stems = load_stems(folder)
        a, b = segments(min(len(s) for s in stems.values()), segment_seconds)
        song = report["songs"][folder.name] = {"segments_s": [seconds_span(a), seconds_span(b)], "seeds": {}}
        for seed in seeds:
            case = raw_case(folder.name, stems, seed, segment_seconds)
            song["seeds"][str(seed)] = {"trim_db": case.trim_db,
                                        "chains": {k: c.to_dict() for k, c in case.chains.items()}}
            for name, engine in built.items():
                progress(f"{name}: {folder.name} (seed {seed})", done / steps)
                entry = report["engines"][name]
                started = time.perf_counter()
                scores, failures = score_case(engine, case)
                entry["seconds"] = round(entry["seconds"] + time.perf_counter() - started, 2)
                entry["songs"].setdefault(folder.name, {})[str(seed)] = scores
                entry["failures"] += [f"{folder.name} (seed {seed}): {failure}" for failure in failures]
                done += 1
    baseline = _cases(report["engines"]["identity"])
    for entry in report["engines"].values():
        entry["summary"] = summarize(_cases(entry), baseline)
    progress("done", 1.0)
    return report


def _cases(entry: dict) -> list[dict[str, dict]]:
    """An engine's scores of every song and seed, in report order."""
    return [scores for per_seed in entry["songs"].values() for scores in per_seed.values()]


def format_table(report: dict) -> str:
    """The summary as a Markdown table: L_MSS ratios to identity (stem, multitrack, per stem name)."""
    def cell(value):
        return "–" if value is None else f"{value:.3f}"

    lines = ["| engine | ratio L/R stem | ratio L/R multitrack | ratio M/S stem / multitrack | "
             + " | ".join(f"{k} L/R" for k in STEM_NAMES) + " |", "|---" * (4 + len(STEM_NAMES)) + "|"]
    for name, entry in report["engines"].items():
        s = entry["summary"]
        lines.append(f"| {name} | {cell(s['stem']['ratio_lr'])} | {cell(s[MULTITRACK]['ratio_lr'])} "
                     f"| {cell(s['stem']['ratio_ms'])} / {cell(s[MULTITRACK]['ratio_ms'])} | "
                     + " | ".join(cell(s["per_stem"][k]["ratio_lr"]) for k in STEM_NAMES) + " |")
    return "\n".join(lines)
