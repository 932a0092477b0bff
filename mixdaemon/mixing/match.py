"""The matching engine: no model, only measurement. Per stem it measures the reference stem and moves
the input stem toward it, one aspect after the other (fx/matching.py):

    eq (smoothed long-term spectrum) → dynamics (level distributions over phrases and notes, then
    peaks) → space (a synthetic reverb send where the reference is more reverberant)
    → width (side/mid ratio and right/left balance) → level (integrated loudness, last)

Each step measures the input as the previous steps left it, so each moves its own feature and the
level step lands the stem exactly at the reference stem's loudness: the balance between the stems is
the reference's. The user's controls (mixing/settings.py's Controls) choose which aspects move and
how far (`amount` scales every step: 0 returns the input; the reverb send by 20·log10(amount) dB).
The space step only adds reverb: it cannot take away the input's own, and a reference no more
reverberant than the input gets none. It comes after the dynamics, so that the level maps do not
act on the added tail, and before width and level, which then count the reverb's side energy and
loudness.

A stem whose reference stem is silent (or absent) keeps its sound. Stems run in a thread pool: the
FFTs and the gain-envelope kernel release the GIL.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mixdaemon.audio.dsp import loudness_lufs, rms_dbfs
from mixdaemon.fx import matching
from mixdaemon.mixing.engine import Conversion
from mixdaemon.mixing.settings import Controls
from mixdaemon.progress import Progress, no_progress

SILENT_RMS_DBFS = -60.0  # a reference stem quieter than this has no style to copy


def match_stem(x: np.ndarray, reference: np.ndarray, amount: float = 1.0,
               aspects: frozenset[str] = frozenset(Controls().aspects), progress: Progress = no_progress) -> np.ndarray:
    """x moved toward the reference stem in `aspects`, by `amount`; x itself when there is nothing to
    move toward (silent input or reference) or amount is 0. `progress` after each step."""
    x = np.asarray(x, dtype=np.float32)
    if amount <= 0.0 or not np.any(x) or rms_dbfs(reference) < SILENT_RMS_DBFS:
        return x
    y = x
    steps = [a for a in ("eq", "dynamics", "space", "width", "level") if a in aspects]
    done = iter(range(1, len(steps) + 1))
    reference_lufs = loudness_lufs(reference)  # measured once: the peak and level steps use it
    if "eq" in aspects:
        curve = matching.EqCurve.between(matching.smoothed_spectrum_db(matching.long_term_spectrum(y)),
                                         matching.smoothed_spectrum_db(matching.long_term_spectrum(reference)))
        y = curve.scaled(amount)(y)
        progress("eq", next(done) / len(steps))
    if "dynamics" in aspects:
        for detector in (matching.PHRASE, matching.NOTE):
            level_map = matching.LevelMap.between(y, reference, detector)
            if level_map is not None:
                y = level_map.scaled(amount)(y)
        y = matching.PeakCeiling(matching.peak_to_loudness_db(reference, reference_lufs)).scaled(amount)(y)
        progress("dynamics", next(done) / len(steps))
    if "space" in aspects:
        y = matching.SyntheticReverb.between(y, reference).scaled(amount)(y)
        progress("space", next(done) / len(steps))
    if "width" in aspects:
        y = matching.StereoMatch.between(matching.frame_covariances(y), matching.frame_covariances(reference)).scaled(amount)(y)
        progress("width", next(done) / len(steps))
    if "level" in aspects:
        gain_db = matching.loudness_gain_db(loudness_lufs(y), reference_lufs)
        y = y * np.float32(10.0 ** (amount * gain_db / 20.0))
        progress("level", next(done) / len(steps))
    return y


class MatchingEngine:
    name = "match"
    info = {"name": "match", "kind": "feature matching: EQ, dynamics, reverb, width and loudness measured on the reference stems"}
    capabilities: frozenset[str] = frozenset()

    def __init__(self, controls: Controls | None = None, workers: int = 2):
        self.controls = controls or Controls()
        self.workers = workers

    def convert(self, input_stems: dict[str, np.ndarray], reference_stems: dict[str, np.ndarray],
                progress: Progress = no_progress, reference_b_stems=None) -> Conversion:
        names = list(input_stems)
        # Stems run side by side: the bar follows the steps done over all of them, under one label.
        steps_done = dict.fromkeys(names, 0.0)

        def one(name: str) -> np.ndarray:
            reference = reference_stems.get(name)
            x = np.asarray(input_stems[name], dtype=np.float32)

            def stem_progress(_step: str, fraction: float) -> None:
                steps_done[name] = fraction
                progress("matching stems", sum(steps_done.values()) / len(names))
            y = x if reference is None else match_stem(x, reference, self.controls.amount_for(name),
                                                       self.controls.aspects, progress=stem_progress)
            stem_progress("", 1.0)
            return y

        progress("matching stems", 0.0)
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            return Conversion(dict(zip(names, pool.map(one, names))))
