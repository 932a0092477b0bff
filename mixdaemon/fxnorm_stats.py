"""FX-normalization statistics (ALGORITHMS.md §1.2–1.8): the per-stem targets that
mixdaemon.fxnorm matches, their files, and computing them from a folder of songs.

Files read by `FxStats.load`:
- the originals' pickled .npy dicts (`np.load(p, allow_pickle=True)[()]`, {feature: {stem: value}}):
  MST's mst_musdb18_fxfeatures_eqcompimagegain.npy (eq, compression, imager, loudness) and
  FxNorm-automix's features_MUSDB18.npy (eq, compression, panning, loudness). Both original loaders
  Savitzky–Golay smooth the eq and panning curves *again* after loading (the files already hold
  smoothed curves); we do the same (`smooth_curves`), so the targets equal the ones the released code
  matches against. That mostly reshapes the steep low-frequency edge of the EQ curves.
- the project's own .npz (written by `FxStats.save`): curves exactly as matched (no smoothing at
  load), plus JSON metadata: what the statistics were computed from, in which order, when, by what.

`fit(songs_dir, flavour)` computes statistics with the project's own code, sequentially like the
originals (§1.8): feature 1 on the raw stems → normalize every stem with it → feature 2 on the
result → … (MST: eq → compression → imager → loudness; FxNorm: eq → compression → panning →
loudness). Curves are smoothed once when computed (and used so for the in-between normalization, as
the originals did) and once more for the returned statistics, reproducing load-time smoothing.
"""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import signal

from . import __version__ as _version
from . import dsp, fxnorm
from .audio import is_audio_file, read_audio
from .errors import ConfigError, StemLayoutError

N_BINS = fxnorm.FFT_SIZE // 2 + 1
FIT_MIN_DB = -50.0   # §1.8: stems whose padded peak is at or below this are skipped when fitting
FIT_ORDERS = {
    "mst": ("eq", "compression", "imager", "loudness"),
    "fxnorm": ("eq", "compression", "panning", "loudness"),
}
FORMAT_VERSION = 1


def _eq_window(stem: str) -> int:
    return 401 if stem in ("vocals", "other") else 151


def smooth_curve(feature: str, stem: str, curve: np.ndarray) -> np.ndarray:
    """The originals' Savitzky–Golay smoothing (polyorder 1, mirror): eq with a 401-bin window for
    vocals/other and 151 for drums/bass, panning with 501."""
    window = _eq_window(stem) if feature == "eq" else 501
    return signal.savgol_filter(np.asarray(curve, dtype=np.float64), window, 1, mode="mirror").astype(np.float32)


@dataclass
class StemFxStats:
    """Targets for one stem. eq: float32[32769] linear raw-FFT magnitude at −30 LUFS (bin k ↔
    k·44100/65536 Hz); compression: (μ, σ) dB of the onset-peak statistic; loudness: LUFS;
    imager: mid-energy fraction (MST) or panning: float32[32769] mean L/R coherence (FxNorm)."""

    eq: np.ndarray
    compression: tuple[float, float]
    loudness: float
    imager: float | None = None
    panning: np.ndarray | None = None


