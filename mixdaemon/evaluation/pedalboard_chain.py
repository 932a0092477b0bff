"""A random mixing chain per stem, drawn from a seeded generator and run on pedalboard's JUCE effects:
an implementation of EQ, compression and reverb independent of the project's own DSP (mixdaemon.fx),
so that the raw and unpaired protocols do not measure an engine against a copy of itself.

One draw (`draw`), in this order (frequencies log-uniform, everything else uniform):

1. EQ: low shelf 60–300 Hz, two peak filters 100 Hz–8 kHz with Q 0.5–4, high shelf 2.5–10 kHz;
   every gain −12…+12 dB.
2. Compressor without make-up gain: threshold = the stem's RMS level (dBFS) − 0…12 dB, ratio 2–10,
   attack 1–50 ms, release 30–500 ms.
3. Reverb on about half the stems (probability 0.5): room size 0.2–0.95, wet level 0.05–0.3, dry
   level 0.5 (JUCE scales the dry level by 2: the dry signal passes at unity).
4. Stereo width: the side signal S = L − R scaled by 0.25–2.5 (the mid signal kept).
5. Pan −0.6…+0.6 as a balance control: a positive pan attenuates the left channel by 1 − pan, a
   negative one the right channel by 1 + pan.
6. Gain −12…+12 dB.

`apply` runs the chain on (n, 2) float32 audio at the working rate; the effects start from rest on
every call, so the same chain gives the same output for the same input.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pedalboard

from mixdaemon.audio.dsp import WORKING_RATE, db_to_amp, from_mid_side, log_uniform, to_mid_side

REVERB_PROBABILITY = 0.5
REVERB_DRY_LEVEL = 0.5
SILENT_RMS_DBFS = -100.0  # the RMS level a silent stem's compressor threshold is measured from


@dataclass(frozen=True)
class PedalboardChain:
    """The drawn parameters of one stem's chain (module docstring); reverb_room_size is None when the
    draw has no reverb."""

    low_shelf_hz: float
    low_shelf_db: float
    peak1_hz: float
    peak1_db: float
    peak1_q: float
    peak2_hz: float
    peak2_db: float
    peak2_q: float
    high_shelf_hz: float
    high_shelf_db: float
    threshold_db: float
    ratio: float
    attack_ms: float
    release_ms: float
    reverb_room_size: float | None
    reverb_wet_level: float | None
    width: float
    pan: float
    gain_db: float

    def to_dict(self) -> dict:
        return asdict(self)

    def board(self) -> pedalboard.Pedalboard:
        """The EQ, compressor and reverb of the chain as a pedalboard."""
        plugins = [pedalboard.LowShelfFilter(self.low_shelf_hz, self.low_shelf_db),
                   pedalboard.PeakFilter(self.peak1_hz, self.peak1_db, self.peak1_q),
                   pedalboard.PeakFilter(self.peak2_hz, self.peak2_db, self.peak2_q),
                   pedalboard.HighShelfFilter(self.high_shelf_hz, self.high_shelf_db),
                   pedalboard.Compressor(self.threshold_db, self.ratio, self.attack_ms, self.release_ms)]
        if self.reverb_room_size is not None:
            plugins.append(pedalboard.Reverb(room_size=self.reverb_room_size, wet_level=self.reverb_wet_level,
                                             dry_level=REVERB_DRY_LEVEL))
        return pedalboard.Pedalboard(plugins)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The chain on x ((n, 2) float32 at the working rate); returns (n, 2) float32."""
        # pedalboard wants channel-first float32
        y = self.board()(np.ascontiguousarray(np.asarray(x, dtype=np.float32).T), WORKING_RATE).T
        mid, side = to_mid_side(y.astype(np.float64))
        y = from_mid_side(mid, self.width * side)
        y[:, 0] *= min(1.0, 1.0 - self.pan)
        y[:, 1] *= min(1.0, 1.0 + self.pan)
        return (y * db_to_amp(self.gain_db)).astype(np.float32)


def draw(rng: np.random.Generator, stem_rms_db: float) -> PedalboardChain:
    """One chain (module docstring) for a stem whose RMS level is stem_rms_db dBFS."""
    def gain() -> float:
        return float(rng.uniform(-12.0, 12.0))

    low_shelf_hz, low_shelf_db = log_uniform(rng, 60.0, 300.0), gain()
    peak1_hz, peak1_db, peak1_q = log_uniform(rng, 100.0, 8000.0), gain(), float(rng.uniform(0.5, 4.0))
    peak2_hz, peak2_db, peak2_q = log_uniform(rng, 100.0, 8000.0), gain(), float(rng.uniform(0.5, 4.0))
    high_shelf_hz, high_shelf_db = log_uniform(rng, 2500.0, 10000.0), gain()
    threshold_db = max(float(stem_rms_db), SILENT_RMS_DBFS) + float(rng.uniform(-12.0, 0.0))
    ratio, attack_ms, release_ms = (float(rng.uniform(2.0, 10.0)), float(rng.uniform(1.0, 50.0)),
                                    float(rng.uniform(30.0, 500.0)))
    reverb = rng.random() < REVERB_PROBABILITY
    # drawn with or without reverb, so that the parameters after it do not depend on the coin
    room_size, wet_level = float(rng.uniform(0.2, 0.95)), float(rng.uniform(0.05, 0.3))
    return PedalboardChain(low_shelf_hz, low_shelf_db, peak1_hz, peak1_db, peak1_q, peak2_hz, peak2_db, peak2_q,
                           high_shelf_hz, high_shelf_db, threshold_db, ratio, attack_ms, release_ms,
                           room_size if reverb else None, wet_level if reverb else None,
                           width=float(rng.uniform(0.25, 2.5)), pan=float(rng.uniform(-0.6, 0.6)), gain_db=gain())
