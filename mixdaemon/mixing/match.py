"""The matching engine: no model, only measurement. It is both the baseline every neural result is
compared with and a fast fallback that always works.

FX normalization moves a stem to the *average* mixing style of a dataset, described by statistics
(EQ curve, onset-peak dynamics, mid-energy fraction, loudness). Measured on one reference song
instead of a dataset, the same statistics describe *that song's* style; normalizing the input stems
with them moves each input stem toward its reference stem: same smoothed spectrum, dynamics no wider
than the reference's (the compressor only compresses), same stereo width, same loudness, hence the
same balance between stems.
"""
from __future__ import annotations

import numpy as np

from mixdaemon.fx.fit import fit_songs
from mixdaemon.fx.normalization import normalize_stems
from mixdaemon.mixing.engine import Conversion
from mixdaemon.progress import Progress, no_progress

ORDER = "mst_training"  # eq → compression → imager → loudness


class MatchingEngine:
    name = "match"
    info = {"name": "match", "kind": "feature matching (FX normalization toward the reference's statistics)"}
    capabilities: frozenset[str] = frozenset()

    def __init__(self, seed: int = 0):
        self.seed = seed

    def convert(self, input_stems: dict[str, np.ndarray], reference_stems: dict[str, np.ndarray],
                progress: Progress = no_progress, reference_b_stems=None) -> Conversion:
        progress("measuring reference", 0.05)
        stats = fit_songs({"reference": reference_stems}, flavour="mst", seed=self.seed, require_all=False)
        # A stem with no usable reference (silent or absent there) keeps its input sound.
        matched = {name: x for name, x in input_stems.items() if name in stats.stems and np.any(x)}
        result = dict(input_stems)
        if matched:
            result.update(normalize_stems(
                matched, stats, order=ORDER, seed=self.seed,
                progress=lambda label, fraction: progress(f"matching {label.split(':')[0]}", 0.2 + 0.75 * fraction)))
        return Conversion({name: np.asarray(x, dtype=np.float32) for name, x in result.items()})
