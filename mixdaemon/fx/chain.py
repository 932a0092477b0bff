"""The interpretable FX chain of the param engine: per stem, the effects an engineer would insert on a
track, with settings in the units a DAW shows.

    EQ (low shelf, three peaks, high shelf) → compressor → width → pan → reverb send → gain

Each stage is a small callable object (pedalboard's style) and a streamable effect
(audio/streams.py); `StemChain.stages()` lists the active ones, `chain_effect(chain)` runs them
block by block with their state carried (a stem of any length in memory bounded by the block size)
and `render(stem, chain)` is that stream fed the whole stem. The parameters mirror the FXmanipulator (§2.2) so a
predictor can learn them from its draws (`chain_from_draw`), and they are saved per job as
`fx_params.json` (`write_fx_params`), which integrations/reaper/mixdaemon_apply_fx_params.lua turns
into ReaEQ / ReaComp / track volume, pan and width.

Units: gains and thresholds in dB, frequencies in Hz, attack/release in ms, ratio as R in R:1, pan
from −1 (left) to +1 (right), width as the side-signal gain (0 mono, 1 unchanged, 2 twice the side),
reverb send in dB of the fully wet reverb relative to the dry track (null: no send).

Implementation choices (deviations from "pedalboard everywhere", on purpose):
- The EQ runs the RBJ biquads of audio/dsp.py (scipy), the same filters as the FXmanipulator: the
  estimator fits EQ settings through their exact analytic response (`eq_response_db`), and scipy's
  cascade is faster than five pedalboard filters.
- The compressor is the project's one compressor, dsp.compress (§1.3: peak detector, smoothed gain
  reduction, hard knee, channels independent), which FX normalization and the FXmanipulator use;
  the chain's stage settles its detector on the stem's opening first (CompressorStage).
  A heavy compressor changes a stem's spectrum as well as its dynamics (a fast one on bass adds
  harmonics): the FXmanipulator's compressor alone moves the real bass stems' spectral shape by
  4.9 dB RMS (benchmarks/bench_param_engine.py --sections ceiling). The EQ estimate takes out the
  coloration of the chain's own compressor, which only works if that compressor colors like the
  one the drawn settings came from; JUCE's (pedalboard.Compressor, used first, a little faster) does
  not. Neither equals ReaComp, so settings transfer to the DAW approximately (same threshold,
  ratio and time constants).
- Pan is a balance control (the far channel is turned down linearly, the near one kept), REAPER's
  "stereo balance" behaviour under a 0 dB pan law; width scales the side signal and keeps the mid.
- The reverb send is pedalboard.Reverb (Freeverb) fully wet, damping 0.5, added to the panned signal.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import pedalboard
from scipy import signal

from mixdaemon.audio import dsp, streams
from mixdaemon.files import atomic_write
from mixdaemon.fx.manipulator import Imager, Panner

FX_PARAMS_FORMAT = "mixdaemon-fx-params"
FX_PARAMS_VERSION = 1
FX_PARAMS_NAME = "fx_params.json"

BAND_KINDS = ("low_shelf", "peak", "peak", "peak", "high_shelf")
SHELF_Q = 0.707
REVERB_DAMPING = 0.5
DEFAULT_ROOM_SIZE = 0.6  # what an impulse-response reverb of the FXmanipulator maps to [U→R]
REVERB_BLOCK = 65536     # the longest piece the reverb send's plugin is given (ReverbSendStream)

PRIME_SECONDS = 0.25  # five times the longest attack the param engine sets: the detector has settled

# A draw's side/mid ratio is unbounded when it moves (nearly) all energy to the side; 8 is 18 dB
# more side than mid, beyond any width the param engine estimates (mixing/param_estimation.py).
MAX_WIDTH = 8.0


# --- settings ---------------------------------------------------------------------------------------

@dataclass
class EqBand:
    kind: str          # "low_shelf" | "peak" | "high_shelf"
    freq_hz: float
    gain_db: float = 0.0
    q: float = SHELF_Q

    def sos(self, sr: int) -> np.ndarray:
        make = {"low_shelf": dsp.low_shelf, "high_shelf": dsp.high_shelf, "peak": dsp.peaking}[self.kind]
        return make(self.freq_hz, self.gain_db, self.q, sr)


@dataclass
class CompressorSettings:
    threshold_db: float = 0.0
    ratio: float = 1.0
    attack_ms: float = 10.0
    release_ms: float = 100.0

    @property
    def active(self) -> bool:
        return self.ratio > 1.001 and self.threshold_db < 0.0


@dataclass
class ReverbSend:
    send_db: float | None = None  # None: no send
    room_size: float = DEFAULT_ROOM_SIZE

    @property
    def active(self) -> bool:
        return self.send_db is not None


def default_eq() -> list[EqBand]:
    """A flat EQ with the FXmanipulator's band centres (docs/ALGORITHMS.md §2.2)."""
    return [EqBand("low_shelf", 115.0), EqBand("peak", 600.0, q=1.05), EqBand("peak", 2000.0, q=1.05),
            EqBand("peak", 5500.0, q=1.05), EqBand("high_shelf", 7500.0)]


