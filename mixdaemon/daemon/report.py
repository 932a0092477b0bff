"""What a finished job leaves beside its audio: manifest.json for programs, report.png for people.

The manifest lists the job type, the inputs (with content hashes and stem roles), the reference,
the engine, the model, the settings, timings, loudness before/after/reference and the output paths.
The report image shows, per stem and for the mix, the long-term average spectrum of the input, the
converted output and the reference, and a loudness chart. Automix jobs have no reference (null in
the manifest, no curve or bar in the report) and one output, the mix.

Both are drawn from the job's result alone: the job measured the spectra on the audio it held
(transfer or automix with spectra=True), so nothing is read back from disk here, and the spectra
stay out of the manifest. The image is drawn with matplotlib's Agg canvas directly (no pyplot
state), so it is safe in the daemon's worker thread and needs no display.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from mixdaemon.audio.dsp import SPECTRUM_BAND_CENTRES_HZ
from mixdaemon.audio.stems import STEM_NAMES, role_for_name
from mixdaemon.files import atomic_write

MANIFEST_VERSION = 1
_PANELS = (*STEM_NAMES, "mixture")
_COLORS = {"before": "#7f7f7f", "after": "#d62728", "reference": "#1f77b4"}


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def manifest_dict(job, result, outputs: dict[str, str], report_path: str, timings: dict) -> dict:
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
        # one line each: files given but not used (a mix beside the stems), outputs not in the inputs' format
        "notes": list(result.notes),
        "outputs": outputs,
        "report": report_path,
    }


def write_manifest(path: Path, job, result, outputs: dict[str, str], report_path: str, timings: dict) -> Path:
    data = manifest_dict(job, result, outputs, report_path, timings)
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, allow_nan=False, default=str)
        f.write("\n")
    return path


# --- the report image ----------------------------------------------------------------------------

def write_report(path: Path, job, result) -> Path:
    """Draw report.png for a finished job from its result (measured with spectra=True)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 7.5), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    for ax, name in zip(axes.flat, _PANELS):
        top = -np.inf
        for label in ("before", "after", "reference"):
            curve = result.spectra.get(label, {}).get(name)
            if curve is not None:
                top = max(top, float(curve.max()))
                ax.semilogx(SPECTRUM_BAND_CENTRES_HZ, curve, color=_COLORS[label], label=label,
                            linewidth=1.6 if label == "after" else 1.1)
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
