"""One style-transfer job, top to bottom: the API that the CLI and the daemon both call.

    load input and reference (audio/stems.py) → separate mixtures into stems (mixing/separation.py)
    → the engine converts each input stem toward the reference's mixing style (mixing/match.py,
      mixing/neural.py, mixing/param.py) → linked true-peak limiting and remix (audio/mastering.py)
    → atomic writes (audio/io.py) → the param engine's FX settings as fx_params.json (fx/chain.py)

`transfer()` returns a TransferResult that the CLI prints and the daemon turns into a job manifest
and, from the spectra it asks for, a report.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mixdaemon import defaults
from mixdaemon.audio.dsp import average_spectrum_db, loudness_lufs
from mixdaemon.audio.io import write_audio
from mixdaemon.audio.mastering import limit_linked
from mixdaemon.audio.stems import SILENCE_DBFS, STEM_NAMES, Song, load_song
from mixdaemon.errors import MixdaemonError
from mixdaemon.fx.chain import FX_PARAMS_NAME, write_fx_params
from mixdaemon.mixing.engine import REFERENCE_B
from mixdaemon.mixing.factory import make_engine
from mixdaemon.mixing.settings import TransferSettings
from mixdaemon.progress import Progress, no_progress, span


@dataclass
class TransferResult:
    outputs: dict[str, str]
    engine: str
    model: dict = field(default_factory=dict)
    loudness_before: dict[str, float] = field(default_factory=dict)
    loudness_after: dict[str, float] = field(default_factory=dict)
    reference_loudness: dict[str, float] = field(default_factory=dict)
    true_peak_dbtp: float = float("-inf")
    seconds_audio: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    fx_params: str | None = None  # the param engine's fx_params.json (settings per stem, user units)
    # One line each, also logged: files given but not used, outputs not in the inputs' format
    notes: list[str] = field(default_factory=list)
    # With transfer(spectra=True): {"before" | "after" | "reference": {track: average_spectrum_db}},
    # the tracks being the stems and the mixture.
    spectra: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def _loudness_tables(*tables: dict[str, np.ndarray]) -> list[dict[str, float]]:
    """Integrated loudness per track of each table, None-free (silence reads as -70 LUFS, the
    absolute gate); the tracks measured in parallel (the K-weighting filter releases the GIL)."""
    tracks = [x for table in tables for x in table.values()]
    with ThreadPoolExecutor(max_workers=defaults.job_threads()) as pool:
        values = iter(pool.map(loudness_lufs, tracks))
    return [{name: round(next(values), 2) for name in table} for table in tables]


def _with_mixture(song: Song) -> dict[str, np.ndarray]:
    """A loaded song's tracks as the user gave them: its stems and their sum, or its mixture."""
    if song.mixture is not None:
        return {"mixture": song.mixture}
    return {**song.stems, "mixture": np.sum(list(song.stems.values()), axis=0)}


