"""The `mixdaemon` command line: the one place that parses arguments, prints and draws progress bars.

Each command lives in its own module of this package (cli/<command>.py) with a `register(subparsers)`
that adds its parser; the work is done by the job API (mixdaemon.mixing), the daemon, training and
evaluation. Only the module of the command being run is imported, so `mixdaemon send` starts in a
fraction of a second; `--help` (no command yet) imports them all to list them.

Every user-facing failure is a MixdaemonError: it is printed as one line `mixdaemon: error: ...`
and the exit status is 2.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from mixdaemon.errors import MixdaemonError
from mixdaemon.memory import keep_freed_memory, one_malloc_arena

# command name → module of this package that registers it
COMMANDS = {
    "transfer": "transfer", "demo": "transfer", "example": "transfer",
    "fxnorm": "fxnorm",
    "models": "models", "embed": "models",
    "backends": "backends",
    "serve": "serve",
    "send": "send",
    "automix": "automix",
    "batch": "batch",
    "evaluate": "evaluate",
    "train": "train",
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixdaemon", description="Mixing style transfer and automatic mixing "
                                     "for DAW users: convert stems to a reference song's mixing style.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    command = next((a for a in (argv or []) if not a.startswith("-")), None)
    for module in dict.fromkeys(COMMANDS.values()):
        if command not in COMMANDS or COMMANDS[command] == module:
            importlib.import_module(f"{__package__}.{module}").register(sub)
        else:  # not imported, but named in the usage all the same
            for name in (n for n, m in COMMANDS.items() if m == module):
                sub.add_parser(name)
    _verbose_anywhere(parser)
    return parser


def _verbose_anywhere(parser: argparse.ArgumentParser) -> None:
    """-v after the command too (`mixdaemon send status -v`): every command's parser, and theirs,
    takes it; where it is not given there, the top-level value stands (SUPPRESS)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                if "-v" not in command._option_string_actions:
                    command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                                         help="log details to stderr")
                _verbose_anywhere(command)


# Commands that run one job and exit: they allocate and free song-long arrays again and again.
ONE_SHOT_JOBS = ("transfer", "demo", "fxnorm", "automix", "evaluate")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    one_malloc_arena()
    if args.command in ONE_SHOT_JOBS:
        keep_freed_memory()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except MixdaemonError as exc:
        print(f"mixdaemon: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mixdaemon: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