@dataclass
class StemChain:
    """One stem's settings; the defaults are the identity (flat EQ, no compression, width 1, centre,
    no reverb, 0 dB)."""

    eq: list[EqBand] = field(default_factory=default_eq)
    compressor: CompressorSettings = field(default_factory=CompressorSettings)
    width: float = 1.0
    pan: float = 0.0
    reverb: ReverbSend = field(default_factory=ReverbSend)
    gain_db: float = 0.0

    def eq_sos(self, sr: int = dsp.WORKING_RATE) -> np.ndarray:
        return np.stack([band.sos(sr) for band in self.eq])

    def stages(self, sr: int = dsp.WORKING_RATE) -> list:
        """The chain's processing stages in order, leaving out those that would do nothing."""
        out = []
        if any(abs(band.gain_db) > 1e-6 for band in self.eq):
            out.append(EqStage(self.eq_sos(sr)))
        if self.compressor.active:
            out.append(CompressorStage(self.compressor, sr))
        if abs(self.width - 1.0) > 1e-6 or abs(self.pan) > 1e-6:
            out.append(StereoStage(self.width, self.pan))
        if self.reverb.active:
            out.append(ReverbSendStage(self.reverb, sr))
        if abs(self.gain_db) > 1e-9:
            out.append(GainStage(self.gain_db))
        return out

    # JSON in user units

    def to_dict(self) -> dict:
        def r(value, digits=2):
            return round(float(value), digits)
        return {"gain_db": r(self.gain_db),
                "eq": [{"type": b.kind, "freq_hz": r(b.freq_hz, 1), "gain_db": r(b.gain_db), "q": r(b.q, 3)}
                       for b in self.eq],
                "compressor": {"threshold_db": r(self.compressor.threshold_db), "ratio": r(self.compressor.ratio),
                               "attack_ms": r(self.compressor.attack_ms), "release_ms": r(self.compressor.release_ms, 1)},
                "width": r(self.width, 3), "pan": r(self.pan, 3),
                "reverb": {"send_db": None if self.reverb.send_db is None else r(self.reverb.send_db),
                           "room_size": r(self.reverb.room_size, 3)}}


# --- stages -----------------------------------------------------------------------------------------
# Each stage maps a float64 channel-first (2, n) signal to another: every stage then works on
# contiguous channels (the compressor's loop, scipy's filters, pedalboard's planar buffers), and a
# chain copies its audio only on the way in and out of `render`. Each is streamable over such
# channel-first blocks (time along the last axis), keeping its state from one block to the next,
# and its whole-signal call is its stream fed in one block.

class Stage:
    """A stage's whole-signal call, for stages that define `stream`."""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.stream(x.shape[-1]).push(x, last=True)


class EqStage(Stage):
    def __init__(self, sos: np.ndarray):
        self.sos = sos

    def stream(self, n_samples: int) -> "EqStream":
        return EqStream(self.sos)


