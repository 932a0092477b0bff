"""The param engine's speed and parameter recovery.

speed     the whole engine (feature measurement, prediction, refinement, rendering, output gain) on a
          3-minute 4-stem song: the real stems of SONG (15 s) repeated to --minutes, converted toward
          REFERENCE repeated likewise; wall and CPU seconds, median of --repeats, as × real time.
recovery  evaluation.parameter_recovery on the real stems (never trained on), over --seeds draws:
          errors of the refined estimate and of the prediction alone; --reference other_half (the
          draw applied to the song's other half: other music, as with a real reference) or
          same_content (the draw applied to the input itself); --single-fx eq: EQ draws alone.
ceiling   what limits EQ recovery, on the same material: (1) what moves a stem's spectral shape
          besides an EQ: content (the two halves of a stem, level-only draws: what a reference of
          other music adds to the EQ's change), and a compressor or a reverb alone (single-FX draws
          on the same content); (2) modelling: EQ recovery of full-chain draws on the
          same content when the chain's compressor, reverb, width and pan are the draw's own settings
          (only the EQ estimated, through param_estimation.fit_eq_with_coloration), and when the
          coloration subtracted is the FXmanipulator's own (its draw with the EQ switched off).

    .venv/bin/python benchmarks/bench_param_engine.py --json param_bench.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from mixdaemon.audio.stems import STEM_NAMES, load_song
from mixdaemon.defaults import DEFAULT_PREDICTOR
from mixdaemon.evaluation.recovery import parameter_recovery, recovery_errors
from mixdaemon.evaluation.table2 import build_songs
from mixdaemon.fx import features as fxfeatures
from mixdaemon.fx.chain import chain_from_draw
from mixdaemon.fx.manipulator import FXManipulator
from mixdaemon.fx.stats import FxStats, default_stats_path
from mixdaemon.mixing.param import ParamEngine
from mixdaemon.mixing.param_estimation import (
    ParamPredictor,
    fit_eq,
    fit_eq_with_coloration,
)

REAL_STEMS = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_stems"


def song_stems(folder: Path, seconds: float) -> dict[str, np.ndarray]:
    stems = load_song([folder / f"{name}.wav" for name in STEM_NAMES]).stems
    return {name: np.resize(x, (int(seconds * 44100), 2)) for name, x in stems.items()}


def speed(predictor: ParamPredictor, minutes: float, repeats: int, workers: int) -> dict:
    seconds = 60.0 * minutes
    x, reference = song_stems(REAL_STEMS / "song_a", seconds), song_stems(REAL_STEMS / "song_b", seconds)
    engine = ParamEngine(predictor, workers=workers)
    engine.convert({k: v[:44100 * 5] for k, v in x.items()},
                   {k: v[:44100 * 5] for k, v in reference.items()})  # warm-up (numba, FFT plans)
    walls, cpus = [], []
    for _ in range(repeats):
        load = os.getloadavg()[0]
        wall, cpu = time.perf_counter(), time.process_time()
        engine.convert(x, reference)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    return {"song_seconds": seconds, "stems": len(STEM_NAMES), "workers": workers, "repeats": repeats,
            "wall_seconds": round(wall, 3), "cpu_seconds": round(cpu, 3), "x_real_time_wall": round(seconds / wall, 1),
            "x_real_time_if_2_free_cores": round(seconds / (cpu / 2), 1), "load_average_1min_at_last_start": load,
            "cores": os.cpu_count()}


def _offset_free_rms(db: np.ndarray) -> float:
    return float(np.sqrt(np.mean((db - db.mean()) ** 2)))


def ceiling(predictor: ParamPredictor, seeds: int) -> dict:
    stats = FxStats.load(default_stats_path("mst"))
    shape_moves = {}   # what moves a stem's spectral shape besides the EQ, offset-free RMS dB
    for single_fx, against in (("gain", "ref"), ("comp", "gt"), ("reverb", "gt")):
        moves = shape_moves[{"gain": "content", "comp": "compressor", "reverb": "reverb"}[single_fx]] = {}
        for seed in range(seeds):
            for song in build_songs(REAL_STEMS, stats, seed, single_fx=single_fx):
                for name in STEM_NAMES:
                    moves.setdefault(name, []).append(_offset_free_rms(
                        fxfeatures.measure(getattr(song, against)[name]).shape_db
                        - fxfeatures.measure(song.x[name]).shape_db))
    errors = {"true_settings_our_chain": [], "fxmanipulator_coloration": []}
    for seed in range(seeds):
        for song in build_songs(REAL_STEMS, stats, seed):
            for name in STEM_NAMES:
                drawn, x = song.draws[name], song.x[name]
                if not drawn["fired"].get("eq"):
                    continue
                true = chain_from_draw(drawn, x)
                fx, fr = fxfeatures.measure(x), fxfeatures.measure(song.gt[name])
                unit = predictor.predict(fxfeatures.pair_vector(fx, fr))[0]
                part = np.asarray(fxfeatures.excerpt(x), dtype=np.float64)
                # as the engine does: the refit starts from the plain fit, the rest of the chain is the draw's
                start = replace(true, eq=fit_eq(unit, fr.shape_db - fx.shape_db))
                eq = fit_eq_with_coloration(unit, start, fr.shape_db - fx.shape_db, part, fxfeatures.measure(part))
                errors["true_settings_our_chain"].append(recovery_errors(replace(true, eq=eq), true))
                without_eq = {**drawn, "fired": {**drawn["fired"], "eq": False}}
                colored = FXManipulator(name).apply_params([x], without_eq)[0]
                eq = fit_eq(unit, fr.shape_db - fxfeatures.measure(colored).shape_db)
                errors["fxmanipulator_coloration"].append(recovery_errors(replace(true, eq=eq), true))
    keys = ("eq_gain_offset_free_abs_db", "eq_curve_rms_db")
    return {"shape_move_rms_db": {source: {name: round(float(np.mean(v)), 2) for name, v in moves.items()}
                                  | {"all": round(float(np.mean(sum(moves.values(), []))), 2)}
                                  for source, moves in shape_moves.items()},
            **{variant: {k: round(float(np.mean([e[k] for e in rows])), 3) for k in keys} | {"cases": len(rows)}
               for variant, rows in errors.items()}, "seeds": list(range(seeds))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sections", nargs="+", default=["speed", "recovery"], choices=["speed", "recovery", "ceiling"])
    p.add_argument("--predictor", default=DEFAULT_PREDICTOR)
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seeds", type=int, default=5, help="recovery: draws per stem (seeds 0..N-1)")
    p.add_argument("--reference", default="other_half", choices=["other_half", "same_content"],
                   help="recovery: what the draw is applied to for the reference")
    p.add_argument("--single-fx", choices=["eq", "comp", "pan", "imager", "reverb", "gain"],
                   help="recovery: draws of this effect alone (default: the FXmanipulator's full chain)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    predictor = ParamPredictor.load(args.predictor)
    results = {"predictor": str(predictor.path), "predictor_sha256": predictor.sha256}
    if "speed" in args.sections:
        results["speed"] = speed(predictor, args.minutes, args.repeats, args.workers)
        print(json.dumps(results["speed"], indent=1))
    if "recovery" in args.sections:
        results["recovery"] = parameter_recovery(REAL_STEMS, predictor, seeds=tuple(range(args.seeds)),
                                                 reference=args.reference, single_fx=args.single_fx)
        print(json.dumps(results["recovery"], indent=1))
    if "ceiling" in args.sections:
        results["ceiling"] = ceiling(predictor, args.seeds)
        print(json.dumps(results["ceiling"], indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
