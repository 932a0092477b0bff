"""FX normalization as a job (`mixdaemon fxnorm apply | fit`): normalize a folder of stems and
write them, or compute statistics from a folder of songs. The steps themselves are
fx/normalization.py, the statistics fx/stats.py and fx/fit.py."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mixdaemon import defaults
from mixdaemon.audio.io import write_audio
from mixdaemon.audio.stems import load_song
from mixdaemon.errors import MixdaemonError
from mixdaemon.fx.fit import fit
from mixdaemon.fx.normalization import (
    ORDER_FLAVOUR,
    ORDERS,
    ReverbNormalization,
    add_reverb,
    normalize_stems,
)
from mixdaemon.fx.stats import FxStats, default_stats_path
from mixdaemon.mixing.transfer import check_output_folder
from mixdaemon.progress import Progress, no_progress

DEFAULT_ORDER = "mst_inference"


def load_statistics(path: str | os.PathLike | None, flavour: str = "mst") -> FxStats:
    """Statistics from a file (this project's .npz, or the papers' .npy), or the shipped ones of
    `flavour` when path is None."""
    return FxStats.load(path or default_stats_path(flavour))


def normalize_folder(stems_path: str | os.PathLike, out_dir: str | os.PathLike, *, stats: str | None = None,
                     order: str = DEFAULT_ORDER, seed: int = defaults.SEED, ir_folder: str | None = None,
                     subtype: str | None = None, overwrite: bool = False,
                     progress: Progress = no_progress) -> list[tuple[Path, str]]:
    """FX-normalize a folder of stems (with FxNorm's reverb normalization of vocals and other
    first when ir_folder is given) and write them to out_dir; [(path, sample format)] written."""
    song = load_song(stems_path)
    if song.mixture is not None:
        raise MixdaemonError(f"{stems_path}: FX normalization works on stems; give a folder of "
                             "drums/bass/other/vocals files")
    if order not in ORDERS:
        raise MixdaemonError(f"--order {order}: choose one of {', '.join(ORDERS)}")
    statistics = load_statistics(stats, ORDER_FLAVOUR[order])
    reverb = ReverbNormalization(ir_folder) if ir_folder else None
    out_dir = Path(out_dir)
    check_output_folder(out_dir, song.input_files, overwrite)
    normalized = normalize_stems(add_reverb(song.stems, reverb, seed), statistics, order=order, seed=seed,
                                 progress=progress)
    formats, _ = song.output_formats(normalized)  # its notes are logged
    written = []
    for name, samples in normalized.items():
        # The final loudness step hits its target exactly, which can push a very peaky stem past
        # full scale; such a stem is written as 32-bit float so nothing is clipped.
        chosen = subtype or ("FLOAT" if np.max(np.abs(samples)) > 1.0 else defaults.OUTPUT_SUBTYPE)
        written.append((write_audio(out_dir / f"{name}.wav", samples, out_rate=formats[name].rate,
                                    channels=formats[name].channels, subtype=chosen,
                                    protected=song.input_files), chosen))
    return written


def fit_statistics(songs_dir: str | os.PathLike, out: str | os.PathLike, flavour: str = "mst") -> Path:
    """Compute statistics from SONGS_DIR/<song>/{drums,bass,other,vocals}.* and save them to out."""
    return fit(songs_dir, flavour=flavour).save(out)
