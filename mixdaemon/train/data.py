"""Training data for the MST networks (docs/ALGORITHMS.md §3.2, §4.2).

`StemLibrary` turns a folder of songs (MUSDB18 layout: song/{drums,bass,other,vocals}.wav) into
FX-normalized (order "mst_training"), clipped, silence-trimmed stems, computed once and cached as
``<cache>/<song>/<stem>_normalized_mst_training_silence_trimmed.npy`` (memory-mapped when read, so
data-loader workers share the pages). The cache is keyed on the statistics file's sha256, the
order, the trimming rule and the seed; a change re-normalizes.

Batches are pure functions of a numpy Generator: `encoder_batch` gives the contrastive pairs of
§3.2, `cloner_batch` the (input, target, reference) triplets of §4.2. Per stem, segments A and B
come from files drawn with probability ∝ length (with replacement) and uniform starts, so the four
stems of an item come from unrelated songs. The trainers seed the Generator from (run seed, step),
which makes every batch reproducible and a resumed run see exactly the batches an uninterrupted
one would.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from mixdaemon.audio.dsp import WORKING_RATE, db_to_amp
from mixdaemon.audio.stems import load_song
from mixdaemon.errors import ConfigError
from mixdaemon.files import atomic_write, file_sha256
from mixdaemon.fx.manipulator import MARGIN_SAMPLES, FXManipulator
from mixdaemon.fx.normalization import normalize_stems
from mixdaemon.fx.stats import FxStats
from mixdaemon.progress import Progress, no_progress

STEMS = ("drums", "bass", "other", "vocals")
NORMALIZE_ORDER = "mst_training"
TRIM_WINDOW = 4410          # 100 ms
TRIM_DBFS = -60.0           # [U→R] windows quieter than this (RMS, both channels) are dropped
CACHE_FORMAT = 1
CACHE_MANIFEST = "cache.json"


def trim_silence(x: np.ndarray, window: int = TRIM_WINDOW, threshold_dbfs: float = TRIM_DBFS) -> np.ndarray:
    """x without its 100-ms windows whose RMS over both channels is below threshold (a partial
    last window is judged on its own samples)."""
    n = len(x)
    if n == 0:
        return x
    starts = np.arange(0, n, window)
    power = np.add.reduceat(np.square(x, dtype=np.float64).sum(axis=1), starts) / (
        np.diff(np.append(starts, n)) * x.shape[1])
    keep = np.repeat(power >= db_to_amp(threshold_dbfs) ** 2, np.diff(np.append(starts, n)))
    return x[keep]


def song_folders(songs_dir: Path) -> list[Path]:
    if not songs_dir.is_dir():
        raise ConfigError(f"{songs_dir}: not a folder of songs")
    folders = [p for p in sorted(songs_dir.iterdir())
               if p.is_dir() and not p.name.startswith(".") and any(any(p.glob(f"{s}.*")) for s in STEMS)]
    if not folders:
        raise ConfigError(f"{songs_dir}: no song folders with {'/'.join(STEMS)} stems")
    return folders


def cached_songs(manifest: Path, key: dict, folders: list[Path], stats_path: Path,
                 prepare: Callable[[Path, FxStats], Any], progress: Progress = no_progress) -> dict:
    """{song name: what prepare(folder, stats) returned} for every folder, from the cache
    manifest file when it was made with the same `key`; songs not in it yet are prepared (statistics
    loaded once, on the first need) and the manifest rewritten after each, so an interrupted run
    keeps what it finished."""
    fresh = manifest.is_file() and json.loads(manifest.read_text()).get("key") == key
    songs = json.loads(manifest.read_text()).get("songs", {}) if fresh else {}
    stats = None
    for i, folder in enumerate(folders):
        if folder.name not in songs:
            stats = stats or FxStats.load(stats_path)
            songs[folder.name] = prepare(folder, stats)
            with atomic_write(manifest, "w") as f:  # an interrupt must not leave a manifest the next run cannot read
                json.dump({"key": key, "songs": songs}, f, indent=1)
        progress("normalizing songs", (i + 1) / len(folders))
    return songs


class StemLibrary:
    """Normalized, trimmed stems of a folder of songs, with length-weighted segment draws."""

    def __init__(self, songs_dir: str | Path, stats_path: str | Path, cache_dir: str | Path | None = None,
                 seed: int = 0, songs: list[str] | None = None, progress: Progress = no_progress):
        """songs: names of the song folders to use (default: all)."""
        self.songs_dir = Path(songs_dir)
        self.stats_path = Path(stats_path)
        self.cache_dir = Path(cache_dir) if cache_dir else self.songs_dir / ".mixdaemon-normalized"
        folders = song_folders(self.songs_dir)
        if songs is not None:
            missing = sorted(set(songs) - {f.name for f in folders})
            if missing:
                raise ConfigError(f"{self.songs_dir}: no song folder {', '.join(missing)}")
            folders = [f for f in folders if f.name in songs]
        key = {"format": CACHE_FORMAT, "order": NORMALIZE_ORDER, "stats_sha256": file_sha256(self.stats_path),
               "trim": [TRIM_WINDOW, TRIM_DBFS], "seed": seed}
        songs = cached_songs(self.cache_dir / CACHE_MANIFEST, key, folders, self.stats_path,
                             lambda folder, stats: self._normalize(folder, stats, seed), progress)
        self.key = key
        self.songs = [f.name for f in folders]
        # (path, length) of every usable stem file, per stem
        self.files = {stem: [(self.cache_dir / song / f"{stem}{self._suffix}", songs[song][stem])
                             for song in self.songs if songs[song].get(stem, 0) > 0] for stem in STEMS}
        empty = [stem for stem, files in self.files.items() if not files]
        if empty:
            raise ConfigError(f"{self.songs_dir}: no audible {', '.join(empty)} stem in any song")
        self._arrays: dict[Path, np.ndarray] = {}

    _suffix = f"_normalized_{NORMALIZE_ORDER}_silence_trimmed.npy"

    def _normalize(self, folder: Path, stats: FxStats, seed: int) -> dict[str, int]:
        stems = {}
        for stem in STEMS:
            found = sorted(folder.glob(f"{stem}.*"))
            if found:
                stems[stem] = load_song(found[:1]).stems[stem]
        normalized = normalize_stems(stems, stats, order=NORMALIZE_ORDER, seed=seed) if stems else {}
        lengths = {}
        (self.cache_dir / folder.name).mkdir(parents=True, exist_ok=True)
        for stem, audio in normalized.items():
            trimmed = trim_silence(np.clip(audio, -1.0, 1.0).astype(np.float32))
            with atomic_write(self.cache_dir / folder.name / f"{stem}{self._suffix}") as f:
                np.save(f, trimmed)
            lengths[stem] = int(len(trimmed))
        return lengths

    def seconds(self, stem: str) -> float:
        return sum(n for _, n in self.files[stem]) / WORKING_RATE

    def _array(self, path: Path) -> np.ndarray:
        if path not in self._arrays:
            self._arrays[path] = np.load(path, mmap_mode="r")
        return self._arrays[path]

    def _draw_file(self, stem: str, rng: np.random.Generator, length: int) -> tuple[Path, int]:
        """A file drawn ∝ length among those with at least `length` samples: (path, its length)."""
        files = [(p, n) for p, n in self.files[stem] if n >= length]
        if not files:
            raise ConfigError(f"{self.songs_dir}: no {stem} stem has {length} samples of audio after trimming "
                              f"(use shorter segments)")
        lengths = np.array([n for _, n in files], dtype=np.float64)
        return files[int(rng.choice(len(files), p=lengths / lengths.sum()))]

    def segment(self, stem: str, rng: np.random.Generator, length: int) -> np.ndarray:
        """`length` samples (float32 (length, 2)) of a file drawn ∝ length among those long enough,
        from a uniform start."""
        path, n = self._draw_file(stem, rng, length)
        start = int(rng.integers(0, n - length + 1))
        return np.array(self._array(path)[start:start + length], dtype=np.float32)

    def segments_of_one_file(self, stem: str, rng: np.random.Generator, lengths: tuple[int, int]
                             ) -> tuple[np.ndarray, np.ndarray]:
        """Two segments of these lengths that do not overlap, from one file drawn as in `segment`
        (two passages of one song's stem), in a random order within the file."""
        path, n = self._draw_file(stem, rng, sum(lengths))
        first = int(rng.integers(2))
        gaps = np.sort(rng.integers(0, n - sum(lengths) + 1, size=2))
        order = (first, 1 - first)
        starts = {order[0]: int(gaps[0]), order[1]: int(gaps[1]) + lengths[order[0]]}
        return tuple(np.array(self._array(path)[starts[i]:starts[i] + lengths[i]], dtype=np.float32) for i in (0, 1))


def manipulators(probabilities: Mapping[str, float] | None = None, ir_folder=None) -> dict[str, FXManipulator]:
    return {stem: FXManipulator(stem, probabilities, ir_folder) for stem in STEMS}


def _stack(segments: list[np.ndarray]) -> torch.Tensor:
    """(n, 2) arrays of one length → [B, 2, n] float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.stack(segments).transpose(0, 2, 1)))


@dataclass
class EncoderBatch:
    """Per group (the four stems and "mixture"): views A and B, [N, 2, ℓ_A] and [N, 2, ℓ_B] with
    N = items × (K+1) rows, item-major; row (i, m) of A and of B form a positive pair."""

    views: dict[str, tuple[torch.Tensor, torch.Tensor]]


def encoder_batch(library: StemLibrary, fx: Mapping[str, FXManipulator], rng: np.random.Generator,
                  items: int, length: int, strong_negatives: int = 1, mixture: bool = True) -> EncoderBatch:
    """§3.2: per stem and item, files A and B; K+1 manipulator calls on [A, B] give the rows. Crop
    lengths ℓ_A, ℓ_B ∈ U[L/2, L) are shared by the batch, crop starts are drawn per row and shared
    by the stems of a row, so that the mixture (sum of the row's four manipulated stems) lines up."""
    padded = length + 2 * MARGIN_SAMPLES
    rows = items * (strong_negatives + 1)
    a_rows: dict[str, list[np.ndarray]] = {stem: [] for stem in STEMS}
    b_rows: dict[str, list[np.ndarray]] = {stem: [] for stem in STEMS}
    for stem in STEMS:
        for _ in range(items):
            a, b = library.segment(stem, rng, padded), library.segment(stem, rng, padded)
            for _ in range(strong_negatives + 1):
                (a_m, b_m), _ = fx[stem].manipulate([a, b], rng, padded=True)
                a_rows[stem].append(a_m)
                b_rows[stem].append(b_m)
    crop_a, crop_b = (int(rng.integers(length // 2, length)) for _ in range(2))
    starts_a = rng.integers(0, length - crop_a + 1, size=rows)
    starts_b = rng.integers(0, length - crop_b + 1, size=rows)

    def cropped(signals, starts, crop):
        return [s[o:o + crop] for s, o in zip(signals, starts)]

    views = {stem: (_stack(cropped(a_rows[stem], starts_a, crop_a)), _stack(cropped(b_rows[stem], starts_b, crop_b)))
             for stem in STEMS}
    if mixture:
        views["mixture"] = (sum(views[stem][0] for stem in STEMS), sum(views[stem][1] for stem in STEMS))
    return EncoderBatch(views)


@dataclass
class ClonerBatch:
    """§4.2 triplets, [4·items, 2, L] each, stem-major: input A1 (normalized A, unmanipulated),
    target A2 (manipulated A) and reference B2 (B with the same draws)."""

    input: torch.Tensor
    target: torch.Tensor
    reference: torch.Tensor


def cloner_batch(library: StemLibrary, fx: Mapping[str, FXManipulator], rng: np.random.Generator,
                 items_per_stem: int, length: int) -> ClonerBatch:
    inputs, targets, references = [], [], []
    padded = length + 2 * MARGIN_SAMPLES
    for stem in STEMS:
        for _ in range(items_per_stem):
            a, b = library.segment(stem, rng, padded), library.segment(stem, rng, padded)
            (a2, b2), _ = fx[stem].manipulate([a, b], rng, padded=True)
            inputs.append(a[MARGIN_SAMPLES:MARGIN_SAMPLES + length])
            targets.append(a2)
            references.append(b2)
    return ClonerBatch(_stack(inputs), _stack(targets), _stack(references))


HOLDOUT_EVERY = 8  # without a validation folder, every 8th song (sorted by name) validates


def libraries(songs_dir: str | Path, val_dir: str | Path | None, stats_path: str | Path,
              cache_dir: str | Path | None = None, seed: int = 0,
              progress: Progress = no_progress, library_class: type = StemLibrary):
    """(training library, validation library): val_dir's songs, or every HOLDOUT_EVERY-th song of
    songs_dir held out from training. library_class: StemLibrary, or another class with its
    constructor (train.automix.MultitrackLibrary)."""
    def report(what: str) -> Progress:
        return lambda stage, fraction: progress(what, fraction)
    if val_dir is not None:
        val_cache = Path(cache_dir) / "validation" if cache_dir else None
        return (library_class(songs_dir, stats_path, cache_dir, seed, progress=report("normalizing training songs")),
                library_class(val_dir, stats_path, val_cache, seed, progress=report("normalizing validation songs")))
    names = [f.name for f in song_folders(Path(songs_dir))]
    held_out = names[HOLDOUT_EVERY - 1::HOLDOUT_EVERY]
    if not held_out:
        raise ConfigError(f"{songs_dir}: fewer than {HOLDOUT_EVERY} songs, too few to hold some out for "
                          "validation; give a validation folder")
    train = library_class(songs_dir, stats_path, cache_dir, seed, [n for n in names if n not in held_out],
                          progress=report("normalizing songs"))
    return train, library_class(songs_dir, stats_path, cache_dir, seed, held_out)
