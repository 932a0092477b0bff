"""The settings of a job, defined once.

`TransferSettings` and `AutomixSettings` are what the job API (mixing/transfer.py,
mixing/automix.py) takes, what the daemon stores with every job and hashes into its key, and — as
they are — the `[transfer]` and `[automix]` sections of config.toml: daemon/config.py validates
those sections against these dataclasses (the constraints are in the annotations), so the
configuration model is derived from the settings and not typed a second time.

This module imports nothing heavy: `mixdaemon send --config` reads the configuration without the
audio stack.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from annotated_types import Ge, Gt, Le

from mixdaemon import defaults

_NO_EXTRA_KEYS = {"extra": "forbid"}  # a typo in config.toml ("refrence") is an error, not ignored


@dataclass
class TransferSettings:
    """A style-transfer job's settings."""

    __pydantic_config__ = _NO_EXTRA_KEYS

    engine: Literal[defaults.ENGINES] = defaults.ENGINE
    model: str | None = None  # neural: a model pair name in the model store or a path; param: a predictor
    backend: Literal[defaults.BACKENDS] = defaults.BACKEND
    chunk_seconds: Annotated[float, Gt(0)] = defaults.CHUNK_SECONDS
    batch_size: Annotated[int, Ge(1)] = defaults.BATCH_SIZE
    stats: str | None = None  # FX-normalization statistics file; None = the shipped default
    separation_model: str = defaults.SEPARATION_MODEL
    separation_dir: str | None = None
    ceiling_dbtp: Annotated[float, Le(0.0)] = defaults.CEILING_DBTP
    subtype: Literal[defaults.OUTPUT_SUBTYPES] = defaults.OUTPUT_SUBTYPE
    seed: int = defaults.SEED


@dataclass
class AutomixSettings:
    """An automix job's settings."""

    __pydantic_config__ = _NO_EXTRA_KEYS

    model: str = defaults.DEFAULT_AUTOMIX_MODEL  # a name in the model store, or a model file
    stats: str | None = None    # FX-normalization statistics; None = the shipped FxNorm ones
    chunk_seconds: Annotated[float, Gt(0)] = defaults.AUTOMIX_CHUNK_SECONDS
    ceiling_dbtp: Annotated[float, Le(0.0)] = defaults.CEILING_DBTP
    subtype: Literal[defaults.OUTPUT_SUBTYPES] = defaults.OUTPUT_SUBTYPE
    seed: int = defaults.SEED
    ir_folder: str | None = None  # impulse responses for reverb normalization (§1.7), as in training
