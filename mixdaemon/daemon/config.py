"""The daemon's configuration: a TOML file validated by pydantic, environment overrides, and the
quick-start flags of `mixdaemon serve`.

Precedence, lowest to highest: built-in defaults → config.toml → environment variables → command-line
flags. An environment variable `MIXDAEMON__SECTION__KEY=value` sets `[section] key` (one `__` per
level, case-insensitive; `MIXDAEMON__ENGINE=neural` sets the top-level key). The value is read as a
TOML value when it parses as one (`9001`, `true`, `["a", "b"]`) and as a plain string otherwise. The
double underscore keeps these apart from `MIXDAEMON_ENGINES`, the model store folder.

Every problem is a ConfigError whose message names the file and the key: `config.toml: osc.port:
Input should be less than or equal to 65535 (got 70000)`.
"""
from __future__ import annotations

import dataclasses
import os
import string
import typing
from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mixdaemon import defaults
from mixdaemon.errors import ConfigError
from mixdaemon.mixing.settings import AutomixSettings, TransferSettings, describe_error, key_name

ENV_PREFIX = "MIXDAEMON__"
# Fields the output pattern may use; see OutputConfig.
PATTERN_FIELDS = ("folder", "job_id", "engine", "reference", "date")


def _expand(path: Path) -> Path:
    """`~` and $VARS expanded, made absolute (relative paths are relative to the working directory)."""
    return Path(os.path.expandvars(os.path.expanduser(str(path)))).absolute()


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "mixdaemon"


class _Section(BaseModel):
    # Unknown keys are errors: a typo ("refrence") must not be silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class WatchFolder(_Section):
    """One watched folder. Each folder below it (or the folder itself) that receives audio files is
    one bounce: its stems become one job once they have settled. job_type "transfer" converts them
    toward a reference; "automix" mixes them with the automix model and needs no reference."""

    path: Path
    reference: Path | None = None  # reference for bounces in this folder (file or folder of stems)
    job_type: Literal["transfer", "automix"] = "transfer"

    @field_validator("path", "reference")
    @classmethod
    def _absolute(cls, value):
        return None if value is None else _expand(value)

    @model_validator(mode="after")
    def _reference_only_for_transfer(self):
        if self.job_type == "automix" and self.reference is not None:
            raise ValueError("reference: automix folders take no reference (remove it, or set job_type = \"transfer\")")
        return self


class OutputConfig(_Section):
    """Where results go: `root / pattern`. The pattern is one folder name built from {folder} (the
    bounce folder's name), {job_id}, {engine}, {reference} (the reference's name) and {date}
    (YYYYmmdd-HHMMSS). When the folder already exists, "-{job_id}" is appended: earlier results are
    never replaced."""

    root: Path = Path("mixdaemon-out")
    pattern: str = "{folder}-{job_id}"

    @field_validator("root")
    @classmethod
    def _absolute(cls, value):
        return _expand(value)

    @field_validator("pattern")
    @classmethod
    def _one_folder_name(cls, value: str) -> str:
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        except ValueError as exc:
            raise ValueError(f"not a valid pattern ({exc})") from None
        unknown = names - set(PATTERN_FIELDS)
        if unknown:
            raise ValueError(f"unknown field {{{sorted(unknown)[0]}}}; use {', '.join('{' + f + '}' for f in PATTERN_FIELDS)}")
        if "/" in value or "\\" in value or value.startswith(".") or not value.strip():
            raise ValueError("must be a single visible folder name (no '/', not starting with '.')")
        return value


class OscConfig(_Section):
    host: str = defaults.OSC_HOST  # listen address; keep the loopback unless other machines must reach it
    port: int = Field(defaults.OSC_PORT, ge=0, le=65535)  # 0: the OS picks a free port (tests)
    # Where job notifications go besides the client that submitted the job (and the subscribers).
    reply_host: str | None = None
    reply_port: int | None = Field(None, ge=1, le=65535)

    @model_validator(mode="after")
    def _reply_pair(self):
        if self.reply_port is not None and self.reply_host is None:
            self.reply_host = "127.0.0.1"
        if self.reply_host is not None and self.reply_port is None:
            raise ValueError("reply_host is set but reply_port is not; set both")
        return self