def spectra_of(**tracks: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """{label: {track: average_spectrum_db}} of named groups of tracks (before, after, reference)."""
    return {label: {name: average_spectrum_db(x) for name, x in named.items()} for label, named in tracks.items()}


def _as_stems(song: Song, what: str, settings: TransferSettings, progress: Progress) -> dict[str, np.ndarray]:
    if song.mixture is None:
        return song.stems
    from mixdaemon.mixing.separation import (
        Separator,  # demucs and its model load only when a mixture needs it
    )

    separator = Separator(settings.separation_model, model_dir=settings.separation_dir)
    return separator.separate(song.mixture, progress=span(progress, 0.0, 1.0, f"separating {what}"))


def check_output_folder(out_dir: Path, input_files: list[str], overwrite: bool,
                        fx_params: bool = False) -> list[Path]:
    """The files this job will write (with fx_params: also fx_params.json); refuse to replace an
    input, or existing outputs unless told."""
    targets = [out_dir / f"{name}.wav" for name in (*STEM_NAMES, "mixture")]
    if fx_params:
        targets.append(out_dir / FX_PARAMS_NAME)
    inputs = {Path(p).resolve() for p in input_files}
    for t in targets:
        if t.resolve() in inputs:
            raise MixdaemonError(f"{t}: is one of the input files; choose another output folder")
        if t.exists() and not overwrite:
            raise MixdaemonError(f"{t}: already exists; choose another output folder or pass --overwrite")
    return targets


def transfer(input_path: str | os.PathLike, reference_path: str | os.PathLike, out_dir: str | os.PathLike,
             settings: TransferSettings | None = None, progress: Progress = no_progress,
             overwrite: bool = False, engine=None,
             reference_b_path: str | os.PathLike | None = None, spectra: bool = False) -> TransferResult:
    """Convert the input song's stems to the reference's mixing style and write them to out_dir.

    With `reference_b_path`, the style fades from the reference at the start of the song to
    reference B at its end (engines that support it: neural).

    `engine` lets a long-lived caller (the daemon) pass an engine it already built, so models load
    once; otherwise one is made from settings. With `spectra`, the result also holds each track's
    long-term average spectrum before, after and in the reference (what the daemon's report draws),
    measured on the audio in memory.
    """
    settings = settings or TransferSettings()
    timings: dict[str, float] = {}
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    # The job's share of the bar: reading 0–5 %, separating mixtures (when there are any) up to
    # 45 %, converting up to 88 %, limiting, writing and measuring the rest.
    song = load_song(input_path, progress=span(progress, 0.0, 0.03, "reading input"))
    reference = load_song(reference_path, progress=span(progress, 0.03, 0.02, "reading reference"))
    reference_b = load_song(reference_b_path) if reference_b_path is not None else None
    protected = song.input_files + reference.input_files + (reference_b.input_files if reference_b else [])
    check_output_folder(out_dir, protected, overwrite, fx_params=settings.engine == "param")
    for what, path, loaded in (("input", input_path, song), ("reference", reference_path, reference)):
        if loaded.is_silent:
            raise MixdaemonError(f"{path}: the {what} is silent (every sample below {SILENCE_DBFS:g} dBFS); "
                                 "nothing to convert")
    timings["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    mixtures = [s for s in (song, reference, reference_b) if s is not None and s.mixture is not None]
    share = 0.4 / max(1, len(mixtures))
    at = iter(0.05 + share * i for i in range(len(mixtures)))

    def separated(loaded: Song | None, what: str) -> dict[str, np.ndarray] | None:
        if loaded is None:
            return None
        return _as_stems(loaded, what, settings, span(progress, next(at), share) if loaded.mixture is not None
                         else no_progress)
    input_stems = separated(song, "input")
    reference_stems = separated(reference, "reference")
    reference_b_stems = separated(reference_b, "reference B")
    converting_from = 0.05 + 0.4 * bool(mixtures)
    timings["separate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    engine = engine or make_engine(settings)
    if reference_b_stems is not None and REFERENCE_B not in engine.capabilities:
        raise MixdaemonError(f"the {settings.engine} engine cannot fade between two references; use --engine neural")
    conversion = engine.convert(input_stems, reference_stems, reference_b_stems=reference_b_stems,
                                progress=span(progress, converting_from, 0.88 - converting_from))
    converted = conversion.stems
    timings["convert"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    progress("limiting", 0.88)
    limited, mixture, mixture_true_peak = limit_linked(converted, settings.ceiling_dbtp)
    formats, output_notes = song.output_formats({**limited, "mixture": mixture})
    outputs = {}
    for i, (name, samples) in enumerate((*limited.items(), ("mixture", mixture))):
        progress(f"writing {name}", 0.92 + 0.01 * i)
        path = write_audio(out_dir / f"{name}.wav", samples, out_rate=formats[name].rate,
                           channels=formats[name].channels, subtype=settings.subtype, protected=protected)
        outputs[name] = str(path)
    fx_params = None
    if conversion.chains is not None:
        # The controls beside the engine: whoever applies the chains sees how far they were asked
        # to move (amount, stem_amount) and which aspects they were allowed to move (match).
        fx_params = str(write_fx_params(out_dir / FX_PARAMS_NAME, conversion.chains,
                                        {**engine.info, **settings.controls().as_dict()}))
    timings["write"] = time.perf_counter() - t0
    measured = {}
    if spectra:
        t0 = time.perf_counter()
        progress("measuring spectra", 0.97)
        measured = spectra_of(before=_with_mixture(song), after={**limited, "mixture": mixture},
                            reference=_with_mixture(reference))
        timings["spectra"] = time.perf_counter() - t0
    progress("measuring loudness", 0.98)
    before, after, reference_loudness = _loudness_tables(
        {**input_stems, "mixture": np.sum(list(input_stems.values()), axis=0)},
        {**limited, "mixture": mixture}, {**reference_stems, "mixture": np.sum(list(reference_stems.values()), axis=0)})
    progress("done", 1.0)
    return TransferResult(
        outputs=outputs, engine=settings.engine, model=engine.info,
        loudness_before=before, loudness_after=after, reference_loudness=reference_loudness,
        true_peak_dbtp=round(mixture_true_peak, 2), seconds_audio=round(song.n_samples / 44100, 3),
        timings={k: round(v, 3) for k, v in timings.items()}, fx_params=fx_params, spectra=measured,
        notes=[*song.notes, *reference.notes, *(reference_b.notes if reference_b else []), *output_notes])
