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

from mixdaemon.audio.dsp import ABSOLUTE_GATE_LUFS, SPECTRUM_BAND_CENTRES_HZ
from mixdaemon.audio.stems import STEM_NAMES, role_for_name
from mixdaemon.files import atomic_write

MANIFEST_VERSION = 1
_PANELS = (*STEM_NAMES, "mixture")
_COLORS = {"before": "#7f7f7f", "after": "#d62728", "reference": "#1f77b4"}


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def _job_fields(job) -> dict:
    """What the manifest says of the job itself: its id, where it came from, when, its files."""
    from mixdaemon import __version__ as version

    reference = None
    if job.reference:
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
    }


def manifest_dict(job, result, outputs: dict[str, str], report_path: str, timings: dict) -> dict:
    loudness = {"before": result.loudness_before, "after": result.loudness_after}
    if job.reference:
        loudness["reference"] = result.reference_loudness
    return {
        **_job_fields(job),
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


def copied_manifest(manifest: dict, job, outputs: dict[str, str], report_path: str, timings: dict,
                    copied_from: str) -> dict:
    """The manifest of a job whose result was copied from a finished job of the same work (the
    same contents, reference and settings; `manifest` is that job's): this job's own id, source and
    files, the outputs where they are now, and the folder they were copied from."""
    return {**manifest, **_job_fields(job), "timings_seconds": timings, "outputs": outputs, "report": report_path,
            "copied_from": copied_from}


def write_manifest(path: Path, job, result, outputs: dict[str, str], report_path: str, timings: dict,
                   data: dict | None = None) -> Path:
    """manifest.json for the job's result (or `data`, a manifest made otherwise: copied_manifest)."""
    data = data if data is not None else manifest_dict(job, result, outputs, report_path, timings)
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, allow_nan=False, default=str)
        f.write("\n")
    return path


# --- the report image ----------------------------------------------------------------------------

# Round frequencies a musician reads off an EQ; the panels span 20 Hz to 20 kHz.
FREQUENCY_TICKS_HZ = (50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)


def frequency_label(hz: float) -> str:
    """How an EQ writes a frequency: 50, 500, 1k, 2.5k, 20k."""
    return f"{hz / 1000:g}k" if hz >= 1000 else f"{hz:g}"


def _curve_labels(job) -> dict[str, str]:
    if job.reference:
        return {"before": "input (before)", "after": "output (after)",
                "reference": f"reference: {Path(job.reference).name}"}
    return {"before": "stems as given, and their plain sum", "after": "automix"}


def _caption(job) -> str:
    if job.reference:
        return ("Each panel is a track's average level per frequency band in the input, the output and the "
                "reference; the last panel compares their integrated loudness (LUFS, higher is louder).")
    return ("Each panel is a track's average level per frequency band as given and, for the mix, after automix; "
            "the last panel compares their integrated loudness (LUFS, higher is louder).")


def _loudness_panel(ax, job, result) -> None:
    """Grouped bars per track, each with its value; the axis spans the values shown, so a 1 LU
    difference is visible, and a silent track (at the absolute gate) reads 'silent' with no bar."""
    tables = [("before", result.loudness_before), ("after", result.loudness_after)]
    if job.reference:
        tables.append(("reference", result.reference_loudness))
    heard = [v for _, table in tables for v in table.values() if v > ABSOLUTE_GATE_LUFS]
    top = max(heard, default=0.0) + 3.0
    bottom = min(heard, default=ABSOLUTE_GATE_LUFS) - 3.0
    x = np.arange(len(_PANELS))
    width = 0.8 / len(tables)
    for k, (label, table) in enumerate(tables):
        offset = (k - (len(tables) - 1) / 2) * width
        for i, name in enumerate(_PANELS):
            value = table.get(name)
            if value is None:
                continue
            silent = value <= ABSOLUTE_GATE_LUFS
            if not silent:
                ax.bar(x[i] + offset, value - bottom, width, bottom=bottom, color=_COLORS[label])
            ax.text(x[i] + offset, bottom + 0.3 if silent else value + 0.3, "silent" if silent else f"{value:.1f}",
                    ha="center", va="bottom", rotation=90, fontsize=7.5, color=_COLORS[label])
    ax.set_xticks(x, _PANELS, fontsize=8)
    ax.set_ylim(bottom, top)
    ax.set_ylabel("integrated loudness (LUFS)")
    ax.set_title("loudness")
    ax.grid(True, axis="y", alpha=0.3)


def report_figure(job, result):
    """The report as a matplotlib Figure on an Agg canvas: a spectrum panel per stem and the mix, a
    loudness panel, one legend and a caption."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, NullLocator

    labels = _curve_labels(job)
    fig = Figure(figsize=(13, 7.5), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    for ax, name in zip(axes.flat, _PANELS):
        top = -np.inf
        for label in labels:
            curve = result.spectra.get(label, {}).get(name)
            if curve is not None:
                top = max(top, float(curve.max()))
                ax.semilogx(SPECTRUM_BAND_CENTRES_HZ, curve, color=_COLORS[label],
                            linewidth=1.6 if label == "after" else 1.1)
        if np.isfinite(top):
            ax.set_ylim(top - 90.0, top + 5.0)  # 90 dB of range: deep stop bands would flatten the rest
        ax.set_title(f"{name} spectrum")
        ax.set_xlim(20, 20000)
        ax.xaxis.set_major_locator(FixedLocator(FREQUENCY_TICKS_HZ))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([frequency_label(f) for f in FREQUENCY_TICKS_HZ], fontsize=8)
        ax.set_xlabel("frequency (Hz)")
        ax.set_ylabel("level (dB)")
        ax.grid(True, alpha=0.3)
    _loudness_panel(axes.flat[5], job, result)

    handles = [Line2D([], [], color=_COLORS[label], linewidth=3) for label in labels]
    fig.legend(handles, list(labels.values()), loc="upper center", bbox_to_anchor=(0.5, 0.955), ncol=len(labels),
               fontsize=9, frameon=False)
    target = f"→ {Path(job.reference).name} ({result.engine} engine)" if job.reference else f"({result.engine})"
    fig.suptitle(f"job {job.id}: {job.folder_name} {target}", y=0.99)
    fig.text(0.5, 0.012, _caption(job), ha="center", va="bottom", fontsize=9)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.11, top=0.88, wspace=0.25, hspace=0.38)  # tight_layout costs seconds
    return fig


def write_report(path: Path, job, result) -> Path:
    """Draw report.png for a finished job from its result (measured with spectra=True)."""
    report_figure(job, result).savefig(path, format="png")
    return path
