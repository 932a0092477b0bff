"""One style-transfer job, top to bottom: the API that the CLI and the daemon both call.

    open input and reference (audio/stems.py) → separate mixtures into stems (mixing/separation.py)
    → measure each song (mixing/measure.py: whole when short, else one pass and excerpts)
    → the engine plans each input stem's conversion toward the reference's mixing style on those
      measurements (mixing/match.py, mixing/param.py, mixing/neural.py)
    → render: the planned effects, the linked true-peak limiter (audio/mastering.py) and the writers
      (audio/io.py, atomic), block by block over the whole song, the loudness meters fed on the way
    → the param engine's FX settings as fx_params.json (fx/chain.py)

Memory is bounded by the measurement and one block, not by the song's length; a fade to a second
reference (the neural engine's --reference-b) holds the song (up to defaults.NEURAL_MAX_MINUTES),
as does separating a mixture. `transfer()` returns a TransferResult that the CLI prints and the daemon turns into a job
manifest and, from the spectra it asks for, a report.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mixdaemon import defaults
from mixdaemon.audio.dsp import WORKING_RATE
from mixdaemon.audio.io import AudioWriter
from mixdaemon.audio.mastering import LinkedLimiter
from mixdaemon.audio.stems import SILENCE_DBFS, STEM_NAMES, SongSource, open_song
from mixdaemon.audio.streams import Streamable
from mixdaemon.errors import MixdaemonError
from mixdaemon.fx.chain import FX_PARAMS_NAME, write_fx_params
from mixdaemon.mixing.engine import PLANS, REFERENCE_B
from mixdaemon.mixing.factory import make_engine
from mixdaemon.mixing.measure import InMemory, Measurement, Meters, Tracks, measure, read_ahead
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


def _tracks(song: SongSource, what: str, settings: TransferSettings, progress: Progress) -> Tracks:
    """A song's stems as Tracks: its files, or its mixture separated (in memory)."""
    if song.mixture is None:
        return song
    from mixdaemon.mixing.separation import (
        Separator,  # demucs and its model load only when a mixture needs it
    )

    mixture = song.mixture.read_all()
    _refuse_silence(float(np.max(np.abs(mixture), initial=0.0)), song, what)
    separator = Separator(settings.separation_model, model_dir=settings.separation_dir)
    return InMemory(separator.separate(mixture, progress=span(progress, 0.0, 1.0, f"separating {what}")))


