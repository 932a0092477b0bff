"""Estimating one stem's FX chain (fx/chain.py's StemChain) from the input stem and the reference stem:
a learned first guess, then a short refinement against the reference's features.

1. Prediction. `ParamPredictor` (a small MLP run in numpy; trained by train/params.py on
   FXmanipulator draws, whose parameters are known) maps fx/features.py's pair_vector(input,
   reference) to the chain's settings, encoded as PREDICTED_SLOTS (each scaled to [0, 1]). The
   compressor threshold is predicted relative to the input's level, so inputs at any level work.
2. Refinement against the reference stem itself (an inference-time search, as in ST-ITO, over the
   chain's own parameters), bounded in cost: a fixed number of renders of a fixed-length excerpt of
   the input (fx/features.py's excerpt), not a clock, so results do not depend on machine load
   (docs/ALGORITHMS.md has no counterpart; our design [U→R]). Only the stages of the aspects asked for
   are estimated; the others stay at identity.
   - EQ: least squares of the EQ's analytic response (fx/chain.py's eq_response_db, averaged per
     band) against the spectral-shape difference reference − input, offset-free (level is the
     gain's job); every setting held toward the prediction (band gains brought within
     ±EQ_FIT_GAIN_DB), so that a band leaves the predicted EQ only as far as several bands of the
     shape difference ask for, and no band piles up at its limit.
   - compressor: a grid and coordinate search (search_compressor) over threshold (relative to the
     EQ'd excerpt's level), ratio, attack and release, rendering the EQ'd excerpt and comparing its
     block dynamics (fx/features.py's block_dynamics_db) with those of the reference's excerpt
     (measured alike, since percentiles of an excerpt and of a whole stem differ). "Off" where the
     reference is more dynamic by more than its own halves differ (dynamics_spread); the predicted
     compressor (or its "off") kept where the excerpt through it is within that spread of the
     reference and no farther than the excerpt as it is; otherwise "off" unless the reference is
     less dynamic and a compressor moves the dynamics toward it; no setting that raises the crest
     or peak-to-level ratio or turns the level down by more than MAX_GAIN_REDUCTION_DB.
   - reverb send: the predicted one (a send cannot be measured off the reference's features).
   - EQ again, against what the rest of the chain does to the spectrum: render the excerpt through
     the whole chain, take away the EQ's own response, and refit the EQ to the shape change less
     that coloration (fit_eq_with_coloration; gains held toward 0 dB where the predicted EQ fits
     that remainder worse than no EQ). A heavy compressor adds harmonics and a reverb has
     its own tone; fitted to the whole change, the EQ took the blame for both.
   - width and pan, last: solved on channel covariances of the excerpt through EQ, compressor and
     reverb so that the side/mid and right/left energy ratios become the reference's
     (fit_width_and_pan), each target shifted by how much the excerpt's ratio differs from the whole
     input's. The reverb's share of the side energy is the chain's own, rendered, so the width
     does not take the blame for it.
   - gain: set by the engine after rendering (mixing/param.py), so the stem's gated level equals
     the reference's.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy.optimize import least_squares

from mixdaemon.errors import ModelFileError
from mixdaemon.fx import chain as fxchain
from mixdaemon.fx import features as fxfeatures


class Slot(NamedTuple):
    name: str
    low: float
    high: float
    log: bool = False


_EQ_HZ = ((30.0, 200.0), (200.0, 1000.0), (1000.0, 3000.0), (3000.0, 8000.0), (5000.0, 10000.0))
EQ_GAIN_DB = (-15.0, 15.0)
EQ_Q = (0.1, 2.0)
THRESHOLD_RE_LEVEL_DB = (-60.0, 30.0)   # FXmanipulator thresholds −80…−5 dBFS on stems near −25 dB
WIDTH_LOG2 = (-5.0, 2.0)                # width 1/32 … 4 (the imager's 0 … 2 maps into this)
SEND_DB = (-40.0, 20.0)                 # the bottom means "no send"
SEND_OFF_BELOW_DB = -35.0
RATIO_OFF_BELOW = 1.2

PREDICTED_SLOTS: tuple[Slot, ...] = tuple(
    [s for i, band in enumerate(_EQ_HZ) for s in
     [Slot(f"eq{i}.gain_db", *EQ_GAIN_DB), Slot(f"eq{i}.freq_hz", *band, log=True)]
     + ([Slot(f"eq{i}.q", *EQ_Q, log=True)] if fxchain.BAND_KINDS[i] == "peak" else [])]
    + [Slot("comp.threshold_re_level_db", *THRESHOLD_RE_LEVEL_DB), Slot("comp.ratio", 1.0, 40.0, log=True),
       Slot("comp.attack_ms", 1.0, 20.0, log=True), Slot("comp.release_ms", 50.0, 500.0, log=True),
       Slot("width_log2", *WIDTH_LOG2), Slot("pan", -1.0, 1.0),
       Slot("reverb.send_db", *SEND_DB), Slot("reverb.room_size", 0.3, 0.95)])
SLOT_INDEX = {slot.name: i for i, slot in enumerate(PREDICTED_SLOTS)}
_EQ_SLOTS = [i for i, s in enumerate(PREDICTED_SLOTS) if s.name.startswith("eq")]


def _to_unit(value: float, slot: Slot) -> float:
    lo, hi, v = slot.low, slot.high, value
    if slot.log:
        lo, hi, v = np.log(lo), np.log(hi), np.log(max(value, 1e-9))
    return float(np.clip((v - lo) / (hi - lo), 0.0, 1.0))


_SLOT_LOW = np.array([np.log(s.low) if s.log else s.low for s in PREDICTED_SLOTS])
_SLOT_HIGH = np.array([np.log(s.high) if s.log else s.high for s in PREDICTED_SLOTS])
_SLOT_LOG = np.array([s.log for s in PREDICTED_SLOTS])


def decode_slots(unit: np.ndarray) -> dict[str, float]:
    """Every slot's value, by name, from its [0, 1] encoding (one vectorized pass: the EQ fit
    decodes thousands of times per stem)."""
    values = _SLOT_LOW + np.clip(unit, 0.0, 1.0) * (_SLOT_HIGH - _SLOT_LOW)
    values = np.where(_SLOT_LOG, np.exp(values), values)
    return dict(zip(SLOT_INDEX, values.tolist()))


def chain_to_unit(chain: fxchain.StemChain, input_level_db: float) -> np.ndarray:
    """The chain as PREDICTED_SLOTS values in [0, 1] (the predictor's target; gain is not predicted)."""
    values = {}
    for i, band in enumerate(chain.eq):
        values[f"eq{i}.gain_db"], values[f"eq{i}.freq_hz"], values[f"eq{i}.q"] = band.gain_db, band.freq_hz, band.q
    comp = chain.compressor
    values["comp.threshold_re_level_db"] = (comp.threshold_db - input_level_db) if comp.active else THRESHOLD_RE_LEVEL_DB[1]
    values["comp.ratio"] = comp.ratio if comp.active else 1.0
    values["comp.attack_ms"], values["comp.release_ms"] = comp.attack_ms, comp.release_ms
    values["width_log2"] = np.log2(max(chain.width, 2.0 ** WIDTH_LOG2[0]))
    values["pan"] = chain.pan
    values["reverb.send_db"] = chain.reverb.send_db if chain.reverb.active else SEND_DB[0]
    values["reverb.room_size"] = chain.reverb.room_size
    return np.array([_to_unit(values[s.name], s) for s in PREDICTED_SLOTS])


def eq_from_unit(unit: np.ndarray, decoded: dict[str, float] | None = None) -> list[fxchain.EqBand]:
    """The EQ bands of chain_to_unit's encoding (`decoded`: decode_slots(unit), when already made)."""
    v = decoded or decode_slots(unit)
    return [fxchain.EqBand(kind, v[f"eq{i}.freq_hz"], v[f"eq{i}.gain_db"],
                           v[f"eq{i}.q"] if kind == "peak" else fxchain.SHELF_Q)
            for i, kind in enumerate(fxchain.BAND_KINDS)]


def chain_from_unit(unit: np.ndarray, input_level_db: float) -> fxchain.StemChain:
    """Decode chain_to_unit's encoding; a ratio below 1.2 or a send below −35 dB means "off"."""
    v = decode_slots(unit)
    eq = eq_from_unit(unit, v)
    threshold = min(-0.5, input_level_db + v["comp.threshold_re_level_db"])
    compressor = fxchain.CompressorSettings(threshold, v["comp.ratio"], v["comp.attack_ms"], v["comp.release_ms"]) \
        if v["comp.ratio"] >= RATIO_OFF_BELOW else fxchain.CompressorSettings(attack_ms=v["comp.attack_ms"],
                                                                              release_ms=v["comp.release_ms"])
    send = v["reverb.send_db"] if v["reverb.send_db"] >= SEND_OFF_BELOW_DB else None
    return fxchain.StemChain(eq, compressor, float(2.0 ** v["width_log2"]), v["pan"],
                             fxchain.ReverbSend(send, v["reverb.room_size"]))


# --- the predictor ------------------------------------------------------------------------------------

class ParamPredictor:
    """An MLP (ReLU hidden layers, sigmoid output) from standardized pair features to PREDICTED_SLOTS.
    Stored as safetensors: layer{k}.weight (in, out), layer{k}.bias, feature_mean, feature_std; the
    metadata holds the format, the slot names and the provenance (JSON)."""

    def __init__(self, tensors: dict[str, np.ndarray], metadata: dict, path: Path | None = None,
                 sha256: str | None = None):
        self.mean, self.std = tensors["feature_mean"], tensors["feature_std"]
        self.layers = [(tensors[f"layer{k}.weight"], tensors[f"layer{k}.bias"])
                       for k in range(sum(1 for key in tensors if key.endswith(".weight")))]
        self.metadata, self.path, self.sha256 = metadata, path, sha256

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(N, PAIR_FEATURE_SIZE) → (N, len(PREDICTED_SLOTS)) in [0, 1]."""
        h = (np.atleast_2d(features) - self.mean) / self.std
        for k, (weight, bias) in enumerate(self.layers):
            h = h @ weight + bias
            if k < len(self.layers) - 1:
                h = np.maximum(h, 0.0)
        return 1.0 / (1.0 + np.exp(-h))

    def save(self, path: str | Path) -> Path:
        from mixdaemon.nets.repo import save_param_predictor
        tensors = {"feature_mean": self.mean, "feature_std": self.std}
        for k, (weight, bias) in enumerate(self.layers):
            tensors[f"layer{k}.weight"], tensors[f"layer{k}.bias"] = weight, bias
        return save_param_predictor(path, tensors, {"feature_size": fxfeatures.PAIR_FEATURE_SIZE,
                                                    "slots": [s.name for s in PREDICTED_SLOTS],
                                                    "provenance": self.metadata.get("provenance", {})})

    @classmethod
    def load(cls, name_or_path: str | Path) -> "ParamPredictor":
        """A predictor file, or a name in the model store (nets/repo.py's store_dir(), `NAME.safetensors`)."""
        from mixdaemon.nets.repo import load_param_predictor
        tensors, metadata, path, sha256 = load_param_predictor(name_or_path)
        if metadata.get("slots") != [s.name for s in PREDICTED_SLOTS] \
                or metadata.get("feature_size") != fxfeatures.PAIR_FEATURE_SIZE:
            raise ModelFileError(f"{path}: made for other features or parameters than this mixdaemon's; retrain it")
        return cls(tensors, metadata, path, sha256)


# --- refinement -----------------------------------------------------------------------------------------

REFINED_ASPECTS = frozenset({"eq", "dynamics", "width", "space"})  # the output gain ("level") is the engine's

_SUBPOINTS = 4  # frequencies per spectrum band at which the EQ response is averaged
_EQ_GRID_HZ = np.geomspace(fxfeatures.BAND_EDGES_HZ[0], fxfeatures.BAND_EDGES_HZ[-1],
                          fxfeatures.SPECTRUM_BANDS * _SUBPOINTS + 1)
_EQ_GRID_HZ = np.sqrt(_EQ_GRID_HZ[:-1] * _EQ_GRID_HZ[1:])

# The EQ fit. Residuals are in dB per spectrum band. The reference's spectrum differs from the
# input's in content (other notes, other instruments) as well as in EQ, and the predictor, which
# sees both spectra, already tells the two apart; so every band gain is pulled toward the predicted
# gain (a move of g dB costs like a g·EQ_GAIN_PRIOR_PER_DB dB misfit in one band) within
# ±EQ_FIT_GAIN_DB: a move away from the prediction must be wanted by several bands, and no band sits
# at its limit because one song's bass plays lower than the other's (fit_eq_with_coloration pulls
# toward 0 dB where the predicted EQ was the other stages' coloration). The target is the shape
# difference as measured: smoothed over an octave where the reference's own halves differ, it
# blurred the narrow moves the prediction gets right (0.007 worse multitrack ratio on the paper's
# Table 2, 0.015 on raw, seed 0). A frequency
# or Q is held toward the prediction with EQ_PRIOR_WEIGHT (a move of 0.1 of its log range costs
# like a 0.1·EQ_PRIOR_WEIGHT dB misfit): those of near-flat bands are otherwise undetermined.
EQ_FIT_GAIN_DB = 14.0
EQ_GAIN_PRIOR_PER_DB = 0.9
EQ_PRIOR_WEIGHT = 1.0

_EQ_GAIN_AT = np.array([PREDICTED_SLOTS[i].name.endswith("gain_db") for i in _EQ_SLOTS])
_GAIN_SPAN_DB = EQ_GAIN_DB[1] - EQ_GAIN_DB[0]
_EQ_LOW = np.where(_EQ_GAIN_AT, 0.5 - EQ_FIT_GAIN_DB / _GAIN_SPAN_DB, 0.0)
_EQ_HIGH = np.where(_EQ_GAIN_AT, 0.5 + EQ_FIT_GAIN_DB / _GAIN_SPAN_DB, 1.0)


def band_response_db(bands: list[fxchain.EqBand]) -> np.ndarray:
    """The EQ's gain per spectrum band (power-averaged over the band), dB."""
    power = 10.0 ** (fxchain.eq_response_db(bands, _EQ_GRID_HZ) / 10.0)
    return 10.0 * np.log10(power.reshape(fxfeatures.SPECTRUM_BANDS, _SUBPOINTS).mean(axis=1))


def fit_eq(unit: np.ndarray, target_db: np.ndarray, max_evaluations: int = 60,
           start: list[fxchain.EqBand] | None = None) -> list[fxchain.EqBand]:
    """EQ bands whose per-band response best matches target_db up to a constant, each setting held
    toward the EQ slots of `unit` (gains brought within ±EQ_FIT_GAIN_DB); the search starts there,
    or at `start` (a previous fit: fewer steps)."""
    prior = np.clip(unit[_EQ_SLOTS], _EQ_LOW, _EQ_HIGH)
    first = prior if start is None else chain_to_unit(fxchain.StemChain(eq=start), 0.0)[_EQ_SLOTS]

    def bands_of(u):
        full = unit.copy()
        full[_EQ_SLOTS] = u
        return eq_from_unit(full)

    def residuals(u):
        error = band_response_db(bands_of(u)) - target_db
        return np.concatenate([error - error.mean(), EQ_GAIN_PRIOR_PER_DB * _GAIN_SPAN_DB * (u[_EQ_GAIN_AT] - prior[_EQ_GAIN_AT]),
                               EQ_PRIOR_WEIGHT * (u[~_EQ_GAIN_AT] - prior[~_EQ_GAIN_AT])])

    fit = least_squares(residuals, np.clip(first, _EQ_LOW, _EQ_HIGH), bounds=(_EQ_LOW, _EQ_HIGH),
                        max_nfev=max_evaluations, x_scale=0.1)
    return bands_of(fit.x)


# The compressor search. Its objective is fx/features.py's block_dynamics_db (block-level percentiles
# 10/50/90/99 re the level, median block crest, peak-to-level ratio), weighted absolute differences
# to the target: the quieter blocks are mostly the music's gaps and its density, which no compressor
# changes without pumping, so they count least. A compressor whose attack lets transients through
# while it turns the body down raises the crest and peak-to-level ratios: a setting that raises
# either by more than PEAK_RISE_TOLERANCE_DB is not taken, nor one that turns the stem's gated level
# down by more than MAX_GAIN_REDUCTION_DB (a squashed stem, and a make-up gain of tens of dB).
# Settings stay within the SEARCH ranges, the threshold relative to the stem's own level.
DYNAMICS_WEIGHTS = np.array([0.1, 0.25, 0.5, 1.0, 1.0, 1.0])
# How dynamic a stem is, for the on/off decision: the features in DYNAMICS_WEIGHTS' weighting,
# signed by how a compressor moves them (the lower percentiles up re the level, the rest down).
COMPRESSION_DIRECTIONS = np.array([-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]) * DYNAMICS_WEIGHTS
_NOT_RAISED = np.array([4, 5])                 # crest, peak-to-level
PEAK_RISE_TOLERANCE_DB = 0.5
MAX_GAIN_REDUCTION_DB = 12.0
COMPRESSOR_MIN_IMPROVEMENT = 0.1  # the compressor turns on only if it removes this share of the error
THRESHOLD_SEARCH_RE_LEVEL_DB = (-12.0, 12.0)
RATIO_SEARCH = (1.5, 20.0)
ATTACK_SEARCH_MS = (0.2, 50.0)
RELEASE_SEARCH_MS = (30.0, 500.0)
_GRID_THRESHOLDS_RE_LEVEL_DB = (-6.0, 2.0, 10.0)
_GRID_RATIOS = (2.0, 5.0, 20.0)
_GRID_ATTACK_MS, _GRID_RELEASE_MS = 0.5, 100.0
# Coordinate rounds after the grid: (threshold ± dB, ratio ×/÷, attack ×/÷, release ×/÷); a step of
# None leaves that setting alone in the round.
_COORDINATE_ROUNDS = ((3.0, 1.5, 3.0, 2.5), (1.5, 1.22, None, None))


def dynamics_error(planar: np.ndarray, target: np.ndarray) -> float:
    """How far a channel-first excerpt's block dynamics are from `target` (DYNAMICS_WEIGHTS, dB)."""
    return float(np.sum(DYNAMICS_WEIGHTS * np.abs(fxfeatures.block_dynamics_db(planar.T)[1] - target)))


def dynamics_spread(reference: np.ndarray) -> np.ndarray:
    """The block dynamics of the reference stem's first half less those of its second: what the
    same effects give on other passages of the music, so a compressor whose result is this close to
    the reference's dynamics is as right as the features can tell."""
    half = len(reference) // 2
    first, second = (fxfeatures.block_dynamics_db(part)[1] for part in (reference[:half], reference[half:]))
    return first - second


def search_compressor(dry: np.ndarray, target: np.ndarray, predicted: fxchain.CompressorSettings,
                      spread: np.ndarray | None = None) -> fxchain.CompressorSettings:
    """The compressor that moves the block dynamics of `dry` (the EQ'd excerpt, channel-first (2, n)
    float64) closest to `target`, or none. It is off when the target is more dynamic than `dry`
    (COMPRESSION_DIRECTIONS: there is no expander in the chain) by more than the reference's own
    `spread` (dynamics_spread; none given: zero) in that direction. Otherwise the predicted one (or
    its "off") is kept where `dry` through it is within the spread of the target (dynamics_error's
    weighting) and no farther than `dry` itself: the features cannot tell it from the right one,
    and a search would fit the excerpt's content. Otherwise it is off when the target is not less
    dynamic than `dry`, and when the best one found removes less than COMPRESSOR_MIN_IMPROVEMENT of
    the error.
    The search is a fixed budget of compressor passes over the excerpt (a 3×3 grid of thresholds
    re the level and ratios, the predicted compressor brought into the ranges, then
    _COORDINATE_ROUNDS), so the same input gives the same settings on any machine at any load."""
    level, current = fxfeatures.block_dynamics_db(dry.T)
    spread = np.zeros_like(target) if spread is None else spread
    if COMPRESSION_DIRECTIONS @ (target - current) > abs(COMPRESSION_DIRECTIONS @ spread):
        return fxchain.CompressorSettings()
    through_predicted = fxchain.CompressorStage(predicted, fxchain.dsp.WORKING_RATE)(dry) if predicted.active else dry
    noise = float(np.sum(DYNAMICS_WEIGHTS * np.abs(spread)))
    if dynamics_error(through_predicted, target) <= min(noise, dynamics_error(dry, target)):
        return predicted
    if COMPRESSION_DIRECTIONS @ target >= COMPRESSION_DIRECTIONS @ current:
        return fxchain.CompressorSettings()

    def bounded(threshold_db, ratio, attack_ms, release_ms):
        low, high = THRESHOLD_SEARCH_RE_LEVEL_DB
        return fxchain.CompressorSettings(float(np.clip(threshold_db, level + low, min(level + high, -0.5))),
                                          float(np.clip(ratio, *RATIO_SEARCH)), float(np.clip(attack_ms, *ATTACK_SEARCH_MS)),
                                          float(np.clip(release_ms, *RELEASE_SEARCH_MS)))

    def error_of(setting):
        compressed_level, features = fxfeatures.block_dynamics_db(
            fxchain.CompressorStage(setting, fxchain.dsp.WORKING_RATE)(dry).T)
        if np.any(features[_NOT_RAISED] > current[_NOT_RAISED] + PEAK_RISE_TOLERANCE_DB) \
                or compressed_level < level - MAX_GAIN_REDUCTION_DB:
            return np.inf
        return float(np.sum(DYNAMICS_WEIGHTS * np.abs(features - target)))

    candidates = [bounded(level + t, r, _GRID_ATTACK_MS, _GRID_RELEASE_MS)
                  for t in _GRID_THRESHOLDS_RE_LEVEL_DB for r in _GRID_RATIOS]
    if predicted.active:
        candidates.append(bounded(predicted.threshold_db, predicted.ratio, predicted.attack_ms, predicted.release_ms))
    errors = [error_of(c) for c in candidates]
    best, best_error = candidates[int(np.argmin(errors))], min(errors)
    for threshold_step, *factors in _COORDINATE_ROUNDS:
        moves = [(threshold_step, 1.0, 1.0, 1.0), (-threshold_step, 1.0, 1.0, 1.0)]
        for k, factor in enumerate(factors):
            if factor is not None:
                up = [1.0, 1.0, 1.0]
                up[k] = factor
                moves += [(0.0, *up), (0.0, *(1.0 / f for f in up))]
        for dt, fr, fa, fl in moves:
            trial = bounded(best.threshold_db + dt, best.ratio * fr, best.attack_ms * fa, best.release_ms * fl)
            trial_error = error_of(trial)
            if trial_error < best_error:
                best, best_error = trial, trial_error
    if best_error < (1.0 - COMPRESSOR_MIN_IMPROVEMENT) * dynamics_error(dry, target):
        return best
    return fxchain.CompressorSettings()


# Rounds of "render, measure what the rest of the chain did to the spectrum, refit the EQ to the
# remainder". The compressor's coloration depends on the EQ in front of it, so the first round's
# estimate is refined once more (a third round changed little on the procedural validation songs).
COLORATION_ROUNDS = 2


def coloration_db(chain: fxchain.StemChain, part: np.ndarray, part_features: fxfeatures.StemFeatures) -> np.ndarray:
    """How much the chain's stages other than the EQ move the spectral shape of `part` (per spectrum
    band, dB): the whole chain's change, less the EQ's analytic response. A heavy compressor adds
    harmonics and a reverb has its own tone, so the EQ alone must not be fitted to the whole change."""
    rendered = fxfeatures.measure(fxchain.render(part, replace(chain, gain_db=0.0)))
    return rendered.shape_db - part_features.shape_db - band_response_db(chain.eq)


def fit_eq_with_coloration(unit: np.ndarray, chain: fxchain.StemChain, shape_change_db: np.ndarray,
                           part: np.ndarray, part_features: fxfeatures.StemFeatures) -> list[fxchain.EqBand]:
    """The EQ (fit_eq from `unit`) that, in front of the chain's other stages, moves the spectral shape
    by shape_change_db, their coloration measured on the excerpt `part` (COLORATION_ROUNDS rounds).
    The predictor saw the whole shape change, coloration included: where its EQ fits what is left
    worse than no EQ (a compressor's harmonics taken for a boost), the gains are held toward 0 dB.
    A chain with no stage but its EQ colors nothing: its EQ is returned as it is."""
    eq = chain.eq
    if not replace(chain, eq=fxchain.default_eq(), gain_db=0.0).stages():
        return eq
    flat_gains = unit.copy()
    flat_gains[np.asarray(_EQ_SLOTS)[_EQ_GAIN_AT]] = 0.5
    for _ in range(COLORATION_ROUNDS):
        remainder = shape_change_db - coloration_db(replace(chain, eq=eq), part, part_features)
        predicted_misfit = band_response_db(eq_from_unit(unit)) - remainder
        trusted = np.std(predicted_misfit) <= np.std(remainder)
        eq = fit_eq(unit if trusted else flat_gains, remainder, start=eq)
    return eq


# Width and pan. Width is the side gain (mid kept), so the side/mid energy ratio moves by width²; pan
# is the balance, moving the right/left ratio. Both are solved on 2×2 channel covariances of the
# excerpt — dry (through EQ and compressor) and the reverb's wet signal — with no audio pass per
# step: STEREO_STEPS rounds of "scale the side gain by the side/mid error, the right/left gain ratio
# by the right/left error" (each exact for its own ratio, the two nearly independent). The JUCE
# reverb reads only L+R, which the width keeps, so the wet signal is rendered again only once the
# pan is known. An input with no side signal (below MONO_BELOW_DB) cannot be widened.
WIDTH_RANGE = (1e-3, 2.5)  # 1e-3 (−60 dB of side) is mono; the steps scale the width, so it stays above 0
PAN_LIMIT = 0.8
MONO_BELOW_DB = -35.0
STEREO_FLOOR_DB = -60.0
STEREO_STEPS = 8
_PAN_RERENDER_ABOVE = 0.05


def stereo_ratios_db(covariance: np.ndarray) -> np.ndarray:
    """(side/mid, right/left) energy ratios in dB of a signal with this 2×2 channel covariance, each
    at least STEREO_FLOOR_DB."""
    ll, rr, lr = covariance[0, 0], covariance[1, 1], covariance[0, 1]
    floor = 10.0 ** (STEREO_FLOOR_DB / 10.0) * max(ll + rr, 1e-30)
    side, mid = max(ll + rr - 2.0 * lr, floor), max(ll + rr + 2.0 * lr, floor)
    return 10.0 * np.log10(np.array([side / mid, max(rr, floor) / max(ll, floor)]))


def _pan_of_gain_ratio(right_over_left: float) -> float:
    """The balance pan whose right/left gain ratio this is (fx/chain.py's balance_gains inverted)."""
    pan = 1.0 - 1.0 / right_over_left if right_over_left >= 1.0 else right_over_left - 1.0
    return float(np.clip(pan, -PAN_LIMIT, PAN_LIMIT))


def fit_width_and_pan(dry: np.ndarray, reverb: fxchain.ReverbSend, target_db: np.ndarray,
                      widen: bool) -> tuple[float, float]:
    """(width, pan) that give the excerpt `dry` (channel-first) followed by the reverb send the
    stereo ratios target_db (stereo_ratios_db's); width stays 1 unless `widen`."""
    def wet_of(pan):
        if not reverb.active:
            return np.zeros_like(dry)
        panned = fxchain.StereoStage(1.0, pan)(dry)
        return fxchain.ReverbSendStage(reverb, fxchain.dsp.WORKING_RATE)(panned) - panned

    def solve(wet, width, pan):
        c_dd, c_dw, c_ww = dry @ dry.T, dry @ wet.T, wet @ wet.T
        for _ in range(STEREO_STEPS):
            a = fxchain.StereoStage(width, pan).matrix
            error = target_db - stereo_ratios_db(a @ c_dd @ a.T + a @ c_dw + c_dw.T @ a.T + c_ww)
            if widen:
                width = float(np.clip(width * 10.0 ** (error[0] / 20.0), *WIDTH_RANGE))
            left, right = fxchain.balance_gains(pan)
            pan = _pan_of_gain_ratio(right / left * 10.0 ** (error[1] / 20.0))
        return width, pan

    width, pan = solve(wet_of(0.0), 1.0, 0.0)
    if reverb.active and abs(pan) > _PAN_RERENDER_ABOVE:
        width, pan = solve(wet_of(pan), width, pan)
    return width, pan


def _covariance(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.T @ x


class Estimate(NamedTuple):
    chain: fxchain.StemChain
    predicted: fxchain.StemChain


def estimate_chain(predictor: ParamPredictor, x: np.ndarray, reference: np.ndarray,
                   x_features: fxfeatures.StemFeatures | None = None,
                   reference_features: fxfeatures.StemFeatures | None = None,
                   aspects: frozenset[str] = REFINED_ASPECTS) -> Estimate:
    """The chain for input stem x toward the reference stem (gain_db still 0: the engine sets it
    after rendering), the stages of `aspects` ("eq", "dynamics", "width", "space") estimated, the
    others left at identity; and the predicted chain (module docstring, step 2)."""
    fx = x_features or fxfeatures.measure(x)
    fr = reference_features or fxfeatures.measure(reference)
    unit = predictor.predict(fxfeatures.pair_vector(fx, fr))[0]
    predicted = chain_from_unit(unit, fx.level_db)
    part = np.asarray(fxfeatures.excerpt(x), dtype=np.float64)
    reference_part = fxfeatures.excerpt(reference)
    planar = np.ascontiguousarray(part.T)
    chain = fxchain.StemChain()
    shape_change = fr.shape_db - fx.shape_db
    if "eq" in aspects:
        chain.eq = fit_eq(unit, shape_change)
    if "dynamics" in aspects:
        chain.compressor = search_compressor(fxchain.run_stages(chain.stages(), planar),
                                             fxfeatures.block_dynamics_db(reference_part)[1], predicted.compressor,
                                             dynamics_spread(reference))
    if "space" in aspects:
        # The predicted send as it is: its side energy and tails are also the music's, so the
        # reference's features cannot check it (held off below −25 dB and at most −6 dB, it scored
        # 0.05 worse multitrack ratio on the paper's Table 2 and within 0.002 on raw).
        chain.reverb = predicted.reverb
    if "eq" in aspects:
        chain.eq = fit_eq_with_coloration(unit, chain, shape_change, part, fxfeatures.measure(part))
    if "width" in aspects:
        dry = fxchain.run_stages(replace(chain, reverb=fxchain.ReverbSend()).stages(), planar)
        part_ratios = stereo_ratios_db(_covariance(part))
        target = stereo_ratios_db(_covariance(reference)) + part_ratios - stereo_ratios_db(_covariance(x))
        chain.width, chain.pan = fit_width_and_pan(dry, chain.reverb, target, widen=part_ratios[0] > MONO_BELOW_DB)
    return Estimate(chain, predicted)
