"""The settings of a job, defined once.

`TransferSettings` and `AutomixSettings` are what the job API (mixing/transfer.py,
mixing/automix.py) takes, what the daemon stores with every job and hashes into its key, and — as
they are — the `[transfer]` and `[automix]` sections of config.toml: daemon/config.py validates
those sections against these dataclasses (the constraints are in the annotations), so the
configuration model is derived from the settings and not typed a second time.

Values from users that did not come through config.toml (command-line options, the options of an
OSC request) go through `validated`, the same check against the annotations, with the same one-line
messages naming the key.

This module imports nothing heavy: `mixdaemon send --config` reads the configuration without the
audio stack.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from typing import Annotated, Any, Literal, Mapping, TypeVar

from annotated_types import Ge, Gt, Le

from mixdaemon import defaults
from mixdaemon.errors import ConfigError

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
    refine_steps: Annotated[int, Ge(0), Le(200)] = defaults.REFINE_STEPS  # neural: gradient steps on each reference embedding
    precision: Literal[defaults.INFERENCE_PRECISIONS] = defaults.PRECISION  # neural: what the cloner computes in
    stats: str | None = None  # FX-normalization statistics file; None = the shipped default
    separation_model: str = defaults.SEPARATION_MODEL
    separation_dir: str | None = None
    ceiling_dbtp: Annotated[float, Le(0.0)] = defaults.CEILING_DBTP
    subtype: Literal[defaults.OUTPUT_SUBTYPES] = defaults.OUTPUT_SUBTYPE
    seed: int = defaults.SEED
    amount: Annotated[float, Ge(0.0), Le(1.0)] = defaults.AMOUNT  # 0 = the input, 1 = all the way to the reference
    # per stem name, overriding `amount` for that stem (config.toml: [transfer.stem_amount] vocals = 0.5)
    stem_amount: dict[str, Annotated[float, Ge(0.0), Le(1.0)]] = field(default_factory=dict)
    match: tuple[Literal[defaults.ASPECTS], ...] = defaults.ASPECTS  # the aspects that move

    def __post_init__(self):
        # pydantic runs this after checking the fields, and reports a ValueError as the key's error.
        # Unknown aspects reach here only from Python callers, but must not vanish in the sort below.
        unknown = [a for a in self.match if a not in defaults.ASPECTS]
        if unknown:
            raise ValueError(f"match: unknown aspect {unknown[0]!r}; choose from {', '.join(defaults.ASPECTS)}")
        if not self.match:
            raise ValueError(f"match: choose at least one of {', '.join(defaults.ASPECTS)}")
        # One spelling per choice, so that "eq,level" and "level,eq" are the same job (the daemon
        # hashes the settings into the job key).
        self.match = tuple(a for a in defaults.ASPECTS if a in self.match)
        if self.stem_amount:
            from mixdaemon.audio.stems import STEM_NAMES  # numpy: imported only when stem amounts are set
            unknown = sorted(set(self.stem_amount) - set(STEM_NAMES))
            if unknown:
                raise ValueError(f"stem_amount: {unknown[0]!r} is not a stem; use {', '.join(STEM_NAMES)}")

    def controls(self) -> "Controls":
        return Controls(self.amount, dict(self.stem_amount), frozenset(self.match))


@dataclass(frozen=True)
class Controls:
    """What the user asked an engine to move and how far: `amount` (0 = return the input, 1 = all
    the way toward the reference), per-stem overrides of it, and the aspects of the mix that may
    move (defaults.ASPECTS: level, eq, dynamics, width, space). Every engine takes one."""

    amount: float = defaults.AMOUNT
    stem_amount: Mapping[str, float] = field(default_factory=dict)
    aspects: frozenset[str] = frozenset(defaults.ASPECTS)

    def amount_for(self, stem: str) -> float:
        return float(self.stem_amount.get(stem, self.amount))

    def moves(self, aspect: str) -> bool:
        return aspect in self.aspects

    def as_dict(self) -> dict:
        """What a result file records of the controls, in the settings' terms."""
        return {"amount": self.amount, "stem_amount": dict(self.stem_amount),
                "match": [a for a in defaults.ASPECTS if a in self.aspects]}


@dataclass
class AutomixSettings:
    """An automix job's settings."""

    __pydantic_config__ = _NO_EXTRA_KEYS

    model: str = defaults.DEFAULT_AUTOMIX_MODEL  # a name in the model store, or a model file
    stats: str | None = None    # FX-normalization statistics; None = the shipped FxNorm ones
    chunk_seconds: Annotated[float, Gt(0)] = defaults.AUTOMIX_CHUNK_SECONDS
    loudness: Literal["stems", "model"] | Annotated[float, Le(0.0)] = defaults.AUTOMIX_LOUDNESS  # LUFS of the mix
    ceiling_dbtp: Annotated[float, Le(0.0)] = defaults.CEILING_DBTP
    subtype: Literal[defaults.OUTPUT_SUBTYPES] = defaults.OUTPUT_SUBTYPE
    seed: int = defaults.SEED
    ir_folder: str | None = None  # impulse responses for reverb normalization (§1.7), as in training


Settings = TypeVar("Settings", TransferSettings, AutomixSettings)


@cache
def _adapter(cls):
    from pydantic import TypeAdapter  # pydantic loads only where values are checked
    return TypeAdapter(cls)


def validated(cls: type[Settings], values: Mapping[str, Any]) -> Settings:
    """`cls(**values)` checked against the annotations as config.toml's sections are (strings are
    read as numbers where numbers are due: "0.5" is 0.5); otherwise a one-line ConfigError naming
    the key: "amount: Input should be less than or equal to 1 (got 1.5)"."""
    from pydantic import ValidationError
    try:
        return _adapter(cls).validate_python(dict(values))
    except ValidationError as exc:
        problems = [describe_error(e) for e in exc.errors()]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(problems[0] + more) from None


def key_name(loc: tuple) -> str:
    """A pydantic error location as the user writes the key: ("watch", 0, "path") → watch[0].path."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def describe_error(error: Mapping) -> str:
    """One pydantic validation error as "key: problem (got value)". A check of a whole section
    (__post_init__, a model validator) names the key in its message ("match: ..."): that key is
    put under the section's ("transfer.match: ...")."""
    msg = error["msg"].removeprefix("Value error, ")
    if error["type"] == "tuple_type":  # a tuple field is a list in TOML
        msg = "Input should be a list"
    if not error["loc"]:
        return msg
    if error["type"] == "value_error" and re.match(r"[a-z_]+: ", msg):
        return f"{key_name(error['loc'])}.{msg}"
    got = error.get("input")
    shown = "" if isinstance(got, (dict, list, tuple)) or got is None else f" (got {got!r})"
    return f"{key_name(error['loc'])}: {msg}{shown}"
