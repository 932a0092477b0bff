"""What a finished job leaves beside its audio: manifest.json for programs, report.png for people.

The manifest lists the job type, the inputs (with content hashes and stem roles), the reference,
the engine, the model, the settings, timings, loudness before/after/reference and the output paths.
The report image shows, per stem and for the mix, the long-term average spectrum of the input, the
converted output and the reference, and a loudness chart. Automix jobs have no reference (null in
the manifest, no curve or bar in the report) and one output, the mix. It is drawn with matplotlib's Agg canvas directly
(no pyplot state), so it is safe in the daemon's worker thread and needs no display.
"""
from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from scipy import signal

from mixdaemon.audio.dsp import WORKING_RATE
from mixdaemon.audio.io import read_audio
from mixdaemon.audio.stems import STEM_NAMES, load_song, role_for_name

MANIFEST_VERSION = 1
_PANELS = (*STEM_NAMES, "mixture")
_COLORS = {"before": "#7f7f7f", "after": "#d62728", "reference": "#1f77b4"}


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def manifest_dict(job, result, outputs: dict[str, str], report_path: str | None, timings: dict) -> dict:
    from mixdaemon import __version__ as version

    loudness = {"before": result.loudness_before, "after": result.loudness_after}
    reference = None
    if job.reference:
        loudness["reference"] = result.reference_loudness
        reference = {"path": job.reference,
                     "files": [{"path": p, "sha256": h} for p, h in sorted(job.reference_hashes.items())]}
    return {
        "generator": "mixdaemon",
        "generator_version": version,
        "manifest_version": MANIFEST_VERSION,
        "job_id": job.id,
        "job_type": job.job_type,
        "source": job.source,
        "created": _iso(job.created),
        "finished": _iso(time.time()),
        "inputs": [{"path": p, "sha256": job.input_hashes.get(p), "role": role_for_name(Path(p).name)}
                   for p in job.inputs],
        "reference": reference,
        "engine": result.engine,
        "model": result.model,
        "settings": job.settings,
        "timings_seconds": timings,
        "seconds_audio": result.seconds_audio,
        "loudness_lufs": loudness,
        "true_peak_dbtp": result.true_peak_dbtp,
        "outputs": outputs,
        "report": report_path,
    }


def write_manifest(path: Path, job, result, outputs: dict[str, str], report_path: str | None, timings: dict) -> Path:
    data = manifest_dict(job, result, outputs, report_path, timings)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, allow_nan=False, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    return path


# --- the report image ----------------------------------------------------------------------------

_BAND_EDGES = np.geomspace(20.0, 20000.0, 97)  # 1/8-octave-ish bands over the audible range


def average_spectrum_db(x: np.ndarray, sr: int = WORKING_RATE) -> np.ndarray:
    """Long-term average power spectrum of the mid channel (Welch, 4096-point Hann), averaged into
    log-spaced bands so that curves of different material are readable side by side; dB."""
    mid = np.asarray(x, dtype=np.float64).mean(axis=1) if x.ndim == 2 else np.asarray(x, dtype=np.float64)
    if mid.shape[0] < 4096:
        mid = np.pad(mid, (0, 4096 - mid.shape[0]))
    freqs, power = signal.welch(mid, fs=sr, nperseg=4096)
    bands = np.empty(len(_BAND_EDGES) - 1)
    for i, (lo, hi) in enumerate(zip(_BAND_EDGES[:-1], _BAND_EDGES[1:])):
        sel = (freqs >= lo) & (freqs < hi)
        bands[i] = power[sel].mean() if sel.any() else np.interp(np.sqrt(lo * hi), freqs, power)
    return 10.0 * np.log10(bands + 1e-20)


def _song_tracks(song) -> dict[str, np.ndarray]:
    tracks = dict(song.stems)
    if song.mixture is not None:
        tracks["mixture"] = song.mixture
    elif tracks:
        tracks["mixture"] = np.sum(list(tracks.values()), axis=0)
    return tracks


def write_report(path: Path, job, result, output_dir: Path) -> Path:
    """Draw report.png for a finished job whose outputs lie in output_dir."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    before = _song_tracks(load_song(job.inputs if len(job.inputs) > 1 else job.inputs[0]))
    reference = _song_tracks(load_song(job.reference)) if job.reference else {}
    after = {name: read_audio(output_dir / Path(p).name).samples for name, p in result.outputs.items()}
    centres = np.sqrt(_BAND_EDGES[:-1] * _BAND_EDGES[1:])

    fig = Figure(figsize=(13, 7.5), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    for ax, name in zip(axes.flat, _PANELS):
        top = -np.inf
        for label, tracks in (("before", before), ("after", after), ("reference", reference)):
            if name in tracks:
                curve = average_spectrum_db(tracks[name])
                top = max(top, float(curve.max()))
                ax.semilogx(centres, curve, color=_COLORS[label], label=label, linewidth=1.6 if label == "after" else 1.1)
        if np.isfinite(top):
            ax.set_ylim(top - 90.0, top + 5.0)  # 90 dB of range: deep stop bands would flatten the rest
        ax.set_title(name)
        ax.set_xlim(20, 20000)
        ax.set_xlabel("Hz")
        ax.set_ylabel("dB")
        ax.grid(True, alpha=0.3)
    axes.flat[0].legend(loc="lower left", fontsize=8)

    ax = axes.flat[5]
    x = np.arange(len(_PANELS))
    width = 0.27
    tables = [("before", result.loudness_before), ("after", result.loudness_after)]
    if job.reference:
        tables.append(("reference", result.reference_loudness))
    for k, (label, table) in enumerate(tables):
        values = [table.get(name, np.nan) for name in _PANELS]
        ax.bar(x + (k - 1) * width, [v + 70.0 for v in values], width, bottom=-70.0, color=_COLORS[label], label=label)
    ax.set_xticks(x, _PANELS, fontsize=8)
    ax.set_ylabel("integrated loudness, LUFS")
    ax.set_title("loudness")
    ax.set_ylim(-70, 0)
    ax.grid(True, axis="y", alpha=0.3)
    target = f"→ {Path(job.reference).name} ({result.engine} engine)" if job.reference else f"({result.engine})"
    fig.suptitle(f"job {job.id}: {job.folder_name} {target}")
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.08, top=0.91, wspace=0.25, hspace=0.35)  # tight_layout costs seconds
    fig.savefig(path, format="png")
    return path
