"""The Engine protocol: what every engine offers and what callers may use of it.

An engine turns input stems into converted stems toward reference stems. Three ship:
"match" (mixing/match.py: measured features, no model), "neural" (mixing/neural.py: FXencoder +
MixFXcloner) and "param" (mixing/param.py: an interpretable FX chain per stem). The job API
(mixing/transfer.py), the daemon's worker and the evaluation all build engines with
mixing/factory.py's `make_engine` and call only what the protocol names.

Engines with PLANS split a conversion in two, so that a job of any length runs in bounded memory:
`plan` fits each stem's effect on a measurement of the song (an excerpt of each stem, and the
whole stems' loudness) and the job renders the fitted effects block by block over the whole song
(audio/streams.py). `convert` on whole stems is their plan rendered at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from mixdaemon.audio.streams import Streamable
from mixdaemon.progress import Progress, no_progress

# What an engine can do besides converting toward one reference.
REFERENCE_B = "reference_b"  # fade from one reference to another over the song
FX_PARAMS = "fx_params"      # the conversion is an FX chain per stem that a DAW can apply (fx_params.json)
PLANS = "plans"              # `plan`: effects fitted on excerpts, rendered as streams over the whole song


@dataclass
class Conversion:
    """An engine's result: converted stems (same names and lengths as the input stems, (n, 2)
    float32) and, for engines with FX_PARAMS, the chain per stem (fx.chain.StemChain)."""

    stems: dict[str, np.ndarray]
    chains: dict | None = None


@dataclass
class Plan:
    """A conversion fitted but not yet rendered: per input stem, the streamable effect that converts
    it (None: the stem keeps its sound); for engines with FX_PARAMS, the chain per stem. Where the
    stems planned on were the whole song, `rendered` holds what the fitting already rendered (the
    effects applied to the whole stems), so that a short song is not rendered twice."""

    effects: dict[str, Streamable | None]
    chains: dict | None = None
    rendered: dict[str, np.ndarray] | None = None


@dataclass(frozen=True)
class Measured:
    """What a plan is fitted on for one song: per stem an excerpt (the whole stem when the song is
    short: mixing/measure.py) and the integrated loudness (LUFS) of the whole stem."""

    excerpts: dict[str, np.ndarray]
    loudness: dict[str, float]
    whole: bool  # the excerpts are the whole stems


class Engine(Protocol):
    name: str
    info: dict                    # what a manifest records: kind, model files and their hashes
    capabilities: frozenset[str]  # of REFERENCE_B, FX_PARAMS

    def convert(self, input_stems: dict[str, np.ndarray], reference_stems: dict[str, np.ndarray],
                progress: Progress = no_progress,
                reference_b_stems: dict[str, np.ndarray] | None = None) -> Conversion:
        """Convert every input stem toward its reference stem; a stem without a usable reference
        stem keeps its sound. reference_b_stems only where REFERENCE_B is in capabilities."""
