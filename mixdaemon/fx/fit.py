"""Computing FX-normalization statistics (docs/ALGORITHMS.md §1.8) with the project's own code.

`fit(songs_dir, flavour)` works sequentially like the originals: feature 1 on the raw stems →
normalize every stem with it → feature 2 on the result → … (MST: eq → compression → imager →
loudness; FxNorm: eq → compression → panning → loudness). Curves are smoothed once when computed
(and used so for the in-between normalization, as the originals did) and once more for the returned
statistics, reproducing load-time smoothing. `fit_songs` does the same on audio in memory (the match
engine measures one reference song this way).
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np

from mixdaemon import __version__ as _version
from mixdaemon.audio import dsp
from mixdaemon.audio.io import is_audio_file, read_audio
from mixdaemon.errors import ConfigError, StemLayoutError
from mixdaemon.fx import normalization as fxnorm
from mixdaemon.fx.stats import FxStats, StemFxStats, smooth_curve
from mixdaemon.progress import Progress, no_progress

FIT_MIN_DB = -50.0   # §1.8: stems whose padded peak is at or below this are skipped when fitting
FIT_ORDERS = {
    "mst": ("eq", "compression", "imager", "loudness"),
    "fxnorm": ("eq", "compression", "panning", "loudness"),
}


def _feature(name: str, stem: str, x: np.ndarray):
    """One song's feature on a zero-padded stereo stem (§1.2–1.6); None when it cannot be measured."""
    if name == "eq":
        return fxnorm.stem_spectrum(x)
    if name == "compression":
        per_channel = [fxnorm.onset_peak_stat(c) for c in fxnorm.peak_normalize(x, fxnorm.COMP_PEAK_DB).T]
        if any(p is None for p in per_channel):
            return None
        return np.mean(np.asarray(per_channel), axis=0)
    if name == "imager":
        return dsp.mid_energy_fraction(x)
    if name == "panning":
        return fxnorm.stem_coherence_curve(x)
    return dsp.integrated_loudness(x)


def _step(name: str, stem: str, value, flavour: str, rng: np.random.Generator) -> fxnorm.Step:
    min_db = fxnorm.MIN_DB[flavour]
    if name == "eq":
        return fxnorm.EqMatch(value, min_db)
    if name == "compression":
        return fxnorm.CompressionMatch(value[0], value[1], fxnorm.COMP_SETTINGS[stem], min_db)
    if name == "imager":
        return fxnorm.ImagerMatch(value, fxnorm.HAAS_MONO_THRESHOLD.get(stem, fxnorm.HAAS_DEFAULT_MONO_THRESHOLD), rng)
    return fxnorm.PanningMatch(value, fxnorm.PAN_MAX_FREQ_HZ.get(stem, fxnorm.PAN_DEFAULT_MAX_FREQ_HZ))


def _song_folders(songs_dir: Path) -> dict[str, dict[str, Path]]:
    if not songs_dir.is_dir():
        raise StemLayoutError(f"{songs_dir}: not a folder of songs")
    songs = {}
    for folder in sorted(p for p in songs_dir.iterdir() if p.is_dir()):
        files = {p.stem.lower(): p for p in sorted(folder.iterdir())
                 if is_audio_file(p) and p.stem.lower() in fxnorm.STEM_NAMES}
        if files:
            songs[folder.name] = files
    if not songs:
        raise StemLayoutError(f"{songs_dir}: no song folders with {'/'.join(fxnorm.STEM_NAMES)} stems "
                              f"(expected SONG/drums.wav, SONG/bass.wav, ...)")
    return songs


def fit(songs_dir: str | Path, flavour: str = "mst", seed: int = 0, progress: Progress = no_progress) -> FxStats:
    """Compute statistics from songs_dir/SONG/{drums,bass,other,vocals}.wav (any readable format,
    resampled to 44.1 kHz) with this project's code, sequentially (§1.8). Stems that are all zeros or
    peak at or below −50 dBFS, and songs without onsets for the compression feature, are left out of
    that stem's mean. Raises StemLayoutError if a stem ends up with no usable song."""
    songs_dir = Path(songs_dir)
    songs = {song: {stem: read_audio(path).samples for stem, path in files.items()}
             for song, files in _song_folders(songs_dir).items()}
    return fit_songs(songs, flavour, seed, progress, source=str(songs_dir.resolve()))


