"""Automatic mixing (FxNorm-automix, docs/ALGORITHMS.md §6.6): the API that `mixdaemon automix` and the
daemon's "automix" jobs both call.

    load the stems (audio/stems.py) → FX-normalize them (fx/normalization.py, order "fxnorm": eq →
    compression → panning → loudness, the shipped FxNorm statistics) → the automix network over the
    whole song in chunks (nets/automix.py) → the mix moved to the loudness of the stems' plain sum
    (settings.loudness) → true-peak limiting (audio/mastering.py) → atomic write
    (audio/io.py)

Any length: the song is cut into chunks of `chunk_seconds`, each run with enough context on both
sides for the network's receptive field (the TCN's, for AutomixNet; its BiLSTM sees further, so
there the guard is the paper's heuristic), zeros past the song's ends. The original's 30-second
wrap-around intro and 4-minute cap (§6.5, §6.6) are not used. Chunked output is close to, not
identical with, one pass over the song: both networks' GroupNorm statistics span whatever window
they see (as they spanned the training excerpts).

`normalize_for_automix` and `network_input` are also what training caches (train/automix.py), so
a model sees at inference exactly the inputs it was trained on.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mixdaemon.audio.dsp import WORKING_RATE, average_spectrum_db, integrated_loudness
from mixdaemon.audio.io import write_audio
from mixdaemon.audio.mastering import limit_linked
from mixdaemon.audio.stems import SILENCE_DBFS, load_song
from mixdaemon.errors import ConfigError, MixdaemonError, StemLayoutError
from mixdaemon.fx.normalization import ReverbNormalization, add_reverb, normalize_stems
from mixdaemon.fx.stats import default_stats_path
from mixdaemon.mixing.settings import AutomixSettings
from mixdaemon.nets.automix import INPUT_STEMS, model_context
from mixdaemon.progress import Progress, no_progress

log = logging.getLogger(__name__)

NORMALIZE_ORDER = "fxnorm"
# The output's key in results and manifests: the same as a transfer's remix, so job notifications
# and previews treat both alike (the daemon's file is mix.wav).
MIX_NAME = "mixture"

_NORMALIZE_SHARE = 0.6  # of the progress bar: FX normalization is most of the time on CPU
_MIXED = 0.95           # the network is done here; limiting and writing follow


@dataclass
class AutomixResult:
    outputs: dict[str, str]  # {"mixture": path of the mix}
    engine: str = "automix"
    model: dict = field(default_factory=dict)
    loudness_before: dict[str, float] = field(default_factory=dict)  # the stems and their plain sum ("mixture")
    loudness_after: dict[str, float] = field(default_factory=dict)   # {"mixture": LUFS of the mix}
    true_peak_dbtp: float = float("-inf")
    seconds_audio: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    # With automix(spectra=True): {"before" | "after": {track: average_spectrum_db}}; before: the
    # stems and their plain sum, after: the mix.
    spectra: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    # One line each, also logged: files given but not used, the mix not in the inputs' format
    notes: list[str] = field(default_factory=list)


def normalize_for_automix(stems: dict[str, np.ndarray], stats, seed: int = 0,
                          progress: Progress = no_progress, reverb=None) -> dict[str, np.ndarray]:
    """The four stems FX-normalized in FxNorm's order with `stats` (an FxStats), after the reverb
    normalization of vocals and other when `reverb` (an fx.normalization.ReverbNormalization) is given."""
    missing = [s for s in INPUT_STEMS if s not in stems]
    if missing:
        raise StemLayoutError(f"automix needs all four stems; missing {', '.join(missing)}")
    stems = add_reverb({s: stems[s] for s in INPUT_STEMS}, reverb, seed)
    return normalize_stems(stems, stats, order=NORMALIZE_ORDER, seed=seed, progress=progress)


def network_input(normalized: dict[str, np.ndarray]) -> np.ndarray:
    """(8, n) float32: the normalized stems in the network's channel order, each L then R."""
    return np.ascontiguousarray(np.concatenate([normalized[s].T for s in INPUT_STEMS]), dtype=np.float32)


