"""The param engine: per stem, estimate an interpretable FX chain (fx/chain.py: EQ, compressor, width,
pan, reverb send, gain) that moves the input stem toward the reference stem, and render it.

Unlike the neural engine it works on the input stems as given (no FX normalization first), so the
same settings, applied to the original tracks in a DAW (fx_params.json and
integrations/reaper/mixdaemon_apply_fx_params.lua), reproduce the conversion up to the DAW's own
EQ/compressor curves and the job's final limiter.

Per stem:
1. Estimation (mixing/param_estimation.py's estimate_chain): a predicted first guess, refined
   against the reference stem's own features on an excerpt, with a fixed amount of work; only the
   stages of the aspects the user's controls move (mixing/settings.py's Controls: "eq" → EQ,
   "dynamics" → compressor, "width" → width and pan, "space" → reverb send) are estimated, the
   others stay at identity.
2. Amount: the chain is scaled toward identity by the stem's amount a (Controls.amount_for): EQ
   gains × a, compressor ratio 1 + (r − 1)·a at the same threshold, width 1 + (w − 1)·a, pan × a,
   reverb send + 20·log10(a) dB (off at a = 0). a = 0 returns the input itself.
3. Output gain ("level"), last: the gain that brings the rendered stem's gated level to the
   reference stem's (fx/features.py's gain_to_level), which keeps the balance between stems — but
   never more than MAX_BOOST_OVER_SONG_DB above the input's own level plus the median over the
   song's stems of (reference level − input level), so that a stem far quieter than its part in the
   reference (a near-silent bleed track, say) is not raised by tens of dB on its own — then × a.
   Without "level" the gain stays 0 dB.
The conversion's chains (fx_params.json) are the chains applied, gains included.

The engine plans (mixing/engine.py's PLANS): steps 1–3 run on each stem's excerpt (the whole stem
for a short song) and the chains found render the whole song as streams.

Stems run in a thread pool (`workers`): the heavy parts (FFTs, scipy's biquads, the numba
compressor, pedalboard) release the GIL.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np

from mixdaemon.defaults import DEFAULT_PREDICTOR
from mixdaemon.fx import chain as fxchain
from mixdaemon.fx import features as fxfeatures
from mixdaemon.mixing.engine import FX_PARAMS, PLANS, Conversion, Measured, Plan
from mixdaemon.mixing.measure import measured_whole
from mixdaemon.mixing.param_estimation import REFINED_ASPECTS, ParamPredictor, estimate_chain
from mixdaemon.mixing.settings import Controls
from mixdaemon.progress import Progress, no_progress

SILENT_PEAK = 1e-3  # −60 dBFS: the neural engine's rule for a reference stem with no style to copy
MAX_GAIN_DB = 48.0
MAX_BOOST_OVER_SONG_DB = 12.0


def controlled_chain(chain: fxchain.StemChain, amount: float) -> fxchain.StemChain:
    """The chain scaled toward identity by `amount` (step 2 of the module docstring); gain_db kept."""
    if amount >= 1.0:
        return chain
    compressor = replace(chain.compressor, ratio=1.0 + (chain.compressor.ratio - 1.0) * amount) \
        if chain.compressor.active and amount > 0.0 else fxchain.CompressorSettings()
    reverb = replace(chain.reverb, send_db=chain.reverb.send_db + 20.0 * np.log10(amount)) \
        if chain.reverb.active and amount > 0.0 else fxchain.ReverbSend()
    return replace(chain, eq=[replace(band, gain_db=band.gain_db * amount) for band in chain.eq],
                   compressor=compressor, width=1.0 + (chain.width - 1.0) * amount, pan=chain.pan * amount,
                   reverb=reverb)


class ParamEngine:
    name = "param"
    capabilities = frozenset({FX_PARAMS, PLANS})

    def __init__(self, predictor: ParamPredictor, *, controls: Controls | None = None, workers: int = 2):
        self.predictor = predictor
        self.controls = controls or Controls()
        self.workers = workers
        self.info = {"name": "param", "kind": "interpretable FX chain per stem (EQ, compressor, width, pan, "
                                              "reverb send, gain), predicted then refined against the reference",
                     "predictor": str(predictor.path) if predictor.path else None,
                     "predictor_sha256": predictor.sha256}

    @classmethod
    def from_settings(cls, settings) -> "ParamEngine":
        """settings.model names the predictor (a file, or a name in the model store; default
        params-default); settings.controls() what moves and how far."""
        return cls(ParamPredictor.load(settings.model or DEFAULT_PREDICTOR), controls=settings.controls())

    def render_stem(self, name: str, x: np.ndarray, reference: np.ndarray | None
                    ) -> tuple[np.ndarray, fxchain.StemChain, tuple[float, float] | None]:
        """(x through its chain without the output gain, that chain, (the input's gated level, the
        reference stem's) or None where the gain stays 0 dB). A stem with no reference, a silent
        input or reference stem, or an amount of 0 keeps its sound (identity chain)."""
        amount = self.controls.amount_for(name)
        x = np.asarray(x, dtype=np.float32)
        if reference is None or amount <= 0.0 or np.max(np.abs(reference)) < SILENT_PEAK or not np.any(x):
            return x, fxchain.StemChain(), None
        x_features, reference_features = fxfeatures.measure(x), fxfeatures.measure(reference)
        aspects = REFINED_ASPECTS & self.controls.aspects
        chain = fxchain.StemChain()
        if aspects:
            chain = controlled_chain(estimate_chain(self.predictor, x, reference, x_features=x_features,
                                                    reference_features=reference_features, aspects=aspects).chain,
                                     amount)
        levels = (x_features.level_db, reference_features.level_db) if self.controls.moves("level") else None
        return fxchain.render(x, chain), chain, levels

    def plan(self, song: Measured, reference: Measured, progress: Progress = no_progress) -> Plan:
        """Each stem's chain estimated on its excerpt, the output gain included; the chains (fx.chain.
        StemChain) are what the stems are rendered with. A stem without a reference stem keeps its
        sound."""
        names = list(song.excerpts)
        done = []

        def one(name):
            result = self.render_stem(name, song.excerpts[name], reference.excerpts.get(name))
            done.append(name)
            progress(f"estimating and rendering {name}", 0.05 + 0.9 * len(done) / len(names))
            return result

        progress("estimating FX chains", 0.05)
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            results = dict(zip(names, pool.map(one, names)))
        shifts = [reference - level for level, reference in
                  (levels for _, _, levels in results.values() if levels is not None)]
        highest_shift = float(np.median(shifts)) + MAX_BOOST_OVER_SONG_DB if shifts else 0.0
        rendered, chains = {}, {}
        for name, (excerpt, chain, levels) in results.items():
            gain_db = 0.0
            if levels is not None:
                level, reference_level = levels
                target = level + min(reference_level - level, highest_shift)
                gain_db = fxfeatures.gain_to_level(excerpt, target, MAX_GAIN_DB) * self.controls.amount_for(name)
            chains[name] = replace(chain, gain_db=gain_db)
            rendered[name] = excerpt * np.float32(fxchain.dsp.db_to_amp(gain_db)) if gain_db else excerpt
        return Plan({name: fxchain.chain_effect(chain) for name, chain in chains.items()}, chains,
                    rendered if song.whole else None)

    def convert(self, input_stems: dict[str, np.ndarray], reference_stems: dict[str, np.ndarray],
                progress: Progress = no_progress, reference_b_stems=None) -> Conversion:
        """The converted stems and the chain applied to each (fx.chain.StemChain)."""
        plan = self.plan(measured_whole(input_stems), measured_whole(reference_stems), progress)
        return Conversion(plan.rendered, plan.chains)
