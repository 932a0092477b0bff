"""The one factory of engines (mixing/engine.py): the engine a job's settings name."""
from __future__ import annotations

from mixdaemon import defaults
from mixdaemon.errors import ConfigError
from mixdaemon.mixing.engine import Engine
from mixdaemon.mixing.settings import TransferSettings


def make_engine(settings: TransferSettings) -> Engine:
    """The engine settings.engine names, with settings.model (or the engine's shipped default) and
    the user's controls (settings.controls(): amount, per-stem amounts, the aspects that move)."""
    if settings.engine == "match":
        from mixdaemon.mixing.match import MatchingEngine
        return MatchingEngine(controls=settings.controls(), workers=defaults.job_threads())
    if settings.engine == "neural":
        from mixdaemon.mixing.neural import NeuralEngine
        return NeuralEngine.from_settings(settings)
    if settings.engine == "param":
        from mixdaemon.mixing.param import ParamEngine
        return ParamEngine.from_settings(settings)
    raise ConfigError(f"unknown engine '{settings.engine}': choose {', '.join(defaults.ENGINES)}")
