"""The param engine: per stem, estimate an interpretable FX chain (fx/chain.py: EQ, compressor, width,
pan, reverb send, gain) that moves the input stem toward the reference stem, and render it.

Unlike the neural engine it works on the input stems as given (no FX normalization first), so the
same settings, applied to the original tracks in a DAW (fx_params.json and
integrations/reaper/mixdaemon_apply_fx_params.lua), reproduce the conversion up to the DAW's own
EQ/compressor curves and the job's final limiter. Estimation is mixing/param_estimation.py's
estimate_chain (prediction + bounded refinement); the output gain is set last so that each rendered stem has the
reference stem's gated level, which keeps the balance between stems.

Stems run in a thread pool (`workers`): the heavy parts (FFTs, scipy's biquads, pedalboard) release
the GIL.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mixdaemon.defaults import DEFAULT_PREDICTOR
from mixdaemon.fx import chain as fxchain
from mixdaemon.fx import features as fxfeatures
from mixdaemon.mixing.engine import FX_PARAMS, Conversion
from mixdaemon.mixing.param_estimation import ParamPredictor, estimate_chain
from mixdaemon.progress import Progress, no_progress

SILENT_PEAK = 1e-3  # −60 dBFS: the neural engine's rule for a reference stem with no style to copy
MAX_GAIN_DB = 36.0


class ParamEngine:
    name = "param"
    capabilities = frozenset({FX_PARAMS})

    def __init__(self, predictor: ParamPredictor, *, workers: int = 2):
        self.predictor = predictor
        self.workers = workers
        self.info = {"name": "param", "kind": "interpretable FX chain per stem (EQ, compressor, width, pan, "
                                              "reverb send, gain), predicted then refined",
                     "predictor": str(predictor.path) if predictor.path else None,
                     "predictor_sha256": predictor.sha256}

    @classmethod
    def from_settings(cls, settings) -> "ParamEngine":
        """settings.model names the predictor (a file, or a name in the model store); default
        params-default."""
        return cls(ParamPredictor.load(settings.model or DEFAULT_PREDICTOR))

    def convert_stem(self, x: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, fxchain.StemChain]:
        """(converted stem, its chain); a silent input or reference stem keeps its sound (identity chain)."""
        if np.max(np.abs(reference)) < SILENT_PEAK or not np.any(x):
            return np.asarray(x, dtype=np.float32), fxchain.StemChain()
        reference_features = fxfeatures.measure(reference)
        chain = estimate_chain(self.predictor, x, reference,
                               reference_features=reference_features).chain
        unscaled = fxchain.render(x, chain)
        chain.gain_db = fxfeatures.gain_to_level(unscaled, reference_features.level_db, MAX_GAIN_DB)
        return (unscaled * np.float32(fxchain.dsp.db_to_amp(chain.gain_db))), chain

    def convert(self, input_stems: dict[str, np.ndarray], reference_stems: dict[str, np.ndarray],
                progress: Progress = no_progress, reference_b_stems=None) -> Conversion:
        """The converted stems and the chain per stem (fx.chain.StemChain); a stem without a
        reference stem keeps its sound."""
        names = list(input_stems)
        done = []

        def one(name):
            reference = reference_stems.get(name)
            if reference is None:
                result = (np.asarray(input_stems[name], dtype=np.float32), fxchain.StemChain())
            else:
                result = self.convert_stem(input_stems[name], reference)
            done.append(name)
            progress(f"estimating and rendering {name}", 0.05 + 0.9 * len(done) / len(names))
            return result

        progress("estimating FX chains", 0.05)
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            results = dict(zip(names, pool.map(one, names)))
        return Conversion({n: results[n][0] for n in names}, {n: results[n][1] for n in names})
