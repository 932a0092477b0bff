"""FX-normalization statistics (docs/ALGORITHMS.md §1.2–1.8): the per-stem targets that
fx/normalization.py matches, and their files. Computing them from songs is fx/fit.py.

Files read by `FxStats.load`:
- the originals' pickled .npy dicts (`np.load(p, allow_pickle=True)[()]`, {feature: {stem: value}}):
  MST's mst_musdb18_fxfeatures_eqcompimagegain.npy (eq, compression, imager, loudness) and
  FxNorm-automix's features_MUSDB18.npy (eq, compression, panning, loudness). Both original loaders
  Savitzky–Golay smooth the eq and panning curves *again* after loading (the files already hold
  smoothed curves); we do the same (`smooth_curves`), so the targets equal the ones the released code
  matches against. That mostly reshapes the steep low-frequency edge of the EQ curves.
- the project's own .npz (written by `FxStats.save`): curves exactly as matched (no smoothing at
  load), plus JSON metadata: what the statistics were computed from, in which order, when, by what.

The shipped defaults (fx/data/fxnorm_default_{mst,fxnorm}.npz) were computed by fx/fit.py
(`mixdaemon fxnorm fit`, benchmarks/fit_default_stats.py).
"""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import signal

from mixdaemon.errors import ConfigError
from mixdaemon.files import atomic_write

FFT_SIZE = 65536          # statistics resolution: bin k ↔ k·44100/65536 Hz, 32 769 bins
N_BINS = FFT_SIZE // 2 + 1
FLAVOURS = ("mst", "fxnorm")  # MST statistics carry an imager target, FxNorm's a panning curve
FORMAT_VERSION = 1
DATA_DIR = Path(__file__).resolve().parent / "data"


def default_stats_path(flavour: str = "mst") -> Path:
    """The project's shipped statistics (computed from ../shared/data/real_stems by fx/fit.py):
    data/fxnorm_default_mst.npz or data/fxnorm_default_fxnorm.npz."""
    if flavour not in FLAVOURS:
        raise ConfigError(f"fxnorm flavour: {flavour!r} is not one of {sorted(FLAVOURS)}")
    return DATA_DIR / f"fxnorm_default_{flavour}.npz"


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
        """Write the project .npz (atomically): one array per stem and feature, plus JSON metadata
        (flavour, stems, what it was computed from, fitting order, creation date, mixdaemon version)."""
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
        with atomic_write(path) as f:   # a file object: np.savez would append ".npz" to other names
            np.savez_compressed(f, **arrays)
        return path

    def _check(self, path: Path) -> None:
        if self.flavour not in FLAVOURS:
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