# A reference stem without onsets (a pad, a drone) says nothing about dynamics: matching then
# accepts any onset-peak statistic, i.e. leaves the input's dynamics alone.
UNCONSTRAINED_COMPRESSION = (0.0, 200.0)


def fit_songs(songs: dict[str, dict[str, np.ndarray]], flavour: str = "mst", seed: int = 0,
              progress: Progress = no_progress, source: str = "songs in memory",
              require_all: bool = True) -> FxStats:
    """`fit` on audio already in memory: songs[name][stem] = (n, 2) float at 44.1 kHz.

    require_all=False (the matching engine, one reference song): a stem with no usable audio is
    left out of the statistics instead of raising, and one without onsets gets
    UNCONSTRAINED_COMPRESSION."""
    if flavour not in FIT_ORDERS:
        raise ConfigError(f"fxnorm flavour: {flavour!r} is not one of {sorted(FIT_ORDERS)}")
    audio = {(song, stem): fxnorm.as_stereo(x, f"{song} {stem}")
             for song, stems in songs.items() for stem, x in stems.items()}
    pad = fxnorm.STEP_PAD
    usable = {key for key, x in audio.items() if np.any(x) and dsp.db(dsp.peak(x)) > FIT_MIN_DB}
    values: dict[str, dict[str, object]] = {}
    used: dict[str, dict[str, int]] = {}
    order = FIT_ORDERS[flavour]
    fitted_stems = [stem for stem in fxnorm.STEM_NAMES
                    if require_all or any(k[1] == stem for k in usable)]
    for position, name in enumerate(order):
        values[name], used[name] = {}, {}
        for done, stem in enumerate(fitted_stems, start=position * len(fitted_stems) + 1):
            keys = [k for k in sorted(usable) if k[1] == stem]
            features = [f for f in (_feature(name, stem, np.pad(audio[k], ((pad, pad), (0, 0)))) for k in keys)
                        if f is not None]
            if not features and not require_all and keys and name == "compression":
                features = [np.asarray(UNCONSTRAINED_COMPRESSION)]
            if not features:
                raise StemLayoutError(f"{source}: no song has a usable {stem!r} stem for the {name} "
                                      f"statistic (missing, silent, or without onsets)")
            mean = np.mean(np.asarray(features, dtype=np.float64), axis=0)
            values[name][stem] = smooth_curve(name, stem, mean) if name in ("eq", "panning") else mean
            used[name][stem] = len(features)
            progress(f"{name} {stem}: {len(features)} songs", done / (len(order) * len(fitted_stems)))
            if position == len(order) - 1:
                continue
            for key in keys:   # normalize with this feature before measuring the next one
                rng = np.random.default_rng(fxnorm.stem_seed(seed, stem, audio[key]))
                step = _step(name, stem, values[name][stem], flavour, rng)
                audio[key] = fxnorm.StemNormalizer([step], fxnorm.MIN_DB[flavour])(audio[key])
    stems = {}
    for stem in fitted_stems:
        comp = values["compression"][stem]
        stems[stem] = StemFxStats(
            eq=smooth_curve("eq", stem, values["eq"][stem]),
            compression=(float(comp[0]), float(comp[1])),
            loudness=float(values["loudness"][stem]),
            imager=float(values["imager"][stem]) if flavour == "mst" else None,
            panning=smooth_curve("panning", stem, values["panning"][stem]) if flavour == "fxnorm" else None)
    metadata = {
        "source": f"mixdaemon fxnorm fit of {source} ({len(songs)} songs: {', '.join(songs)})",
        "songs": list(songs), "songs_used": used, "order": list(order), "seed": seed,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "mixdaemon_version": _version,
        "smoothing": "eq/panning smoothed when computed (as used between the fitting steps) and once more, "
                     "like the original loaders; stored as matched",
    }
    return FxStats(flavour, stems, metadata)