def _loudness(x: np.ndarray) -> float:
    value = integrated_loudness(x)
    return round(value, 2) if np.isfinite(value) else -70.0  # silence reads as the absolute gate


class Automixer:
    """A loaded automix model and its FX-normalization statistics; mixes songs of any length.
    The daemon keeps one, so the model loads once."""

    def __init__(self, model: torch.nn.Module, info, stats, chunk_seconds: float = 10.0, seed: int = 0,
                 reverb=None, loudness: str | float = "stems"):
        if chunk_seconds <= 0:
            raise ConfigError(f"chunk_seconds: {chunk_seconds} must be positive")
        self.model, self.model_info, self.stats, self.seed = model.eval(), info, stats, seed
        self.reverb, self.loudness = reverb, loudness
        self.context, self.multiple = model_context(model)
        self.context = -(-self.context // self.multiple) * self.multiple  # keeps every chunk on the pooling grid
        self.hop = max(self.multiple, int(chunk_seconds * WORKING_RATE) // self.multiple * self.multiple)

    @classmethod
    def from_settings(cls, settings: AutomixSettings, store: str | os.PathLike | None = None) -> "Automixer":
        from mixdaemon.files import file_sha256
        from mixdaemon.fx.stats import FxStats
        from mixdaemon.nets.store import load_automix_model

        model, info = load_automix_model(settings.model, store)
        stats_path = Path(settings.stats) if settings.stats else default_stats_path(NORMALIZE_ORDER)
        if not stats_path.is_file():
            raise ConfigError(f"stats: {stats_path} does not exist")
        trained_with = info.normalization.get("stats_sha256")
        if trained_with and trained_with != file_sha256(stats_path):
            raise ConfigError(f"{info.path}: was trained on inputs normalized with other statistics (sha256 "
                              f"{trained_with[:12]}…) than {stats_path}; pass the statistics it was trained with")
        reverb = ReverbNormalization(settings.ir_folder) if settings.ir_folder else None
        if info.normalization.get("reverb_ir_folder") and reverb is None:
            log.warning("%s was trained on reverb-normalized stems (an IR folder); without one its inputs "
                        "differ from its training data", info.path)
        return cls(model, info, FxStats.load(stats_path), settings.chunk_seconds, settings.seed, reverb,
                   settings.loudness)

    @property
    def info(self) -> dict:
        """What a manifest records about the model."""
        i = self.model_info
        return {"name": i.name, "path": str(i.path), "architecture": i.architecture,
                "weights_sha256": i.weights_sha256, "normalization": i.normalization}

    def normalize(self, stems: dict[str, np.ndarray], progress: Progress = no_progress) -> dict[str, np.ndarray]:
        def report(label: str, fraction: float) -> None:
            progress(f"normalizing {label}", _NORMALIZE_SHARE * fraction)
        return normalize_for_automix(stems, self.stats, self.seed, report, self.reverb)

    def mix_normalized(self, normalized: dict[str, np.ndarray], progress: Progress = no_progress) -> np.ndarray:
        """The network's mix, (n, 2) float32, of normalized stems of any length n: chunks of `hop`
        samples, each with `context` samples of the song (or zeros past its ends) on both sides."""
        x = network_input(normalized)
        n = x.shape[1]
        out = np.empty((n, 2), dtype=np.float32)
        starts = range(0, n, self.hop)
        for k, start in enumerate(starts):
            end = min(start + self.hop, n)
            lo, hi = start - self.context, end + self.context
            width = -(-(hi - lo) // self.multiple) * self.multiple
            window = np.zeros((1, x.shape[0], width), dtype=np.float32)
            window[0, :, max(lo, 0) - lo:min(hi, n) - lo] = x[:, max(lo, 0):min(hi, n)]
            with torch.no_grad():
                y = self.model(torch.from_numpy(window))[0].numpy()
            offset = (width - y.shape[1]) // 2  # valid convolutions (Wave-U-Net) trim both ends equally
            first = self.context - offset
            out[start:end] = y[:, first:first + end - start].T
            progress("mixing", _NORMALIZE_SHARE + (_MIXED - _NORMALIZE_SHARE) * (k + 1) / len(starts))
        return out

    def land(self, mix: np.ndarray, stems: dict[str, np.ndarray]) -> np.ndarray:
        """The network's mix moved by one gain to the loudness `self.loudness` asks for: that of the
        plain sum of `stems` (the stems as given, before normalization), a LUFS value, or, for
        "model", left as it is. A silent mix or sum is left as it is."""
        if self.loudness == "model":
            return mix
        target = (integrated_loudness(np.sum([stems[s] for s in INPUT_STEMS], axis=0))
                  if self.loudness == "stems" else float(self.loudness))
        gain_db = target - integrated_loudness(mix)
        return (mix * np.float32(10.0 ** (gain_db / 20.0))) if np.isfinite(gain_db) else mix


def check_output_file(path: Path, input_files: list[str], overwrite: bool) -> None:
    """transfer.check_output_folder's rules for one file: never an input, an existing file only
    when asked to overwrite it."""
    if path.resolve() in {Path(p).resolve() for p in input_files}:
        raise MixdaemonError(f"{path}: is one of the input files; choose another output")
    if path.is_dir():
        raise MixdaemonError(f"{path}: is a folder; give the mix's file name (e.g. {path / 'mix.wav'})")
    if path.exists() and not overwrite:
        raise MixdaemonError(f"{path}: already exists; choose another output or pass --overwrite")


def automix(stems_path, out_path: str | os.PathLike, settings: AutomixSettings | None = None,
            progress: Progress = no_progress, overwrite: bool = False,
            mixer: Automixer | None = None, spectra: bool = False) -> AutomixResult:
    """Mix a song's stems (a folder, or a list of stem files) into one stereo file at out_path,
    limited to settings.ceiling_dbtp true peak, at the stems' sample rate.

    `mixer` lets a long-lived caller (the daemon) pass a loaded model; otherwise one is loaded from
    settings. With `spectra`, the result also holds the long-term average spectra of the stems,
    their sum and the mix (what the daemon's report draws), measured on the audio in memory."""
    settings = settings or AutomixSettings()
    out_path = Path(out_path)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    song = load_song(stems_path)
    if song.mixture is not None:
        raise StemLayoutError(f"{song.input_files[0]}: is a full mix; automix needs the stems "
                              "(drums, bass, other, vocals)")
    check_output_file(out_path, song.input_files, overwrite)
    if song.is_silent:
        raise MixdaemonError(f"{stems_path}: every stem is silent (below {SILENCE_DBFS:g} dBFS); nothing to mix")
    progress("loading model", 0.0)
    mixer = mixer or Automixer.from_settings(settings)
    timings["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    normalized = mixer.normalize(song.stems, progress)
    timings["normalize"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    mix = mixer.land(mixer.mix_normalized(normalized, progress), song.stems)
    timings["mix"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    progress("limiting", _MIXED)
    _, mix, mix_true_peak = limit_linked({MIX_NAME: mix}, settings.ceiling_dbtp)
    formats, output_notes = song.output_formats({MIX_NAME: mix})
    path = write_audio(out_path, mix, out_rate=formats[MIX_NAME].rate, channels=formats[MIX_NAME].channels,
                       subtype=settings.subtype, protected=song.input_files)
    timings["write"] = time.perf_counter() - t0
    tracks = {**song.stems, MIX_NAME: np.sum(list(song.stems.values()), axis=0)}
    measured = {}
    if spectra:
        t0 = time.perf_counter()
        progress("measuring spectra", 0.99)
        measured = {label: {name: average_spectrum_db(x) for name, x in named.items()}
                    for label, named in (("before", tracks), ("after", {MIX_NAME: mix}))}
        timings["spectra"] = time.perf_counter() - t0
    progress("done", 1.0)

    return AutomixResult(outputs={MIX_NAME: str(path)}, model=mixer.info,
                         loudness_before={name: _loudness(x) for name, x in tracks.items()},
                         loudness_after={MIX_NAME: _loudness(mix)}, true_peak_dbtp=round(mix_true_peak, 2),
                         seconds_audio=round(song.n_samples / WORKING_RATE, 3),
                         timings={k: round(v, 3) for k, v in timings.items()}, spectra=measured,
                         notes=[*song.notes, *output_notes])