class PlaybackConfig(_Section):
    device: str | int | None = None  # sounddevice output device (name or index); None: the default
    ab_seconds: float = Field(4.0, gt=0.2, le=60.0)  # A/B preview switches every this many seconds


class ExecutorConfig(_Section):
    """Where jobs run: "local" (one worker thread in the daemon) or "ray" (workers on a Ray cluster,
    daemon/ray_executor.py; the output root and state folder on storage the workers share)."""
    kind: str = "local"  # one of defaults.EXECUTORS
    address: str | None = None  # ray: "auto", "ray://HOST:10001" or "HOST:6379"; unset: a local Ray cluster
    workers: int = Field(1, ge=1, le=1024)  # jobs run at once (ray: one actor each, its models kept loaded)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in defaults.EXECUTORS:
            raise ValueError(f"must be one of {', '.join(defaults.EXECUTORS)}")
        return value


class DaemonConfig(_Section):
    watch: list[WatchFolder] = []
    reference: Path | None = None  # the default reference, for bounces with no other
    output: OutputConfig = OutputConfig()
    # The job settings, validated against the dataclasses the job API takes (mixing/settings.py).
    transfer: TransferSettings = TransferSettings()
    automix: AutomixSettings = AutomixSettings()
    osc: OscConfig = OscConfig()
    playback: PlaybackConfig = PlaybackConfig()
    executor: ExecutorConfig = ExecutorConfig()
    # Folders that OSC requests may name (stems, references, outputs) besides the watch folders, the
    # output root and the configured references' folders, which are always allowed.
    allowed_roots: list[Path] = []
    # A bounce starts once its files have not changed for this long (and every WAV header is final).
    settle_seconds: float = Field(2.0, ge=0.05, le=3600)
    # A WAV whose header still says "incomplete" is taken as it is after this long without change
    # (the job then fails with a clear "truncated" reason instead of waiting forever).
    stale_seconds: float = Field(60.0, ge=0.1)
    # If set, a bounce also waits for a file of this name in its folder (e.g. "bounce.done").
    marker: str | None = None
    scan_on_start: bool = True  # process bounces already present at start (finished ones are skipped)
    state_dir: Path = Field(default_factory=default_state_dir)  # job database, lock, log
    log_file: Path | None = None  # default: state_dir / "mixdaemon.log"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # A job that was running when the daemon died this many times is failed, so that an input that
    # crashes the daemon cannot crash-loop it.
    max_attempts: int = Field(3, ge=1)

    @field_validator("reference", "state_dir", "log_file")
    @classmethod
    def _absolute(cls, value):
        return None if value is None else _expand(value)

    @field_validator("allowed_roots")
    @classmethod
    def _absolute_list(cls, value):
        return [_expand(v) for v in value]

    @field_validator("marker")
    @classmethod
    def _plain_name(cls, value):
        if value is not None and ("/" in value or not value.strip()):
            raise ValueError("must be a file name, not a path")
        return value

    @model_validator(mode="after")
    def _output_not_over_watch(self):
        root = self.output.root.resolve()
        for i, w in enumerate(self.watch):
            folder = w.path.resolve()
            if root == folder or root in folder.parents:
                raise ValueError(f"output.root ({root}) is, or contains, watch[{i}].path ({folder}); "
                                 "results would be taken for new bounces: put the output folder elsewhere "
                                 "or inside the watch folder")
        return self

    @property
    def log_path(self) -> Path:
        return self.log_file or self.state_dir / "mixdaemon.log"

    @property
    def database_path(self) -> Path:
        return self.state_dir / "jobs.sqlite3"

    def job_type_for(self, watch_root: Path) -> str:
        """The job type of bounces found under this watch folder."""
        for w in self.watch:
            if w.path.resolve() == Path(watch_root).resolve():
                return w.job_type
        return "transfer"

    def roots(self) -> list[Path]:
        """Resolved folders that OSC requests may read from or write into."""
        roots = [*self.allowed_roots, *(w.path for w in self.watch), self.output.root]
        roots += [r.parent for r in [self.reference, *(w.reference for w in self.watch)] if r is not None]
        return sorted({r.resolve() for r in roots})


