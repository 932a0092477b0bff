"""Mixing chains for cloner training pairs, beyond the FXmanipulator: what users' references were
mixed with, on pedalboard's JUCE effects (an implementation independent of mixdaemon.fx).

The FXmanipulator (§2) draws its effects from the project's own DSP with the paper's ranges; a
cloner trained only on it learns to undo and redo those effects, and on a real reference it moves
the sound in directions the reference does not have. `MixingChains` draws, per triplet, a chain as a
mix engineer would set one on a stem: a few EQ filters (shelves, peaks, high- and low-pass),
compression without make-up gain from a threshold under the stem's level, sometimes a reverb or a
short delay, a width change (down to mono), a constant-power pan and a level offset of up to
±15 dB. Which effects fire and in what order the EQ and the compressor run are drawn too.

`TrainingFx` is what `data.cloner_batch` calls per stem: the FXmanipulator, these chains, or either
by a coin (fx_family "both"). Every draw is applied unchanged to the target (A) and the reference
(B), as §4.2 asks; when the louder of the two would exceed MAX_PEAK both get the same gain down, so
neither is clipped and their styles stay the same.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pedalboard

from mixdaemon import defaults
from mixdaemon.audio.dsp import WORKING_RATE, db_to_amp, from_mid_side, log_uniform, rms_dbfs, to_mid_side
from mixdaemon.fx.manipulator import MARGIN_SAMPLES, FXManipulator

MAX_PEAK = 0.98
QUIET_RMS_DBFS = -80.0  # the level a near-silent segment's compressor threshold is measured from


class MixingChains:
    """A drawn chain (module docstring) applied to every signal of a triplet."""

    def draw(self, rng: np.random.Generator, level_dbfs: float) -> dict:
        eq = []
        for _ in range(int(rng.integers(1, 5))):
            kind = rng.choice(["low_shelf", "high_shelf", "peak", "peak"])
            if kind == "low_shelf":
                eq.append(("low_shelf", log_uniform(rng, 40.0, 400.0), float(rng.uniform(-15, 15)), 0.707))
            elif kind == "high_shelf":
                eq.append(("high_shelf", log_uniform(rng, 2000.0, 12000.0), float(rng.uniform(-15, 15)), 0.707))
            else:
                eq.append(("peak", log_uniform(rng, 80.0, 10000.0), float(rng.uniform(-15, 15)),
                           log_uniform(rng, 0.3, 5.0)))
        if rng.random() < 0.3:
            eq.append(("high_pass", log_uniform(rng, 20.0, 250.0), 0.0, 0.707))
        if rng.random() < 0.2:
            eq.append(("low_pass", log_uniform(rng, 5000.0, 18000.0), 0.0, 0.707))
        compressor = None
        if rng.random() < 0.7:
            compressor = {"threshold_db": level_dbfs - float(rng.uniform(0.0, 18.0)),
                          "ratio": log_uniform(rng, 1.5, 12.0), "attack_ms": log_uniform(rng, 0.5, 80.0),
                          "release_ms": log_uniform(rng, 20.0, 800.0)}
        space = None
        if rng.random() < 0.4:
            space = {"kind": "reverb", "room_size": float(rng.uniform(0.1, 0.98)),
                     "damping": float(rng.uniform(0.0, 1.0)), "wet_level": float(rng.uniform(0.03, 0.4)),
                     "width": float(rng.uniform(0.5, 1.0))}
        elif rng.random() < 0.15:
            space = {"kind": "delay", "seconds": float(rng.uniform(0.06, 0.4)),
                     "feedback": float(rng.uniform(0.0, 0.4)), "mix": float(rng.uniform(0.05, 0.3))}
        return {"eq": eq, "compressor": compressor, "compressor_first": bool(rng.random() < 0.3), "space": space,
                "side_gain": float(rng.uniform(0.0, 2.5)) if rng.random() < 0.7 else 1.0,
                "pan": float(rng.uniform(-0.8, 0.8)) if rng.random() < 0.6 else 0.0,
                "gain_db": float(rng.uniform(-15.0, 15.0))}

    @staticmethod
    def board(drawn: Mapping) -> pedalboard.Pedalboard:
        filters = {"low_shelf": lambda f, g, q: pedalboard.LowShelfFilter(f, g, q),
                   "high_shelf": lambda f, g, q: pedalboard.HighShelfFilter(f, g, q),
                   "peak": lambda f, g, q: pedalboard.PeakFilter(f, g, q),
                   "high_pass": lambda f, g, q: pedalboard.HighpassFilter(f),
                   "low_pass": lambda f, g, q: pedalboard.LowpassFilter(f)}
        eq = [filters[kind](f, g, q) for kind, f, g, q in drawn["eq"]]
        dynamics = [pedalboard.Compressor(**drawn["compressor"])] if drawn["compressor"] else []
        plugins = dynamics + eq if drawn["compressor_first"] else eq + dynamics
        space = drawn["space"]
        if space and space["kind"] == "reverb":
            # JUCE's dry level is scaled by 2 inside the reverb: 0.5 passes the dry signal at unity
            plugins.append(pedalboard.Reverb(room_size=space["room_size"], damping=space["damping"],
                                             wet_level=space["wet_level"], dry_level=0.5, width=space["width"]))
        elif space:
            plugins.append(pedalboard.Delay(space["seconds"], space["feedback"], space["mix"]))
        return pedalboard.Pedalboard(plugins)

    @classmethod
    def apply(cls, x: np.ndarray, drawn: Mapping) -> np.ndarray:
        """The chain on (n, 2) audio at the working rate, from rest; (n, 2) float64."""
        y = cls.board(drawn)(np.ascontiguousarray(np.asarray(x, np.float32).T), WORKING_RATE).T.astype(np.float64)
        mid, side = to_mid_side(y)
        y = from_mid_side(mid, drawn["side_gain"] * side)
        angle = (drawn["pan"] + 1.0) * np.pi / 4.0  # constant power, unity at the centre
        return y * (np.sqrt(2.0) * np.array([np.cos(angle), np.sin(angle)]) * db_to_amp(drawn["gain_db"]))

    def manipulate(self, signals: Sequence[np.ndarray], rng: np.random.Generator, *,
                   padded: bool = False) -> tuple[list[np.ndarray], dict]:
        """As FXManipulator.manipulate: one draw applied to every signal ((n, 2); with padded=True each
        carries MARGIN_SAMPLES at both ends, cropped after processing, so reverbs and compressors start
        warm). The compressor's threshold is set from the first signal's level. Float32 outputs."""
        margin = MARGIN_SAMPLES if padded else 0
        drawn = self.draw(rng, max(rms_dbfs(signals[0]), QUIET_RMS_DBFS))
        outputs = [self.apply(x, drawn)[margin:len(x) - margin] for x in signals]
        peak = max(float(np.max(np.abs(y))) for y in outputs)
        scale = MAX_PEAK / peak if peak > MAX_PEAK else 1.0
        return [(y * scale).astype(np.float32) for y in outputs], drawn


class TrainingFx:
    """One stem's effect family for cloner triplets (module docstring)."""

    def __init__(self, manipulator: FXManipulator, family: str = "fxmanipulator", chains_probability: float = 0.5):
        if family not in defaults.CLONER_FX_FAMILIES:
            raise ValueError(f"fx family {family!r}: one of {', '.join(defaults.CLONER_FX_FAMILIES)}")
        self.manipulator, self.family, self.chains = manipulator, family, MixingChains()
        self.chains_probability = {"fxmanipulator": 0.0, "mixing-chains": 1.0, "both": chains_probability}[family]

    def manipulate(self, signals: Sequence[np.ndarray], rng: np.random.Generator, *,
                   padded: bool = False) -> tuple[list[np.ndarray], dict]:
        # the coin is drawn only when it decides something, so "fxmanipulator" runs keep their draws
        if self.chains_probability and (self.chains_probability >= 1.0 or rng.random() < self.chains_probability):
            return self.chains.manipulate(signals, rng, padded=padded)
        return self.manipulator.manipulate(signals, rng, padded=padded)
