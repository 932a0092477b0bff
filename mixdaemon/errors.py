"""Errors a user can act on.

Every exception here carries a one-line message that names the thing at fault (a file, a config
key, a tensor) and the problem; the CLI prints it as is and exits non-zero, the daemon sends it over
OSC and writes it to the log.
"""


class MixdaemonError(Exception):
    """Base class: a problem with the user's input, files or set-up (not a bug)."""


class AudioFileError(MixdaemonError):
    """An audio file that cannot be used: unreadable, empty, NaN/Inf, too many channels..."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class StemLayoutError(MixdaemonError):
    """A folder of stems that does not describe one song (nothing usable, duplicate roles...)."""


class ModelFileError(MixdaemonError):
    """A model checkpoint that is missing, unreadable or does not match the architecture."""


class SeparationUnavailable(MixdaemonError):
    """A mixture needs separating into stems but no separation model can be loaded."""


class EngineUnavailable(MixdaemonError):
    """The requested inference engine or backend cannot run on this machine."""


class ConfigError(MixdaemonError):
    """A configuration value that is missing or invalid; the message names the key."""