def _keys_at(loc: tuple) -> list[str]:
    """The keys the section holding loc's last key accepts (DaemonConfig's, a [section]'s, a
    [[watch]] table's): named in the error for an unknown key, which an installed user has no
    example file to look up in."""
    section: Any = DaemonConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        annotation = section.model_fields[part].annotation if isinstance(section, type) and issubclass(
            section, BaseModel) else {f.name: f.type for f in dataclasses.fields(section)}[part]
        candidates = [annotation, *typing.get_args(annotation)]
        section = next((c for c in candidates if isinstance(c, type) and (issubclass(c, BaseModel)
                                                                          or dataclasses.is_dataclass(c))), None)
        if section is None:
            return []
    if issubclass(section, BaseModel):
        return list(section.model_fields)
    return [f.name for f in dataclasses.fields(section)]


def _describe(error: dict) -> str:
    key = key_name(error["loc"])
    if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        try:
            keys = _keys_at(tuple(error["loc"]))
        except (KeyError, TypeError):  # a location the walk does not know: the plain message
            keys = []
        return f"{key}: unknown key" + (f" (check the spelling; the keys here are {', '.join(keys)})" if keys else "")
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    return describe_error(error)


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def env_overrides(environ: dict[str, str] | None = None) -> dict:
    """The nested dict that MIXDAEMON__A__B=value variables describe."""
    environ = os.environ if environ is None else environ
    out: dict = {}
    for name, raw in environ.items():
        if not name.upper().startswith(ENV_PREFIX):
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX):].split("__")]
        if not all(keys):
            raise ConfigError(f"environment variable {name}: empty key part; use MIXDAEMON__SECTION__KEY")
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment variable {name}: {k} is not a section")
        node[keys[-1]] = _env_value(raw)
    return out


def merge(base: dict, override: dict) -> dict:
    """Recursive dict merge: override's leaves win; lists are replaced, not appended."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_toml(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None


def build_config(data: dict, source: str = "configuration", variables: dict[tuple, str] | None = None) -> DaemonConfig:
    """Validate a nested dict; relative paths in it are relative to the working directory. A
    problem with a key that `variables` ({key path: environment variable}) set names that
    variable; any other names `source`."""
    try:
        return DaemonConfig.model_validate(data)
    except ValidationError as exc:
        def origin(loc: tuple) -> str:
            keys = tuple(part for part in loc if isinstance(part, str))
            named = [name for path, name in (variables or {}).items() if keys[:len(path)] == path]
            return f"environment variable {named[0]}" if named else source

        problems = [f"{origin(tuple(e['loc']))}: {_describe(e)}" for e in exc.errors()]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(f"{problems[0]}{more}" + "".join(f"\n  {p}" for p in problems[1:])) from None


def load_config(path: str | os.PathLike | None = None, overrides: dict | None = None,
                environ: dict[str, str] | None = None) -> DaemonConfig:
    """Defaults ← config file (if given) ← environment ← `overrides` (from command-line flags)."""
    data = read_toml(path) if path is not None else {}
    if path is not None:
        data = _relative_to(data, Path(path).absolute().parent)
    data = merge(data, env_overrides(environ))
    data = merge(data, overrides or {})
    variables = {tuple(k.lower() for k in name[len(ENV_PREFIX):].split("__")): name
                 for name in (os.environ if environ is None else environ) if name.upper().startswith(ENV_PREFIX)}
    return build_config(data, source=str(path) if path is not None else "configuration", variables=variables)


# Paths in a config file are relative to the file's folder, so a config can travel with a project.
_PATH_KEYS = {("reference",), ("state_dir",), ("log_file",), ("output", "root")}


def _relative_to(data: dict, folder: Path) -> dict:
    def fix(value):
        if isinstance(value, str) and value and not os.path.isabs(os.path.expandvars(os.path.expanduser(value))):
            return str(folder / value)
        return value

    out = dict(data)
    for keys in _PATH_KEYS:
        node = out
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node.get(k), dict) else None
            if node is None:
                break
        if node is not None and keys[-1] in node:
            node[keys[-1]] = fix(node[keys[-1]])
    if isinstance(out.get("allowed_roots"), list):
        out["allowed_roots"] = [fix(v) for v in out["allowed_roots"]]
    if isinstance(out.get("watch"), list):
        out["watch"] = [{**w, **{k: fix(w[k]) for k in ("path", "reference") if k in w}} if isinstance(w, dict) else w
                        for w in out["watch"]]
    return out
