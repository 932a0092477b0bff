"""The engines an evaluation compares besides the product's own: the anchors every table reports
(identity: y = x; rms: each stem gained to its reference stem's RMS; Matchering 2 run stem by stem),
and `engine_for`, which turns an evaluation's engine spec into an engine (the product's engines come
from mixing.factory.make_engine).

Specs: "identity", "rms", "matchering", "match", "neural" (pair "default"), "neural:NAME" (a pair in
the model store, or a pair file), "param" (predictor "params-default"), "param:NAME".
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from mixdaemon.audio.dsp import rms_match
from mixdaemon.audio.io import read_audio, write_audio
from mixdaemon.errors import ConfigError
from mixdaemon.mixing.engine import Conversion
from mixdaemon.mixing.factory import make_engine
from mixdaemon.mixing.settings import TransferSettings
from mixdaemon.progress import Progress, no_progress


class IdentityEngine:
    """y = x: the paper's "input" row, the denominator of every ratio."""

    name = "identity"
    info = {"name": "identity", "kind": "no conversion (y = x)"}
    capabilities: frozenset[str] = frozenset()

    def convert(self, input_stems, reference_stems, progress: Progress = no_progress, reference_b_stems=None):
        return Conversion(dict(input_stems))


class RmsEngine:
    """Each stem gained so that its RMS (whole segment, both channels) equals the reference stem's:
    level alone, the simplest transfer an engine has to beat."""

    name = "rms"
    info = {"name": "rms", "kind": "per-stem gain to the reference stem's RMS"}
    capabilities: frozenset[str] = frozenset()

    def convert(self, input_stems, reference_stems, progress: Progress = no_progress, reference_b_stems=None):
        return Conversion({name: rms_match(x, reference_stems[name]).astype(np.float32)
                           for name, x in input_stems.items()})


class MatcheringEngine:
    """Matchering 2 (sergree/matchering), the tool users reach for today, run stem by stem: the input
    stem is Matchering's target, the reference stem its reference. Stems it refuses (silent, too
    short...) are kept unconverted and listed in info["refused"]."""

    name = "matchering"
    capabilities: frozenset[str] = frozenset()

    def __init__(self):
        try:
            import matchering
        except ImportError:
            raise ConfigError("engine 'matchering': the matchering package is not installed "
                              "(pip install matchering)") from None
        self._matchering = matchering
        version = getattr(matchering, "__version__", "unknown")
        self.info = {"name": "matchering", "kind": f"Matchering {version}, stem by stem", "refused": []}

    def convert(self, input_stems, reference_stems, progress: Progress = no_progress, reference_b_stems=None):
        out = {}
        with tempfile.TemporaryDirectory(prefix="mixdaemon-matchering-") as tmp:
            for i, (name, x) in enumerate(input_stems.items()):
                progress(f"matchering {name}", i / len(input_stems))
                target, reference, result = (Path(tmp) / f"{name}_{k}.wav" for k in ("target", "reference", "result"))
                write_audio(target, x, subtype="FLOAT")
                write_audio(reference, reference_stems[name], subtype="FLOAT")
                try:
                    self._matchering.process(target=str(target), reference=str(reference),
                                             results=[self._matchering.pcm24(str(result))])
                    y = read_audio(result).samples
                    out[name] = y[:len(x)] if len(y) >= len(x) else np.pad(y, ((0, len(x) - len(y)), (0, 0)))
                except Exception as exc:  # Matchering signals refusals with bare exceptions
                    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    self.info["refused"].append(f"{name}: {message}")
                    out[name] = x
        return Conversion(out)


ANCHORS = {"identity": IdentityEngine, "rms": RmsEngine, "matchering": MatcheringEngine}


def engine_for(spec: str, stats_path: str | Path | None = None, seed: int = 0, backend: str = "torch"):
    """The engine an evaluation spec names (module docstring); neural engines run on `backend`
    (torch by default: the reference numbers) with the FX-normalization statistics at stats_path."""
    if spec in ANCHORS:
        return ANCHORS[spec]()
    kind, _, model = spec.partition(":")
    if kind not in ("match", "neural", "param") or (kind == "match" and model):
        raise ConfigError(f"engine {spec!r}: expected identity, rms, match, matchering, neural, neural:NAME, "
                          "param or param:NAME")
    engine = make_engine(TransferSettings(engine=kind, model=model or None, backend=backend,
                                          stats=str(stats_path) if stats_path else None, seed=seed))
    engine.name = spec
    return engine
