"""The job's measurement pass: what engines fit their plans on (mixing/engine.py's Measured) and
the loudness and spectra a result reports, in memory that does not grow with the song.

A song up to ANALYSIS_SECONDS long is measured whole: its stems, held in memory, are the
excerpts, and a planning engine's fit is its render. A longer song is read once block by block:
per stem and for the stems' sum, the integrated loudness, the peak (is anything there?), the
long-term spectrum when a report asks for it, and the level of every second; then each stem's
excerpt is read, ANALYSIS_WINDOWS windows of ANALYSIS_WINDOW_SECONDS spread evenly over the
seconds where that stem is audible (a vocal that sings in the second half is measured there).
"""
from __future__ import annotations

from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, Protocol, TypeVar

import numpy as np

from mixdaemon import defaults
from mixdaemon.audio.dsp import WORKING_RATE, LoudnessMeter, SpectrumMeter
from mixdaemon.audio.mastering import sum_of
from mixdaemon.mixing.engine import Measured
from mixdaemon.progress import Progress, no_progress

Item = TypeVar("Item")

MIXTURE = "mixture"
SECOND = WORKING_RATE
AUDIBLE_BELOW_LOUDEST_DB = 40.0  # quieter seconds are not where a stem's sound is
SILENT_SECOND_DB = -70.0


class Tracks(Protocol):
    """Stems readable block by block and by spans: a song's files (audio/stems.py's SongSource) or
    stems in memory (InMemory)."""

    n_samples: int
    names: list[str]

    def blocks(self, block_samples: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]: ...

    def excerpt(self, name: str, spans: list[tuple[int, int]]) -> np.ndarray: ...


