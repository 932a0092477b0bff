"""How well the param engine recovers the FX chain of an FXmanipulator draw: its estimates on the
Table-2 protocol's material (evaluation/table2.py) against the draw's own chain, per parameter group."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mixdaemon.audio.stems import STEM_NAMES
from mixdaemon.evaluation.table2 import build_songs
from mixdaemon.mixing.effects import chain_from_draw, eq_response_db
from mixdaemon.mixing.normalization import load_statistics


def recovery_errors(estimated, true) -> dict[str, float]:
    """How far an estimated chain (fx.chain.StemChain) is from the chain of the draw, per parameter
    group: EQ band gains (raw, and offset-free: a common offset is the output gain's job), the EQ
    curve (RMS dB over 40 Hz–16 kHz, offset-free), width (side gain, compared up to 2), pan, and the
    compressor and reverb send as detected on/off."""
    grid = np.geomspace(40.0, 16000.0, 200)
    gains = np.array([b.gain_db for b in estimated.eq]) - np.array([b.gain_db for b in true.eq])
    curve = eq_response_db(estimated.eq, grid) - eq_response_db(true.eq, grid)
    return {"eq_gain_abs_db": float(np.mean(np.abs(gains))),
            "eq_gain_offset_free_abs_db": float(np.mean(np.abs(gains - gains.mean()))),
            "eq_curve_rms_db": float(np.sqrt(np.mean((curve - curve.mean()) ** 2))),
            "width_abs": float(abs(min(estimated.width, 2.0) - min(true.width, 2.0))),
            "pan_abs": float(abs(estimated.pan - true.pan)),
            "compressor_detected": float(estimated.compressor.active == true.compressor.active),
            "reverb_detected": float(estimated.reverb.active == true.reverb.active)}


RECOVERY_GROUPS = {"eq": ("eq_gain_abs_db", "eq_gain_offset_free_abs_db", "eq_curve_rms_db"), "imager": ("width_abs",),
                   "pan": ("pan_abs",), "comp": ("compressor_detected",), "reverb": ("reverb_detected",)}


RECOVERY_REFERENCES = ("other_half", "same_content")


def parameter_recovery(songs_dir: str | Path, predictor, seeds=(0,), stats_path: str | Path | None = None,
                       reference: str = "other_half", single_fx: str | None = None) -> dict:
    """The param engine's estimates on this protocol's material (x = normalized first half; the
    reference = the draw applied to the normalized second half ("other_half", a reference song's
    situation: other music), or to x itself ("same_content": the draw alone separates x from the
    reference)) against the draw's own chain (fx.chain.chain_from_draw on x), for the refined
    estimate and for the prediction alone. Each error is averaged over the stems where its FX fired
    (compressor and reverb detection over all). single_fx: draws of that effect alone, which
    separates how well it is recovered from how much the other effects confound it.
    Returns {"refined": {error: mean}, "predicted": {...}, "cases": {error: count}}."""
    if reference not in RECOVERY_REFERENCES:
        raise ValueError(f"reference {reference!r}: one of {RECOVERY_REFERENCES}")
    from mixdaemon.mixing.param_estimation import estimate_chain
    stats = load_statistics(stats_path)
    collected: dict[str, dict[str, list[float]]] = {"refined": {}, "predicted": {}}
    for seed in seeds:
        for song in build_songs(songs_dir, stats, seed, single_fx=single_fx):
            for name in STEM_NAMES:
                drawn = song.draws[name]
                true = chain_from_draw(drawn, song.x[name])
                target = song.ref[name] if reference == "other_half" else song.gt[name]
                estimate = estimate_chain(predictor, song.x[name], target)
                for kind, chain in (("refined", estimate.chain), ("predicted", estimate.predicted)):
                    errors = recovery_errors(chain, true)
                    for fx, keys in RECOVERY_GROUPS.items():
                        if fx in ("comp", "reverb") or drawn["fired"].get(fx):
                            for key in keys:
                                collected[kind].setdefault(key, []).append(errors[key])
    return {kind: {k: round(float(np.mean(v)), 3) for k, v in values.items()} for kind, values in collected.items()} | {
        "cases": {k: len(v) for k, v in collected["refined"].items()}, "seeds": list(seeds), "reference": reference,
        "single_fx": single_fx}
