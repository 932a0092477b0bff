"""What the evaluation protocols (table2.py, raw.py, unpaired.py) share: the song folders of SONGS_DIR,
their stems, the seeded draws per stem, the L_MSS scores per stem and for the multitrack sum, and the
means and ratios their summaries are made of.
"""
from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from mixdaemon import defaults
from mixdaemon.audio.dsp import WORKING_RATE
from mixdaemon.audio.stems import STEM_NAMES, load_song
from mixdaemon.errors import ConfigError, MixdaemonError

MULTITRACK = "multitrack"
MSS_SCORES = ("lr", "ms")  # L_MSS on L/R and on M/S (docs/ALGORITHMS.md §4.3)
LEVELS = {MULTITRACK: (MULTITRACK,), "stem": STEM_NAMES}  # what each summary level averages over
SEGMENT_SECONDS = defaults.EVALUATION_SEGMENT_SECONDS  # of the raw and unpaired protocols (`--segment-seconds`)
REFERENCE_PEAK_DBTP = -1.5  # the true peak the raw and unpaired references are trimmed to, as mastered songs are


def song_folders(songs_dir: str | Path) -> list[Path]:
    """Sub-folders of songs_dir holding all four stem files, sorted by name."""
    songs_dir = Path(songs_dir)
    if not songs_dir.is_dir():
        raise ConfigError(f"{songs_dir}: not a folder of songs")
    folders = [p for p in sorted(songs_dir.iterdir())
               if p.is_dir() and all(any(p.glob(f"{stem}.*")) for stem in STEM_NAMES)]
    if not folders:
        raise ConfigError(f"{songs_dir}: no song folder with {', '.join(STEM_NAMES)} stems")
    return folders


def load_stems(folder: Path) -> dict[str, np.ndarray]:
    """The four stems of a song folder ((n, 2) float32 at 44.1 kHz; a mixture file is ignored)."""
    return {name: load_song([next(folder.glob(f"{name}.*"))]).stems[name] for name in STEM_NAMES}


def seconds_span(part: slice) -> list[float]:
    """A segment's [start, stop] in seconds, as reports give it."""
    return [part.start / WORKING_RATE, part.stop / WORKING_RATE]


def stem_rng(seed: int, song: str, stem: str) -> np.random.Generator:
    """The generator of one seeded draw for one stem of one song: the same for every engine and run."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(song.encode()), STEM_NAMES.index(stem)]))


def peak_trim_db(stem_sets: list[dict[str, np.ndarray]], peak_dbtp: float = REFERENCE_PEAK_DBTP) -> float:
    """The gain (dB, never above 0) that brings the sum of the four stems of every set to peak_dbtp
    true peak or below: one gain for all, so the balance of the stems and the sets is kept."""
    from mixdaemon.audio.mastering import true_peak_dbtp
    loudest = max(true_peak_dbtp(sum(stems[name] for name in STEM_NAMES)) for stems in stem_sets)
    return min(0.0, peak_dbtp - loudest) if np.isfinite(loudest) else 0.0


def build_engines(engines: list, stats_path: str | Path | None, seed: int, backend: str) -> dict[str, object]:
    """{name: engine} for specs (anchors.engine_for) or engine objects, "identity" first and always."""
    from mixdaemon.evaluation.anchors import IdentityEngine, engine_for
    built = {"identity": IdentityEngine()}
    for engine in engines:
        name = engine if isinstance(engine, str) else engine.name
        if name not in built:
            built[name] = engine_for(engine, stats_path, seed, backend) if isinstance(engine, str) else engine
    return built


def limited_conversion(engine, x: dict[str, np.ndarray], ref: dict[str, np.ndarray]
                       ) -> tuple[dict[str, np.ndarray], list[str]]:
    """What a user gets: the engine's conversion of x toward ref through the job's linked limiter, and
    the failures it had (one line each). An engine that raises a MixdaemonError gives back x."""
    from mixdaemon.audio.mastering import limit_linked
    refused = engine.info.get("refused")  # Matchering's stems kept unconverted, listed as it goes
    already = len(refused) if refused is not None else 0
    try:
        y, failures = engine.convert(x, ref).stems, []
    except MixdaemonError as exc:
        y, failures = x, [str(exc).splitlines()[0] if str(exc) else type(exc).__name__]
    if refused:
        failures += refused[already:]
    return limit_linked(y, defaults.CEILING_DBTP).stems, failures


@contextmanager
def single_blas_thread() -> Iterator[None]:
    """numpy's BLAS only serves small dot products in the DSP here; its idle threads spinning
    against torch's made the FX stages several times slower on a busy machine."""
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def with_multitrack(stems: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {**stems, MULTITRACK: sum(stems[name] for name in STEM_NAMES)}


def mss_scores(y: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """L_MSS(y, gt) on L/R and on M/S."""
    from mixdaemon.audio.metrics import mss_distance
    return {mode: mss_distance(y, gt, mode) for mode in MSS_SCORES}


def mean(values: list[float | None]) -> float | None:
    """The mean of the values that were measured (None: not measured); None when none was."""
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def mean_scores(cases: list[dict[str, dict]], keys: tuple[str, ...], scores: tuple[str, ...]) -> dict:
    """{score: mean over cases × keys}; a case is {stem or "multitrack": {score: value}}."""
    return {s: mean([case[k][s] for case in cases for k in keys]) for s in scores}


def with_ratios(means: dict, baseline: dict, scores: tuple[str, ...] = MSS_SCORES) -> dict:
    """The means with ratio_<score> = mean / the baseline's mean (None where the baseline is 0)."""
    return {**means, **{f"ratio_{s}": means[s] / baseline[s] if baseline[s] else None for s in scores}}
