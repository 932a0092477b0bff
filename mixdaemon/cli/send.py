"""`mixdaemon send COMMAND ...`: a command-line OSC client for every daemon command
(daemon.osc.OscClient), printing the replies."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mixdaemon import defaults
from mixdaemon.cli.transfer import aspect_list, stem_amounts
from mixdaemon.daemon.osc import COMMANDS, PREFIX, OscClient, format_options
from mixdaemon.errors import MixdaemonError


def _request_for(args) -> tuple[str, list]:
    cmd = args.send_command
    if cmd == "ping":
        return f"{PREFIX}/ping", []
    if cmd == "submit":
        files = [str(Path(p).absolute()) for p in args.stems]
        reference = str(Path(args.reference).absolute()) if args.reference else ""
        out = str(Path(args.out).absolute()) if args.out else ""
        options = _job_options(args)
        if len(files) == 1:
            return f"{PREFIX}/submit", [files[0], reference, out, *([format_options(options)] if options else [])]
        if options:
            raise MixdaemonError("send submit: --amount, --stem-amount and --match need one folder or file "
                                 "(the daemon takes options with /mixdaemon/submit only)")
        return f"{PREFIX}/submit/files", [reference, out, *files]
    if cmd == "automix":
        out = str(Path(args.out).absolute()) if args.out else ""
        return f"{PREFIX}/automix", [str(Path(args.stems).absolute()), out]
    if cmd == "reference":
        path = "" if args.clear else str(Path(args.path).absolute())
        if args.folder:
            return f"{PREFIX}/reference", [str(Path(args.folder).absolute()), path]
        return f"{PREFIX}/reference", [path]
    if cmd == "status":
        return f"{PREFIX}/status", [] if args.job_id is None else [args.job_id]
    if cmd == "cancel":
        return f"{PREFIX}/cancel", [args.job_id]
    if cmd == "preview":
        return f"{PREFIX}/preview", [args.job_id, args.mode]
    if cmd == "preview-stop":
        return f"{PREFIX}/preview/stop", []
    if cmd == "subscribe":
        return f"{PREFIX}/subscribe", []
    raise MixdaemonError(f"unknown send command {cmd}")


def _job_options(args) -> dict:
    """The submit options given (osc.parse_options' form); the daemon checks their values."""
    options: dict = {}
    if args.amount is not None:
        options["amount"] = args.amount
    if args.match is not None:
        options["match"] = aspect_list(args.match)
    if args.stem_amount:
        options["stem_amount"] = stem_amounts(args.stem_amount)
    return options


def _shown(value) -> str:
    """A value as printed: OSC floats are 32-bit (22.2 arrives as 22.200000762939453)."""
    return f"{round(value, 3):g}" if isinstance(value, float) else str(value)


def _percent(value) -> str:
    return f"{float(value):.1f}%"


def format_message(address: str, params: list) -> str:
    """One line: the address, then the values; those of a status summary, a job's status and its
    progress labelled (`queued 0  running 1  done 3 ...`)."""
    values = list(params)
    if address == f"{PREFIX}/status/summary" and len(values) == 6:
        text = "  ".join(f"{label} {n}" for label, n in zip(("queued", "running", "done", "error", "cancelled"),
                                                              values))
        return f"{address} {text}" + (f"  running job {values[5]}" if values[5] != -1 else "")
    if address == f"{PREFIX}/status/reply" and len(values) == 5:
        job_id, state, percent, stage, info = values
        shown = [f"job {job_id}", state, *([_percent(percent), stage] if state == "running" else []), info]
        return f"{address} {'  '.join(str(v) for v in shown if v != '')}"
    if address == f"{PREFIX}/progress" and len(values) == 3:
        return f"{address} job {values[0]}  {_percent(values[1])}  {values[2]}"
    return " ".join([address, *(_shown(p) for p in values)])


def _print_message(address: str, params: list) -> None:
    print(format_message(address, params), flush=True)


def cmd_send(args) -> int:
    """Send one request, print the reply; with --wait (submit), follow the job to done/error.
    Exit status: 0 success, 1 an error reply, 3 no reply within --timeout."""
    host, port = args.host, args.port
    if args.config:
        from mixdaemon.daemon.config import load_config
        osc = load_config(args.config).osc
        host = host or (defaults.OSC_HOST if osc.host in ("0.0.0.0", "") else osc.host)
        port = port or osc.port
    client = OscClient(host or defaults.OSC_HOST, port or defaults.OSC_PORT)
    address, params = _request_for(args)
    command = COMMANDS[address]
    job_id = None
    follow = args.send_command in ("submit", "automix", "subscribe") and args.wait
    listen = args.send_command == "subscribe" and args.wait  # until interrupted
    try:
        client.send(address, params)
        while True:
            message = client.receive(3600.0 if listen else args.timeout)
            if message is None and listen:
                continue
            if message is None:
                what = "end of the job" if job_id is not None else "reply"
                print(f"mixdaemon: error: no {what} from {client.target[0]}:{client.target[1]} within "
                      f"{args.timeout:g} s (is `mixdaemon serve` running with that OSC port?)", file=sys.stderr)
                return 3
            reply, values = message
            _print_message(reply, values)
            if reply == f"{PREFIX}/error" and (job_id is None or (values and values[0] == job_id)):
                return 1
            if not follow:
                if reply in command.replies:
                    return 0
                continue  # a notification that arrived first; the reply follows
            if reply == f"{PREFIX}/queued" and job_id is None and args.send_command in ("submit", "automix"):
                job_id = values[0] if values else None
            elif reply in (f"{PREFIX}/done", f"{PREFIX}/cancelled") and values and values[0] == job_id:
                return 0 if reply.endswith("done") else 1
    except KeyboardInterrupt:
        return 0 if listen else 130
    except OSError as exc:
        print(f"mixdaemon: error: cannot send to {client.target[0]}:{client.target[1]}: {exc.strerror or exc}",
              file=sys.stderr)
        return 3
    finally:
        client.close()


def register(subparsers) -> None:
    """`mixdaemon send COMMAND ...`: an OSC client for every daemon command."""
    p = subparsers.add_parser("send", help="send a command to a running daemon over OSC and print the reply",
                              description="Send one OSC request to `mixdaemon serve` and print the reply. "
                                          "Exit status: 0 ok, 1 error reply, 3 no reply in time.")
    _connection_options(p, defaults_here=True)
    cmds = p.add_subparsers(dest="send_command", required=True)
    cmds.add_parser("ping", help="check that the daemon answers")
    s = cmds.add_parser("submit", help="convert a stems folder, a file, or several files")
    s.add_argument("stems", nargs="+", help="a folder of stems, one file, or several stem files")
    s.add_argument("--reference", help="reference file or folder (default: the daemon's default reference)")
    s.add_argument("--out", help="output root (default: the daemon's output root)")
    s.add_argument("--amount", metavar="A", help="how far this job moves toward the reference, 0 (the input) "
                                                 "to 1 (all the way) (default: the daemon's [transfer] amount)")
    s.add_argument("--stem-amount", action="append", default=[], metavar="STEM=A",
                   help="the amount for one stem, over --amount (repeatable): --stem-amount vocals=0.3")
    s.add_argument("--match", metavar="ASPECTS",
                   help=f"what this job moves, comma-separated, of {', '.join(defaults.ASPECTS)} "
                        "(default: the daemon's [transfer] match)")
    s.add_argument("--wait", action="store_true", help="print progress and wait until the job is done")
    s = cmds.add_parser("automix", help="mix a stems folder with the automix model (no reference)")
    s.add_argument("stems", help="a folder of stems (or one stem file)")
    s.add_argument("--out", help="output root (default: the daemon's output root)")
    s.add_argument("--wait", action="store_true", help="print progress and wait until the job is done")
    r = cmds.add_parser("reference", help="set the default reference, or a watch folder's")
    r.add_argument("path", nargs="?", help="reference file or folder of reference stems")
    r.add_argument("--folder", help="set the reference of this watch folder only")
    r.add_argument("--clear", action="store_true", help="remove the reference instead")
    s = cmds.add_parser("status", help="a job's state, or counts of all jobs")
    s.add_argument("job_id", type=int, nargs="?")
    s = cmds.add_parser("cancel", help="cancel a queued or running job")
    s.add_argument("job_id", type=int)
    s = cmds.add_parser("preview", help="play a finished job's mix")
    s.add_argument("job_id", type=int)
    s.add_argument("--mode", default="converted", choices=["converted", "original", "ab"])
    cmds.add_parser("preview-stop", help="stop playback")
    s = cmds.add_parser("subscribe", help="receive every job notification (print them with --wait)")
    s.add_argument("--wait", action="store_true", help="keep printing notifications until interrupted")
    for command in cmds.choices.values():  # `send status --port 7701` as well as `send --port 7701 status`
        _connection_options(command, defaults_here=False)
    p.set_defaults(func=_checked_send)


def _connection_options(parser, defaults_here: bool) -> None:
    """--host, --port, --config and --timeout, before or after the command: the defaults are set
    once, on `send` itself (defaults_here); a command's parser leaves a value it was not given
    alone (SUPPRESS)."""
    def default(value):
        return value if defaults_here else argparse.SUPPRESS
    parser.add_argument("--host", default=default(None),
                        help=f"daemon address (default: from --config, else {defaults.OSC_HOST})")
    parser.add_argument("--port", type=int, default=default(None),
                        help=f"daemon OSC port (default: from --config, else {defaults.OSC_PORT})")
    parser.add_argument("--config", default=default(None), help="read the daemon's OSC host and port from this config.toml")
    parser.add_argument("--timeout", type=float, default=default(5.0),
                        help="seconds to wait for a reply (with --wait: for each message)")


def _checked_send(args) -> int:
    if args.send_command == "reference" and not args.clear and not args.path:
        raise MixdaemonError("send reference: give a PATH, or --clear")
    return cmd_send(args)