class InMemory:
    """Stems already in memory ((n, 2) float32 each, all one length) as Tracks."""

    def __init__(self, stems: dict[str, np.ndarray]):
        self.stems = {name: np.asarray(x, dtype=np.float32) for name, x in stems.items()}
        self.n_samples = next(iter(self.stems.values())).shape[0] if self.stems else 0
        self.names = list(self.stems)

    def blocks(self, block_samples: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        for start in range(0, max(self.n_samples, 1), block_samples):
            yield start, {name: x[start:start + block_samples] for name, x in self.stems.items()}

    def excerpt(self, name: str, spans: list[tuple[int, int]]) -> np.ndarray:
        x = self.stems[name]
        return x if spans == [(0, self.n_samples)] else np.concatenate([x[a:b] for a, b in spans])


class Meters:
    """Loudness, peak and (optionally) long-term spectrum of named tracks and of their sum (the
    mix), fed block by block; the tracks side by side in `pool` when one is given (the filters
    release the GIL)."""

    def __init__(self, names: list[str], spectra: bool = False, pool: Executor | None = None):
        self.names = [*names, MIXTURE]
        self.loudness = {name: LoudnessMeter() for name in self.names}
        self.spectra = {name: SpectrumMeter() for name in self.names} if spectra else None
        self.peaks = dict.fromkeys(self.names, 0.0)
        self.pool = pool

    def push(self, blocks: dict[str, np.ndarray], mixture: np.ndarray | None = None) -> None:
        """The tracks' next blocks; `mixture`: their sum when the caller has it already."""
        for metering in self.submit(blocks, mixture):
            metering.result()

    def submit(self, blocks: dict[str, np.ndarray], mixture: np.ndarray | None = None) -> list[Future]:
        """push() without waiting: the tracks' meters running in the pool (without one, done before
        this returns). The caller waits for them before it pushes the next blocks."""
        if mixture is None:
            mixture = sum_of(list(blocks.values())) if len(blocks) > 1 else next(iter(blocks.values()))
        tracks = [*blocks.items(), (MIXTURE, mixture)]
        if self.pool is None:
            for track in tracks:
                self._push_track(track)
            return []
        return [self.pool.submit(self._push_track, track) for track in tracks]

    def _push_track(self, track: tuple[str, np.ndarray]) -> None:
        name, block = track
        self.loudness[name].push(block)
        if self.spectra is not None:
            self.spectra[name].push(block)
        if block.size:
            self.peaks[name] = max(self.peaks[name], float(np.max(np.abs(block))))

    def lufs(self) -> dict[str, float]:
        return {name: round(meter.lufs, 2) for name, meter in self.loudness.items()}

    def spectra_db(self) -> dict[str, np.ndarray]:
        return {name: meter.spectrum_db() for name, meter in (self.spectra or {}).items()}


@dataclass
class Measurement:
    """A song's measurement: what plans fit on, and its meters (loudness, peaks, spectra)."""

    measured: Measured
    meters: Meters
    tracks: Tracks
    spans: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    @property
    def peak(self) -> float:
        return max(self.meters.peaks.values(), default=0.0)


def read_ahead(items: Iterator[Item]) -> Iterator[Item]:
    """`items` with the next one fetched in a thread of its own while the caller works on the
    current one: the files' blocks are decoded (libsndfile releases the GIL) while the last ones
    are filtered, limited and written. One item is held ahead, so memory grows by one block."""
    with ThreadPoolExecutor(max_workers=1) as reader:
        upcoming = reader.submit(next, items, None)
        while (item := upcoming.result()) is not None:
            upcoming = reader.submit(next, items, None)
            yield item


def measured_whole(stems: dict[str, np.ndarray]) -> Measured:
    """Whole stems in memory as what a plan fits on (their loudness measured where it is needed)."""
    return Measured({name: np.asarray(x, dtype=np.float32) for name, x in stems.items()}, {}, whole=True)


def analysis_spans(second_levels_db: np.ndarray, n_samples: int) -> list[tuple[int, int]]:
    """(start, stop) of the excerpt windows of a stem whose level per second these are: the whole
    stem when it is no longer than ANALYSIS_SECONDS; otherwise ANALYSIS_WINDOWS windows spread
    evenly over its audible seconds (all its seconds when none is audible)."""
    if n_samples <= defaults.ANALYSIS_SECONDS * WORKING_RATE:
        return [(0, n_samples)]
    width = int(defaults.ANALYSIS_WINDOW_SECONDS * WORKING_RATE)
    levels = np.asarray(second_levels_db)
    audible = np.flatnonzero(levels > max(levels.max(initial=-np.inf) - AUDIBLE_BELOW_LOUDEST_DB, SILENT_SECOND_DB))
    if audible.size == 0:
        audible = np.arange(levels.size)
    centres = audible[np.linspace(0, audible.size - 1, defaults.ANALYSIS_WINDOWS).round().astype(int)] * SECOND
    starts = np.unique(np.clip(centres + SECOND // 2 - width // 2, 0, n_samples - width))
    spans: list[tuple[int, int]] = []
    for s in starts.tolist():  # overlapping windows merge: no second is measured twice
        if spans and s <= spans[-1][1]:
            spans[-1] = (spans[-1][0], s + width)
        else:
            spans.append((s, s + width))
    return spans


def _second_energies(x: np.ndarray) -> np.ndarray:
    """The energy of each second of a (m, channels) block that starts on a second (the render
    blocks are whole seconds), the last second possibly short: one dot product per second over
    its contiguous samples, not one per sample row."""
    whole = x.shape[0] // SECOND * SECOND
    seconds = x[:whole].reshape(-1, SECOND * x.shape[1])
    energies = np.einsum("ij,ij->i", seconds, seconds, dtype=np.float64)
    if whole < x.shape[0]:
        rest = x[whole:].ravel()
        energies = np.append(energies, np.dot(rest, rest))
    return energies


def measure(tracks: Tracks, spectra: bool = False, progress: Progress = no_progress,
            pool: Executor | None = None) -> Measurement:
    """The song measured: whole when short, else in one pass of blocks and then excerpts; the
    meters run in `pool`."""
    n = tracks.n_samples
    if n <= defaults.ANALYSIS_SECONDS * WORKING_RATE:
        stems = {name: tracks.excerpt(name, [(0, n)]) for name in tracks.names}
        meters = Meters(list(stems), spectra, pool)
        meters.push(stems)
        progress("measured", 1.0)
        return Measurement(Measured(stems, meters.lufs(), whole=True), meters, tracks,
                           {name: [(0, n)] for name in stems})
    block = int(defaults.RENDER_BLOCK_SECONDS * WORKING_RATE)
    meters, energy = None, {}
    n_seconds = -(-n // SECOND)
    for start, blocks in read_ahead(tracks.blocks(block)):
        meters = meters or Meters(list(blocks), spectra, pool)
        meters.push(blocks)
        first = start // SECOND
        for name, x in blocks.items():
            per_second = _second_energies(x)
            energy.setdefault(name, np.zeros(n_seconds))[first:first + per_second.size] += per_second
        progress("measuring", min(1.0, (start + block) / n) * 0.8)
    seconds = {name: 10.0 * np.log10(np.maximum(e / SECOND, 1e-20)) for name, e in energy.items()}
    spans = {name: analysis_spans(levels, n) for name, levels in seconds.items()}
    excerpts = {name: tracks.excerpt(name, spans[name]) for name in spans}
    progress("measured", 1.0)
    lufs = meters.lufs()
    return Measurement(Measured(excerpts, {name: lufs[name] for name in excerpts}, whole=False), meters, tracks, spans)