class EqStream:
    """The biquad cascade with its filter memories carried from block to block (zero at the start)."""

    def __init__(self, sos: np.ndarray):
        self.sos, self.memories = sos, None

    def push(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        block = np.asarray(block, dtype=np.float64)
        if block.shape[-1] == 0:   # scipy cannot filter an empty block
            return block.copy()
        if self.memories is None:
            self.memories = np.zeros((self.sos.shape[0],) + block.shape[:-1] + (2,))
        out, self.memories = signal.sosfilt(self.sos, block, axis=-1, zi=self.memories)
        return out


class CompressorStage(Stage):
    """dsp.compress with its detector settled first on the stem's opening PRIME_SECONDS played
    backwards (then dropped): a stem that starts mid-note starts at the gain reduction the compressor
    has a moment later, not at none — from rest, its first attack time would pass uncompressed, a
    burst as loud as the gain reduction once the output gain makes up for it. A stem that starts
    from silence is compressed as from rest. Streamed, it holds its output back until the opening
    has come in."""

    def __init__(self, settings: CompressorSettings, sr: int):
        self.settings, self.sr = settings, sr
        self.compressor = dsp.Compressor(settings.threshold_db, settings.ratio, settings.attack_ms,
                                         settings.release_ms, sr, time_axis=-1)

    def stream(self, n_samples: int) -> "PrimedCompressorStream":
        return PrimedCompressorStream(self.compressor.stream(n_samples),
                                      max(0, min(int(PRIME_SECONDS * self.sr), n_samples - 1)))


class PrimedCompressorStream:
    def __init__(self, compressor: dsp.CompressorStream, lead: int):
        self.compressor, self.lead = compressor, lead
        self.opening: list[np.ndarray] | None = []   # blocks held until the priming; None once primed

    def push(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        if self.opening is None:
            return self.compressor.push(block, last)
        self.opening.append(block)
        held = self.opening[0] if len(self.opening) == 1 else np.concatenate(self.opening, axis=-1)
        if held.shape[-1] <= self.lead and not last:
            return np.empty(held.shape[:-1] + (0,))
        self.opening = None
        self.compressor.push(held[..., self.lead:0:-1])
        return self.compressor.push(held, last)


class StereoStage(Stage):
    """Width (side gain, mid kept), then balance pan: one 2×2 matrix on (L, R).
    With M = L+R, S = L−R scaled by w: L' = a·L + b·R, R' = b·L + a·R, a = (1+w)/2, b = (1−w)/2."""

    def __init__(self, width: float, pan: float):
        a, b = (1.0 + width) / 2.0, (1.0 - width) / 2.0
        g_left, g_right = balance_gains(pan)
        self.matrix = np.array([[a * g_left, b * g_left], [b * g_right, a * g_right]])  # y = matrix @ x

    def stream(self, n_samples: int) -> streams.Samplewise:
        return streams.Samplewise(self.apply)

    def apply(self, x: np.ndarray) -> np.ndarray:
        return np.dot(self.matrix, x, out=np.empty_like(x))


class ReverbSendStage(Stage):
    def __init__(self, reverb: ReverbSend, sr: int):
        self.reverb, self.sr = reverb, sr
        self.level = float(dsp.db_to_amp(reverb.send_db))

    def stream(self, n_samples: int) -> "ReverbSendStream":
        return ReverbSendStream(self)


class ReverbSendStream:
    """The send through its own pedalboard.Reverb, its tail carried across blocks. pedalboard prepares
    a plugin for the longest block it has been given and, given a longer one, prepares it again,
    which clears the reverb: so the plugin is prepared once for REVERB_BLOCK samples, with silence
    (which leaves a cleared reverb cleared, to the bit), and then fed pieces no longer than that."""

    def __init__(self, stage: ReverbSendStage):
        self.stage, self.plugin = stage, None

    def push(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        stage, dry = self.stage, block.astype(np.float32)
        if self.plugin is None:
            self.plugin = pedalboard.Reverb(room_size=stage.reverb.room_size, damping=REVERB_DAMPING, wet_level=1.0,
                                            dry_level=0.0, width=1.0)
            self.plugin(np.zeros(dry.shape[:-1] + (REVERB_BLOCK,), np.float32), stage.sr, reset=True)
        wet = [self.plugin(dry[..., start:start + REVERB_BLOCK], stage.sr, reset=False)
               for start in range(0, dry.shape[-1], REVERB_BLOCK)]
        return block + stage.level * np.concatenate(wet, axis=-1) if wet else block.copy()


class GainStage(Stage):
    def __init__(self, gain_db: float):
        self.factor = float(dsp.db_to_amp(gain_db))

    def stream(self, n_samples: int) -> streams.Samplewise:
        return streams.Samplewise(self.apply)

    def apply(self, x: np.ndarray) -> np.ndarray:
        return x * self.factor


def balance_gains(pan: float) -> tuple[float, float]:
    """(left, right) gains of the balance control: the channel away from the pan side is turned down."""
    return (1.0 - pan, 1.0) if pan > 0 else (1.0, 1.0 + pan)


class ChainEffect:
    """A stem's chain as a streamable effect (audio/streams.py): (m, 2) blocks in, float32 (m', 2)
    out, each block made channel-first once for all the stages; the compressor's priming holds the
    first PRIME_SECONDS back."""

    def __init__(self, stages: list[Stage]):
        self.stages = stages

    def stream(self, n_samples: int) -> "ChainStream":
        return ChainStream(streams.Chain(stage.stream(n_samples) for stage in self.stages))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return streams.whole(self, x)


class ChainStream:
    def __init__(self, planar: streams.Chain):
        self.planar = planar

    def push(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        x = np.asarray(block)
        if x.ndim != 2 or x.shape[1] != 2:
            raise ValueError(f"stem: shape {x.shape}; expected (n, 2) stereo")
        out = self.planar.push(np.ascontiguousarray(x.T, dtype=np.float64), last)
        return np.ascontiguousarray(out.T, dtype=np.float32)


def chain_effect(chain: StemChain, sr: int = dsp.WORKING_RATE) -> ChainEffect:
    """The chain's active stages as one streamable effect: what renders a stem block by block."""
    return ChainEffect(chain.stages(sr))


def render(stem: np.ndarray, chain: StemChain, sr: int = dsp.WORKING_RATE) -> np.ndarray:
    """The stem through the chain: float32 (n, 2), not clipped (limiting is mastering's job); the
    chain's stream fed in one block."""
    return streams.whole(chain_effect(chain, sr), stem)


def run_stages(stages: list[Stage], planar: np.ndarray) -> np.ndarray:
    """A channel-first (2, n) float64 signal through stages in order."""
    for stage in stages:
        planar = stage(planar)
    return planar


def eq_response_db(bands: list[EqBand], freqs_hz: np.ndarray, sr: int = dsp.WORKING_RATE) -> np.ndarray:
    """Magnitude response of the EQ in dB at freqs_hz (the analytic response of the biquads, all
    bands at once: the EQ fit evaluates it thousands of times per stem)."""
    z = np.exp(-1j * 2.0 * np.pi * np.asarray(freqs_hz, dtype=np.float64) / sr)
    powers = np.stack([np.ones_like(z), z, z * z])                  # (3, frequencies)
    sos = np.stack([band.sos(sr) for band in bands])                # (bands, 6)
    h = (sos[:, :3] @ powers) / (sos[:, 3:] @ powers)
    return np.sum(20.0 * np.log10(np.abs(h) + 1e-30), axis=0)


# --- from FXmanipulator draws -----------------------------------------------------------------------

def _reverb_send_db(dry_weight: float, wet_share: float, room_size: float, signal: np.ndarray, sr: int) -> float:
    """The send level at which our reverb adds the same wet/dry ratio as the FXmanipulator's
    RMS-matched wet signal mixed as w·x + (1−w)·wet (wet_share scales the branch, for drums)."""
    wet = pedalboard.Reverb(room_size=room_size, damping=REVERB_DAMPING, wet_level=1.0, dry_level=0.0, width=1.0)(
        np.ascontiguousarray(signal.T, dtype=np.float32), sr).T.astype(np.float64)
    rms_dry = np.sqrt(np.mean(signal ** 2)) + 1e-12
    rms_wet = np.sqrt(np.mean(wet ** 2)) + 1e-12
    ratio = wet_share * (1.0 - dry_weight) / max(dry_weight * wet_share + (1.0 - wet_share), 1e-3)
    return float(dsp.db(max(ratio, 1e-5) * rms_dry / rms_wet))


def chain_from_draw(drawn: Mapping, signal: np.ndarray, sr: int = dsp.WORKING_RATE) -> StemChain:
    """The chain whose settings correspond to an FXmanipulator draw (FXManipulator.draw,
    fx/manipulator.py) applied to `signal` ((n, 2), the stem the draw is applied to).

    EQ and compressor settings are copied; the imager's width becomes the side/mid gain ratio it
    applies to this signal (Imager.gains, at most MAX_WIDTH); the pan law becomes the balance with
    the same left/right ratio; a reverb becomes the send giving the same wet/dry ratio (for drums,
    the high-band stage's 0.4 branch); an impulse-response reverb maps to room size
    DEFAULT_ROOM_SIZE. gain_db stays 0: the FXmanipulator RMS-matches after every stage, so the
    equivalent output gain depends on the whole output (callers measure it by comparing levels).
    Approximations: the chain's order is fixed while a draw shuffles EQ/compressor and pan/imager,
    and drums' fixed re-filtering shelves are not mapped.
    """
    x = np.asarray(signal, dtype=np.float64)
    params, fired = drawn["params"], drawn["fired"]
    chain = StemChain()
    if fired.get("eq"):
        eq = params["eq"]
        chain.eq = [EqBand("low_shelf", eq["low_shelf_freq_hz"], eq["low_shelf_gain_db"], SHELF_Q)]
        chain.eq += [EqBand("peak", eq[f"peak{i}_freq_hz"], eq[f"peak{i}_gain_db"], eq[f"peak{i}_q"]) for i in (1, 2, 3)]
        chain.eq.append(EqBand("high_shelf", eq["high_shelf_freq_hz"], eq["high_shelf_gain_db"], SHELF_Q))
    if fired.get("comp"):
        c = params["comp"]
        chain.compressor = CompressorSettings(c["threshold_db"], c["ratio"], c["attack_ms"], c["release_ms"])
    if fired.get("imager"):
        mid_gain, side_gain = Imager.gains(*dsp.to_mid_side(x), params["imager"]["width"])
        chain.width = float(np.clip(side_gain / max(mid_gain, 1e-3), 0.0, MAX_WIDTH))
    if fired.get("pan"):
        left, right = Panner.gains(params["pan"]["position"], params["pan"]["law"])
        chain.pan = float(1.0 - left / right) if right >= left else float(right / max(left, 1e-9) - 1.0)
    if fired.get("reverb"):
        block = params["reverb"]
        if drawn["stem"] == "drums":
            reverb, share = block.get("high_band"), 0.4
        else:
            reverb, share = block, 1.0
        if reverb is not None:
            room = reverb.get("room_size", DEFAULT_ROOM_SIZE)
            chain.reverb = ReverbSend(_reverb_send_db(reverb["dry_weight"], share, room, x, sr), room)
    return chain


# --- fx_params.json -----------------------------------------------------------------------------------

def fx_params_document(chains: Mapping[str, StemChain], engine_info: Mapping | None = None) -> dict:
    return {"format": FX_PARAMS_FORMAT, "version": FX_PARAMS_VERSION, "sample_rate": dsp.WORKING_RATE,
            "chain_order": ["eq", "compressor", "width", "pan", "reverb_send", "gain"],
            "units": {"gain_db": "dB", "freq_hz": "Hz", "q": "Q (RBJ)", "threshold_db": "dBFS", "ratio": "R:1",
                      "attack_ms": "ms", "release_ms": "ms", "width": "side gain (1 = unchanged)",
                      "pan": "-1 left .. +1 right (balance)", "send_db": "dB wet re dry (null = off)"},
            "engine": dict(engine_info or {}),
            "stems": {name: chain.to_dict() for name, chain in chains.items()}}


def write_fx_params(path: str | os.PathLike, chains: Mapping[str, StemChain], engine_info: Mapping | None = None) -> Path:
    """Write fx_params.json (atomically, files.atomic_write)."""
    path = Path(path)
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(fx_params_document(chains, engine_info), f, indent=1, allow_nan=False)
        f.write("\n")
    return path

