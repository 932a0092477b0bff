"""Estimating one stem's FX chain (fx/chain.py's StemChain) from the input stem and the reference stem:
a learned first guess, then a short refinement against the reference's features.

1. Prediction. `ParamPredictor` (a small MLP run in numpy; trained by train/params.py on
   FXmanipulator draws, whose parameters are known) maps fx/features.py's pair_vector(input,
   reference) to the chain's settings, encoded as PREDICTED_SLOTS (each scaled to [0, 1]). The
   compressor threshold is predicted relative to the input's level, so inputs at any level work.
2. Refinement, bounded in cost — a fixed number of evaluations on a fixed-length excerpt, not a
   clock, so results do not depend on machine load (ALGORITHMS.md has no counterpart; our design [U→R]):
   - EQ: least squares of the EQ's analytic response (fx/chain.py's eq_response_db, averaged per band)
     against the spectral-shape difference reference − input, offset-free (level is the gain's
     job), with a weak pull toward the prediction (frequencies and Qs of near-flat bands are
     otherwise undetermined);
   - compressor: a coordinate search over threshold and ratio around a predicted compressor,
     rendering a few seconds of the EQ'd input (fx/features.py's excerpt) and comparing the dynamics
     features' change with the reference's;
   - width, pan and reverb send: kept as predicted. (A least-squares fit of width and pan to the
     reference's side/mid and right/left ratios made the recovery of drawn settings worse: the
     reference's side energy also holds its reverb, and its content differs from the input's.)
   - EQ again, against what the rest of the chain does to the spectrum: render the excerpt through
     the whole chain, take away the EQ's own response, and refit the EQ to the shape change less
     that coloration (fit_eq_with_coloration). A heavy compressor adds harmonics and a reverb has
     its own tone; fitted to the whole change, the EQ took the blame for both.
   - gain: set by the engine after rendering, so the stem's gated level equals the reference's.
   Each stage starts at the prediction (the refit at the previous fit, still held toward the
   prediction) and only moves where its objective improves.
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
        from mixdaemon.nets.store import save_param_predictor
        tensors = {"feature_mean": self.mean, "feature_std": self.std}
        for k, (weight, bias) in enumerate(self.layers):
            tensors[f"layer{k}.weight"], tensors[f"layer{k}.bias"] = weight, bias
        return save_param_predictor(path, tensors, {"feature_size": fxfeatures.PAIR_FEATURE_SIZE,
                                                    "slots": [s.name for s in PREDICTED_SLOTS],
                                                    "provenance": self.metadata.get("provenance", {})})

    @classmethod
    def load(cls, name_or_path: str | Path) -> "ParamPredictor":
        """A predictor file, or a name in the model store (nets/store.py's store_dir(), `NAME.safetensors`)."""
        from mixdaemon.nets.store import load_param_predictor
        tensors, metadata, path, sha256 = load_param_predictor(name_or_path)
        if metadata.get("slots") != [s.name for s in PREDICTED_SLOTS] \
                or metadata.get("feature_size") != fxfeatures.PAIR_FEATURE_SIZE:
            raise ModelFileError(f"{path}: made for other features or parameters than this mixdaemon's; retrain it")
        return cls(tensors, metadata, path, sha256)


# --- refinement -----------------------------------------------------------------------------------------

_SUBPOINTS = 4  # frequencies per spectrum band at which the EQ response is averaged
_EQ_GRID_HZ = np.geomspace(fxfeatures.BAND_EDGES_HZ[0], fxfeatures.BAND_EDGES_HZ[-1],
                          fxfeatures.SPECTRUM_BANDS * _SUBPOINTS + 1)
_EQ_GRID_HZ = np.sqrt(_EQ_GRID_HZ[:-1] * _EQ_GRID_HZ[1:])
# Residuals are in dB per spectrum band; a weight w makes a move of 0.1 (3 dB of gain, or a tenth of
# a band's frequency range in log scale) cost like a 0.1·w dB misfit in one band. The reference's
# spectrum differs from the input's in content as well as in EQ, so the fit may only leave the
# prediction where many bands agree.
EQ_PRIOR_WEIGHT = 20.0


def band_response_db(bands: list[fxchain.EqBand]) -> np.ndarray:
    """The EQ's gain per spectrum band (power-averaged over the band), dB."""
    power = 10.0 ** (fxchain.eq_response_db(bands, _EQ_GRID_HZ) / 10.0)
    return 10.0 * np.log10(power.reshape(fxfeatures.SPECTRUM_BANDS, _SUBPOINTS).mean(axis=1))


def fit_eq(unit: np.ndarray, target_db: np.ndarray, max_evaluations: int = 60,
           start: list[fxchain.EqBand] | None = None) -> list[fxchain.EqBand]:
    """EQ bands whose per-band response best matches target_db up to a constant, weakly held at the
    EQ slots of `unit`; the search starts there, or at `start` (a previous fit: fewer steps)."""
    prior = unit[_EQ_SLOTS]
    first = prior if start is None else chain_to_unit(fxchain.StemChain(eq=start), 0.0)[_EQ_SLOTS]

    def bands_of(u):
        full = unit.copy()
        full[_EQ_SLOTS] = u
        return eq_from_unit(full)

    def residuals(u):
        error = band_response_db(bands_of(u)) - target_db
        return np.concatenate([error - error.mean(), EQ_PRIOR_WEIGHT * (u - prior)])

    fit = least_squares(residuals, first, bounds=(0.0, 1.0), max_nfev=max_evaluations, x_scale=0.1)
    return bands_of(fit.x)


def _dynamics_error(y: np.ndarray, target: np.ndarray) -> float:
    return float(np.sum((fxfeatures.measure(y).dynamics_db - target) ** 2))


def search_compressor(start: fxchain.CompressorSettings, planar_excerpt_eq: np.ndarray,
                      target: np.ndarray) -> fxchain.CompressorSettings:
    """Coordinate search over threshold, then ratio, around a predicted active compressor for the
    dynamics features `target` of the compressed excerpt. Its cost is bounded by construction (nine
    compressor passes over an excerpt of fixed length, whatever the song's length) rather than by a
    clock, so the same input gives the same settings on any machine at any load. Whether to
    compress at all stays the predictor's call: on validation draws it detects a fired compressor
    far more reliably than the dynamics features of a few seconds do. The excerpt comes channel-first
    ((2, n) float64, as the chain's stages take it)."""
    def error_of(setting):
        stage = fxchain.CompressorStage(setting, fxchain.dsp.WORKING_RATE)
        return _dynamics_error(stage(planar_excerpt_eq).T, target)

    if not start.active:
        return start
    best, best_error = start, error_of(start)
    candidates = [("threshold_db", best.threshold_db + d) for d in (-12.0, -6.0, -3.0, 3.0, 6.0, 12.0)]
    candidates += [("ratio", best.ratio * f) for f in (0.5, 2.0)]
    for key, value in candidates:
        if key == "threshold_db":
            value = float(np.clip(value, -90.0, -0.5))
        else:
            value = float(np.clip(value, 1.5, 40.0))
        trial = replace(best, **{key: value})
        trial_error = error_of(trial)
        if trial_error < best_error:
            best, best_error = trial, trial_error
    return best


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
    A chain with no stage but its EQ colors nothing: its EQ is returned as it is."""
    eq = chain.eq
    if not replace(chain, eq=fxchain.default_eq(), gain_db=0.0).stages():
        return eq
    for _ in range(COLORATION_ROUNDS):
        eq = fit_eq(unit, shape_change_db - coloration_db(replace(chain, eq=eq), part, part_features), start=eq)
    return eq


class Estimate(NamedTuple):
    chain: fxchain.StemChain
    predicted: fxchain.StemChain


def estimate_chain(predictor: ParamPredictor, x: np.ndarray, reference: np.ndarray,
                   refine: bool = True, x_features: fxfeatures.StemFeatures | None = None,
                   reference_features: fxfeatures.StemFeatures | None = None) -> Estimate:
    """The chain for input stem x toward the reference stem (gain_db still 0: the engine sets it
    after rendering); refine=False keeps the predicted compressor and skips the coloration refit
    (one EQ fit, a few ms, instead of three fits and the excerpt's renders)."""
    fx = x_features or fxfeatures.measure(x)
    fr = reference_features or fxfeatures.measure(reference)
    unit = predictor.predict(fxfeatures.pair_vector(fx, fr))[0]
    predicted = chain_from_unit(unit, fx.level_db)
    shape_change = fr.shape_db - fx.shape_db
    chain = replace(predicted, eq=fit_eq(unit, shape_change))
    if refine:
        part = np.asarray(fxfeatures.excerpt(x), dtype=np.float64)
        part_features = fxfeatures.measure(part)
        part_eq = fxchain.run_stages(fxchain.StemChain(eq=chain.eq).stages(), np.ascontiguousarray(part.T))
        target = part_features.dynamics_db + (fr.dynamics_db - fx.dynamics_db)
        chain.compressor = search_compressor(chain.compressor, part_eq, target)
        chain.eq = fit_eq_with_coloration(unit, chain, shape_change, part, part_features)
    return Estimate(chain, predicted)