def _refuse_silence(peak: float, song: SongSource, what: str) -> None:
    if peak < 10 ** (SILENCE_DBFS / 20):
        raise MixdaemonError(f"{song.path}: the {what} is silent (every sample below {SILENCE_DBFS:g} dBFS); "
                             "nothing to convert")


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
    measured on the blocks as they pass.
    """
    with ThreadPoolExecutor(max_workers=defaults.job_threads()) as pool:
        return _transfer(input_path, reference_path, out_dir, settings or TransferSettings(), progress, overwrite,
                         engine, reference_b_path, spectra, pool)


def _transfer(input_path, reference_path, out_dir, settings: TransferSettings, progress: Progress, overwrite: bool,
              engine, reference_b_path, spectra: bool, pool: Executor) -> TransferResult:
    """transfer()'s job, its stems and meters side by side in `pool`."""
    timings: dict[str, float] = {}
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    song = open_song(input_path)
    reference = open_song(reference_path)
    reference_b = open_song(reference_b_path) if reference_b_path is not None else None
    protected = song.input_files + reference.input_files + (reference_b.input_files if reference_b else [])
    check_output_folder(out_dir, protected, overwrite, fx_params=settings.engine == "param")
    # Every engine shipped plans; a fade to a second reference is converted whole, in memory.
    planning = reference_b is None and (PLANS in engine.capabilities if engine is not None else True)
    # Refused before any work: the engine is built after the separation, so without one given its
    # capability is read off its kind (only the neural engine fades).
    fades = REFERENCE_B in engine.capabilities if engine is not None else settings.engine == "neural"
    if reference_b is not None and not fades:
        raise MixdaemonError(f"the {settings.engine} engine cannot fade between two references; use --engine neural")
    if not planning and song.n_samples > defaults.NEURAL_MAX_MINUTES * 60 * WORKING_RATE:
        raise MixdaemonError(f"{song.path}: {song.n_samples / WORKING_RATE / 60:.1f} minutes long; the "
                             f"fade to a second reference is converted in memory, up to "
                             f"{defaults.NEURAL_MAX_MINUTES} minutes: leave out --reference-b")
    timings["open"] = time.perf_counter() - t0

    # The job's share of the bar: separating mixtures (when there are any) up to 40 %, measuring
    # to 45 %, planning (for a short song the plan is the render) and rendering the rest.
    t0 = time.perf_counter()
    mixtures = [s for s in (song, reference, reference_b) if s is not None and s.mixture is not None]
    share = 0.4 / max(1, len(mixtures))
    at = iter(share * i for i in range(len(mixtures)))

    def tracks_of(loaded: SongSource, what: str) -> Tracks:
        return _tracks(loaded, what, settings, span(progress, next(at), share) if loaded.mixture is not None
                       else no_progress)
    input_tracks, reference_tracks = tracks_of(song, "input"), tracks_of(reference, "reference")
    reference_b_tracks = tracks_of(reference_b, "reference B") if reference_b is not None else None
    timings["separate"] = time.perf_counter() - t0
    measuring_from = 0.4 * bool(mixtures)

    t0 = time.perf_counter()
    # Input and reference side by side (their meters share the pool); the bar follows the input.
    with ThreadPoolExecutor(max_workers=1) as side:
        measuring_reference = side.submit(measure, reference_tracks, spectra, no_progress, pool)
        measured = measure(input_tracks, spectra, span(progress, measuring_from, 0.05, "reading"), pool)
        reference_measured = measuring_reference.result()
    _refuse_silence(measured.peak, song, "input")
    _refuse_silence(reference_measured.peak, reference, "reference")
    timings["measure"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    engine = engine or make_engine(settings)
    planning_from = measuring_from + 0.05
    render_from = 0.85 if measured.measured.whole or not planning else planning_from + 0.3
    plan_progress = span(progress, planning_from, render_from - planning_from)
    chains, effects, render_tracks = None, {}, input_tracks
    if planning:
        plan = engine.plan(measured.measured, reference_measured.measured, progress=plan_progress)
        chains = plan.chains
        if plan.rendered is not None:
            render_tracks = InMemory(plan.rendered)
        else:
            effects = plan.effects
    else:
        whole = measured.measured.excerpts if measured.measured.whole else \
            {name: input_tracks.excerpt(name, [(0, input_tracks.n_samples)]) for name in input_tracks.names}
        reference_b_stems = None if reference_b_tracks is None else measure(reference_b_tracks).measured.excerpts
        conversion = engine.convert(whole, reference_measured.measured.excerpts, reference_b_stems=reference_b_stems,
                                    progress=plan_progress)
        chains, render_tracks = conversion.chains, InMemory(conversion.stems)
    timings["convert"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    after = Meters(list(render_tracks.names), spectra, pool)
    outputs, widened, true_peak = _render(render_tracks, effects, song, out_dir, settings, protected, after, pool,
                                          span(progress, render_from, 0.98 - render_from))
    fx_params = None
    if chains is not None:
        # The controls beside the engine: whoever applies the chains sees how far they were asked
        # to move (amount, stem_amount) and which aspects they were allowed to move (match).
        fx_params = str(write_fx_params(out_dir / FX_PARAMS_NAME, chains,
                                        {**engine.info, **settings.controls().as_dict()}))
    timings["render"] = time.perf_counter() - t0
    progress("done", 1.0)
    return TransferResult(
        outputs=outputs, engine=settings.engine, model=engine.info,
        loudness_before=measured.meters.lufs(), loudness_after=after.lufs(),
        reference_loudness=reference_measured.meters.lufs(),
        true_peak_dbtp=round(true_peak, 2), seconds_audio=round(song.n_samples / WORKING_RATE, 3),
        timings={k: round(v, 3) for k, v in timings.items()}, fx_params=fx_params,
        spectra=_spectra(measured, after, reference_measured) if spectra else {},
        notes=[*song.notes, *reference.notes, *(reference_b.notes if reference_b else []),
               *song.output_notes(widened)])


def _spectra(measured: Measurement, after: Meters, reference: Measurement) -> dict[str, dict[str, np.ndarray]]:
    return {"before": measured.meters.spectra_db(), "after": after.spectra_db(),
            "reference": reference.meters.spectra_db()}


def _render(tracks: Tracks, effects: dict[str, Streamable | None], song: SongSource, out_dir: Path,
            settings: TransferSettings, protected: list[str], after: Meters, pool: Executor,
            progress: Progress) -> tuple[dict[str, str], list[str], float]:
    """Render the song block by block: each stem through its effect (none: as it is), the linked
    limiter over all of them, each limited stem and their sum written and metered. The written
    paths, the tracks written in stereo although their files were mono, and the mix's true peak."""
    n, names = tracks.n_samples, list(tracks.names)
    streams = {name: effects[name].stream(n) for name in names if effects.get(name) is not None}
    limiter = LinkedLimiter(settings.ceiling_dbtp).stream(n)
    # Effects with different look-aheads give their output in different amounts per block; the
    # limiter takes the stems in step, so what runs ahead waits here.
    waiting: dict[str, list[np.ndarray]] = {name: [] for name in names}
    block = int(defaults.RENDER_BLOCK_SECONDS * WORKING_RATE)
    # The last block's writes and meters run while the next block is read, converted and limited;
    # they are waited for before the next block's, so every file and meter gets its blocks in order.
    finishing: list[Future] = []
    with ExitStack() as files:
        writers = {name: files.enter_context(AudioWriter(out_dir / f"{name}.wav", **song.output_format(name),
                                                         subtype=settings.subtype, protected=protected))
                   for name in (*names, "mixture")}
        files.callback(_wait_for, finishing)  # also when the job fails: no write outlives its file
        for start, blocks in read_ahead(tracks.blocks(block)):
            last = start + block >= n
            # the stems side by side, then the writers (resampling, encoding) and the meters: the
            # filters, FFTs and libsndfile release the GIL
            rendered = pool.map(lambda item: streams[item[0]].push(item[1], last) if item[0] in streams else item[1],
                                blocks.items())
            for name, y in zip(blocks, rendered):
                waiting[name].append(y)
            ready = min(sum(part.shape[0] for part in parts) for parts in waiting.values())
            in_step = {name: _take(waiting[name], ready) for name in names}
            limited, mixture = limiter.push(in_step, last)
            _wait_for(finishing)
            finishing[:] = [*(pool.submit(writers[name].write, y) for name, y in [*limited.items(), ("mixture", mixture)]),
                            *after.submit(limited, mixture)]
            progress("rendering" if not last else "writing", min(1.0, (start + block) / max(n, 1)))
    outputs = {name: str(writer.path) for name, writer in writers.items()}
    widened = [name for name, writer in writers.items() if writer.widened]
    return outputs, widened, limiter.true_peak_dbtp


def _wait_for(running: list[Future]) -> None:
    """Wait for every one of `running`, then raise the first error among them."""
    errors = [f.exception() for f in running]
    running.clear()
    for error in errors:
        if error is not None:
            raise error


def _take(parts: list[np.ndarray], count: int) -> np.ndarray:
    """The first `count` samples of the queued blocks, removed from the queue."""
    joined = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    parts[:] = [joined[count:]] if joined.shape[0] > count else []
    return joined[:count]