@dataclass
class FxStats:
    flavour: str                                   # "mst" (imager) or "fxnorm" (panning)
    stems: dict[str, StemFxStats]
    metadata: dict = field(default_factory=dict)   # source, order, created, ...

    @property
    def source(self) -> str:
        return str(self.metadata.get("source", "these statistics"))

    # --- files -----------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> "FxStats":
        """Read an original .npy statistics file (MST or FxNorm-automix) or a project .npz."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: FX-normalization statistics file not found")
        if path.suffix == ".npz":
            return cls._load_npz(path)
        try:
            raw = np.load(path, allow_pickle=True)[()]
        except Exception as exc:
            raise ConfigError(f"{path}: not a readable statistics file ({exc})") from None
        if not isinstance(raw, dict) or not {"eq", "compression", "loudness"} <= set(raw):
            raise ConfigError(f"{path}: expected a dict with eq/compression/loudness and imager or panning, "
                              f"got {type(raw).__name__} with keys {sorted(raw) if isinstance(raw, dict) else '-'}")
        flavour = "mst" if "imager" in raw else "fxnorm" if "panning" in raw else None
        if flavour is None:
            raise ConfigError(f"{path}: statistics have neither 'imager' (MST) nor 'panning' (FxNorm)")
        stems = {}
        for stem in raw["eq"]:
            try:
                stems[stem] = StemFxStats(
                    eq=smooth_curve("eq", stem, raw["eq"][stem]),
                    compression=(float(raw["compression"][stem][0]), float(raw["compression"][stem][1])),
                    loudness=float(np.ravel(raw["loudness"][stem])[0]),
                    imager=float(np.ravel(raw["imager"][stem])[0]) if flavour == "mst" else None,
                    panning=smooth_curve("panning", stem, raw["panning"][stem]) if flavour == "fxnorm" else None)
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                raise ConfigError(f"{path}: stem {stem!r} has incomplete statistics ({exc!r})") from None
        stats = cls(flavour, stems, {"source": str(path), "format": "original .npy (pickled dict)",
                                     "smoothing": "eq/panning Savitzky–Golay smoothed again at load, as the "
                                                  "original loaders do"})
        stats._check(path)
        return stats

    @classmethod
    def _load_npz(cls, path: Path) -> "FxStats":
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except Exception as exc:
            raise ConfigError(f"{path}: not a readable .npz statistics file ({exc})") from None
        try:
            metadata = json.loads(str(arrays["metadata"]))
            flavour = metadata["flavour"]
            stems = {}
            for stem in metadata["stems"]:
                stems[stem] = StemFxStats(
                    eq=arrays[f"{stem}/eq"].astype(np.float32),
                    compression=tuple(float(v) for v in arrays[f"{stem}/compression"]),
                    loudness=float(arrays[f"{stem}/loudness"]),
                    imager=float(arrays[f"{stem}/imager"]) if flavour == "mst" else None,
                    panning=arrays[f"{stem}/panning"].astype(np.float32) if flavour == "fxnorm" else None)
        except (KeyError, ValueError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: incomplete mixdaemon statistics file (missing or bad {exc})") from None
        metadata["source"] = metadata.get("source", str(path))
        stats = cls(flavour, stems, metadata)
        stats._check(path)
        return stats

    def save(self, path: str | Path) -> Path:
        """Write the project .npz: one array per stem and feature, plus JSON metadata (flavour,
        stems, what it was computed from, fitting order, creation date, mixdaemon version)."""
        path = Path(path)
        metadata = dict(self.metadata)
        metadata.update(flavour=self.flavour, stems=list(self.stems), format_version=FORMAT_VERSION,
                        stored_curves="as matched: no smoothing at load")
        metadata.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        arrays = {"metadata": np.array(json.dumps(metadata, sort_keys=True))}
        for stem, s in self.stems.items():
            arrays[f"{stem}/eq"] = np.asarray(s.eq, dtype=np.float32)
            arrays[f"{stem}/compression"] = np.asarray(s.compression, dtype=np.float64)
            arrays[f"{stem}/loudness"] = np.asarray(s.loudness, dtype=np.float64)
            if self.flavour == "mst":
                arrays[f"{stem}/imager"] = np.asarray(s.imager, dtype=np.float64)
            else:
                arrays[f"{stem}/panning"] = np.asarray(s.panning, dtype=np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:   # a file object: np.savez would append ".npz" to other names
            np.savez_compressed(f, **arrays)
        return path

    def _check(self, path: Path) -> None:
        if self.flavour not in FIT_ORDERS:
            raise ConfigError(f"{path}: unknown statistics flavour {self.flavour!r}")
        for stem, s in self.stems.items():
            curves = [("eq", s.eq)] + ([("panning", s.panning)] if self.flavour == "fxnorm" else [])
            for name, curve in curves:
                if np.shape(curve) != (N_BINS,) or not np.all(np.isfinite(curve)):
                    raise ConfigError(f"{path}: {stem} {name} curve must be {N_BINS} finite values, "
                                      f"got shape {np.shape(curve)}")
            values = [*s.compression, s.loudness] + ([s.imager] if self.flavour == "mst" else [])
            if not np.all(np.isfinite(values)):
                raise ConfigError(f"{path}: {stem} has non-finite compression/loudness/imager values")


# --- fitting --------------------------------------------------------------------------------------

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


def fit(songs_dir: str | Path, flavour: str = "mst", seed: int = 0,
        progress: Callable[[str], None] | None = None) -> FxStats:
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
              progress: Callable[[str], None] | None = None, source: str = "songs in memory",
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
        for stem in fitted_stems:
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
            if progress is not None:
                progress(f"{name} {stem}: {len(features)} songs")
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
