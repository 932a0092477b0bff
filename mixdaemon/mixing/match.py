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
from mixdaemon.audio.streams import ChainOf, Gain
from mixdaemon.fx import matching
from mixdaemon.mixing.engine import PLANS, Conversion, Measured, Plan
from mixdaemon.mixing.measure import measured_whole
from mixdaemon.mixing.settings import Controls
from mixdaemon.progress import Progress, no_progress

SILENT_RMS_DBFS = -60.0  # a reference stem quieter than this has no style to copy


def fit_stem(x: np.ndarray, reference: np.ndarray, amount: float = 1.0,
             aspects: frozenset[str] = frozenset(Controls().aspects), *, x_lufs: float | None = None,
             reference_lufs: float | None = None, progress: Progress = no_progress
             ) -> tuple[ChainOf, np.ndarray] | None:
    """The effects that move x toward the reference stem in `aspects`, by `amount`, fitted on x and
    the reference as given (excerpts, or whole stems), and x through them; None when there is
    nothing to move toward (silent input or reference) or amount is 0. `progress` after each step.

    x_lufs and reference_lufs are the loudness of the whole stems the excerpts come from (measured
    on x and the reference when not given): the level step lands the whole stem, not the excerpt,
    on the reference's loudness, by the loudness change the other steps make to the excerpt."""
    x = np.asarray(x, dtype=np.float32)
    if amount <= 0.0 or not np.any(x) or rms_dbfs(reference) < SILENT_RMS_DBFS:
        return None
    effects, y = [], x
    steps = [a for a in ("eq", "dynamics", "space", "width", "level") if a in aspects]
    done = iter(range(1, len(steps) + 1))

    def apply(effect) -> None:
        nonlocal y
        effects.append(effect)
        y = effect(y)
    excerpt_lufs = loudness_lufs(reference)  # the peak step compares excerpts with excerpts
    if "eq" in aspects:
        apply(matching.EqCurve.between(matching.smoothed_spectrum_db(matching.long_term_spectrum(y)),
                                       matching.smoothed_spectrum_db(matching.long_term_spectrum(reference)))
              .scaled(amount))
        progress("eq", next(done) / len(steps))
    if "dynamics" in aspects:
        for detector in (matching.PHRASE, matching.NOTE):
            level_map = matching.LevelMap.between(y, reference, detector)
            if level_map is not None:
                apply(level_map.scaled(amount))
        limiter = matching.PeakCeiling(matching.peak_to_loudness_db(reference, excerpt_lufs)).scaled(amount) \
            .limiter_for(y)
        if limiter is not None:
            apply(limiter)
        progress("dynamics", next(done) / len(steps))
    if "space" in aspects:
        reverb = matching.SyntheticReverb.between(y, reference).scaled(amount)
        if reverb.send_db is not None:
            apply(reverb)
        progress("space", next(done) / len(steps))
    if "width" in aspects:
        apply(matching.StereoMatch.between(matching.frame_covariances(y), matching.frame_covariances(reference))
              .scaled(amount))
        progress("width", next(done) / len(steps))
    if "level" in aspects:
        change_db = loudness_lufs(y) - loudness_lufs(x) if effects else 0.0
        whole_lufs = loudness_lufs(x) if x_lufs is None else x_lufs
        gain_db = matching.loudness_gain_db(whole_lufs + change_db,
                                            excerpt_lufs if reference_lufs is None else reference_lufs)
        apply(Gain(amount * gain_db))
        progress("level", next(done) / len(steps))
    return ChainOf(effects), y


def match_stem(x: np.ndarray, reference: np.ndarray, amount: float = 1.0,
               aspects: frozenset[str] = frozenset(Controls().aspects), progress: Progress = no_progress) -> np.ndarray:
    """x moved toward the reference stem in `aspects`, by `amount` (fitted on the whole stems); x
    itself when there is nothing to move toward."""
    fitted = fit_stem(x, reference, amount, aspects, progress=progress)
    return np.asarray(x, dtype=np.float32) if fitted is None else fitted[1]


class MatchingEngine:
    name = "match"
    info = {"name": "match", "kind": "feature matching: EQ, dynamics, reverb, width and loudness measured on the reference stems"}
    capabilities: frozenset[str] = frozenset({PLANS})

    def __init__(self, controls: Controls | None = None, workers: int = 2):
        self.controls = controls or Controls()
        self.workers = workers

    def plan(self, song: Measured, reference: Measured, progress: Progress = no_progress) -> Plan:
        names = list(song.excerpts)
        # Stems run side by side: the bar follows the steps done over all of them, under one label.
        steps_done = dict.fromkeys(names, 0.0)

        def one(name: str):
            x = song.excerpts[name]

            def stem_progress(_step: str, fraction: float) -> None:
                steps_done[name] = fraction
                progress("matching stems", sum(steps_done.values()) / len(names))
            fitted = None if name not in reference.excerpts else fit_stem(
                x, reference.excerpts[name], self.controls.amount_for(name), self.controls.aspects,
                x_lufs=song.loudness.get(name), reference_lufs=reference.loudness.get(name), progress=stem_progress)
            stem_progress("", 1.0)
            return fitted

        progress("matching stems", 0.0)
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            fitted = dict(zip(names, pool.map(one, names)))
        effects = {name: None if f is None else f[0] for name, f in fitted.items()}
        rendered = {name: song.excerpts[name] if f is None else f[1] for name, f in fitted.items()} \
            if song.whole else None
        return Plan(effects, rendered=rendered)

    def convert(self, input_stems: dict[str, np.ndarray], reference_stems: dict[str, np.ndarray],
                progress: Progress = no_progress, reference_b_stems=None) -> Conversion:
        return Conversion(self.plan(measured_whole(input_stems), measured_whole(reference_stems), progress).rendered)
