"""The daemon's OSC interface: address space, UDP server, replies and notifications, and the
`mixdaemon send` command-line client.

The address space is documented in integrations/osc/ADDRESS_SPACE.md; COMMANDS below is its
machine-readable form (the server checks every request against it). In short: requests go to
/mixdaemon/<command>; the reply goes back to the sender's address and port; job notifications
(/mixdaemon/queued, /progress, /done, /error, /cancelled) go to the client that submitted the job,
to the configured reply target and to subscribers. Anything wrong with a request (unparseable
packet, unknown address, wrong argument types, a path outside the allowed roots) is answered with
/mixdaemon/error "-" <reason>; the server itself never stops on a bad packet.

Bundles are accepted and their messages handled in order; their time tags are ignored (a request
runs when it arrives).
"""
from __future__ import annotations

import argparse
import logging
import socket
import socketserver
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket

from .errors import MixdaemonError

log = logging.getLogger("mixdaemon.osc")

PREFIX = "/mixdaemon"
DEFAULT_OSC_PORT = 7700
NO_JOB = "-"  # the job-id argument of an error that belongs to no job
MAX_JOB_ID = 2**31 - 1  # an OSC int32; larger numbers (int64, floats, digit strings) are no job
MAX_REASON_CHARS = 1500  # keeps every reply well inside one UDP datagram
Target = tuple[str, int]


class OscRequestError(MixdaemonError):
    """A request that cannot be served as sent (wrong arguments, unknown address)."""


# --- the address space -------------------------------------------------------------------------

@dataclass(frozen=True)
class Arg:
    name: str
    kind: str  # "text": a string; "job": a job id (int, or an integral float or numeric string)
    optional: bool = False
    variadic: bool = False  # one or more (must be last)


@dataclass(frozen=True)
class Command:
    address: str
    method: str      # the handler's method: method(sender, *args) -> list of (address, args) replies
    args: tuple[Arg, ...]
    replies: tuple[str, ...]  # the addresses that answer it (besides /mixdaemon/error)
    summary: str


COMMANDS: dict[str, Command] = {c.address: c for c in (
    Command(f"{PREFIX}/ping", "cmd_ping", (), (f"{PREFIX}/pong",), "is the daemon there; replies its version"),
    Command(f"{PREFIX}/submit", "cmd_submit",
            (Arg("stems_path", "text"), Arg("reference_path", "text", optional=True), Arg("out_root", "text", optional=True)),
            (f"{PREFIX}/queued",),
            "convert a stems folder or one file; \"\" or no reference/out: the defaults"),
    Command(f"{PREFIX}/submit/files", "cmd_submit_files",
            (Arg("reference_path", "text"), Arg("out_root", "text"), Arg("stem_file", "text", variadic=True)),
            (f"{PREFIX}/queued",), "convert a list of stem files (reference and out may be \"\")"),
    Command(f"{PREFIX}/automix", "cmd_automix", (Arg("stems_path", "text"), Arg("out_root", "text", optional=True)),
            (f"{PREFIX}/queued",), "mix a stems folder (or one stem file) with the automix model; no reference"),
    Command(f"{PREFIX}/reference", "cmd_reference",
            (Arg("path_or_folder", "text"), Arg("path", "text", optional=True)),
            (f"{PREFIX}/reference/ok",),
            "one argument: set the default reference (\"\" clears); two: the reference for a watch folder"),
    Command(f"{PREFIX}/status", "cmd_status", (Arg("job_id", "job", optional=True),),
            (f"{PREFIX}/status/reply", f"{PREFIX}/status/summary"), "one job's state, or counts of all jobs"),
    Command(f"{PREFIX}/cancel", "cmd_cancel", (Arg("job_id", "job"),), (f"{PREFIX}/cancelled",),
            "cancel a queued or running job"),
    Command(f"{PREFIX}/preview", "cmd_preview", (Arg("job_id", "job"), Arg("mode", "text", optional=True)),
            (f"{PREFIX}/preview/playing", f"{PREFIX}/warning"),
            "play a finished job: mode converted (default), original, or ab (alternating)"),
    Command(f"{PREFIX}/preview/stop", "cmd_preview_stop", (), (f"{PREFIX}/preview/stopped",), "stop playback"),
    Command(f"{PREFIX}/subscribe", "cmd_subscribe", (), (f"{PREFIX}/subscribed",),
            "send every job notification to the sender's address from now on"),
    Command(f"{PREFIX}/unsubscribe", "cmd_unsubscribe", (), (f"{PREFIX}/unsubscribed",), "stop that"),
)}
NOTIFICATIONS = (f"{PREFIX}/queued", f"{PREFIX}/progress", f"{PREFIX}/done", f"{PREFIX}/error", f"{PREFIX}/cancelled")


def _type_name(value: Any) -> str:
    return {str: "string", int: "integer", float: "float", bytes: "blob", bool: "boolean"}.get(type(value), type(value).__name__)


def _coerce(command: Command, index: int, arg: Arg, value: Any) -> Any:
    if arg.kind == "text":
        if isinstance(value, str):
            return value
    elif arg.kind == "job":
        number = None
        if isinstance(value, bool):
            pass
        elif isinstance(value, int):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        elif isinstance(value, str) and value.strip().isdigit():
            number = int(value.strip())
        if number is not None and 0 <= number <= MAX_JOB_ID:
            return number
    want = "a string" if arg.kind == "text" else f"a job id (an integer from 0 to {MAX_JOB_ID})"
    shown = repr(value) if not isinstance(value, bytes) else f"{len(value)} bytes"
    raise OscRequestError(f"{command.address}: argument {index + 1} ({arg.name}) must be {want}, "
                          f"got {_type_name(value)} {shown[:80]}")


def check_arguments(command: Command, params: list) -> list:
    """The request's arguments, coerced to the command's kinds, or an OscRequestError naming the
    argument at fault."""
    out = []
    required = [a for a in command.args if not a.optional]
    usage = " ".join(f"[{a.name}]" if a.optional else (f"{a.name}..." if a.variadic else a.name) for a in command.args)
    if len(params) < len(required) or (not any(a.variadic for a in command.args) and len(params) > len(command.args)):
        raise OscRequestError(f"{command.address}: expects {usage or 'no arguments'}, got {len(params)} argument(s)")
    for i, value in enumerate(params):
        arg = command.args[min(i, len(command.args) - 1)]
        out.append(_coerce(command, i, arg, value))
    return out


# --- encoding ------------------------------------------------------------------------------------

def encode(address: str, args: list | tuple = ()) -> bytes:
    builder = OscMessageBuilder(address=address)
    for value in args:
        if isinstance(value, Path):
            value = str(value)
        if isinstance(value, str):
            # File names that are not valid UTF-8 reach Python as lone surrogates; show them as U+FFFD.
            value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        elif isinstance(value, float) and value != value:  # NaN has no place in a reply
            value = 0.0
        builder.add_arg(value)
    return builder.build().dgram


def decode(data: bytes) -> list[OscMessage]:
    """The messages of a packet (a message or a bundle); raises on anything malformed. python-osc
    skips bundle elements it cannot parse; a packet left with no message is an error here."""
    messages = [timed.message for timed in OscPacket(data).messages]
    if not messages:
        raise ValueError("the packet holds no OSC message")
    return messages


# --- the server ----------------------------------------------------------------------------------

class _RateLimitedLog:
    """Logs a repeated warning at most once per `interval` seconds, with a count of the skipped ones."""

    def __init__(self, interval: float = 5.0):
        self.interval, self.last, self.skipped = interval, 0.0, 0

    def warning(self, msg: str, *args) -> None:
        now = time.monotonic()
        if now - self.last >= self.interval:
            more = f" ({self.skipped} similar since the last message)" if self.skipped else ""
            log.warning(msg + more, *args)
            self.last, self.skipped = now, 0
        else:
            self.skipped += 1


class _UdpServer(socketserver.UDPServer):
    allow_reuse_address = False
    max_packet_size = 65535

    def __init__(self, address: Target, osc: "OscServer"):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.osc = osc
        super().__init__(address, _RequestHandler)

    def handle_error(self, request, client_address):  # socketserver would print a traceback to stderr
        log.exception("unexpected error while serving an OSC packet from %s", client_address)


class _RequestHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, _ = self.request
        self.server.osc.handle_packet(data, self.client_address[:2])


class OscServer:
    """UDP OSC server. `handler` implements the COMMANDS' methods; each returns the replies for the
    sender as a list of (address, args)."""

    def __init__(self, host: str, port: int, handler: Any, reply_target: Target | None = None):
        try:
            self._server = _UdpServer((host, port), self)
        except OSError as exc:
            raise MixdaemonError(f"osc.port: cannot listen on UDP {host}:{port} ({exc.strerror or exc}); "
                                 "another daemon or program uses it, or the address is not this machine's") from None
        self.handler = handler
        self.reply_target = reply_target
        self._subscribers: dict[Target, None] = {}
        self._lock = threading.Lock()
        self._bad_packets = _RateLimitedLog()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="mixdaemon-osc", daemon=True)

    @property
    def address(self) -> Target:
        return self._server.server_address[:2]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def send(self, target: Target, address: str, args: list | tuple = ()) -> None:
        try:
            self._server.socket.sendto(encode(address, args), target)
        except Exception as exc:  # unreachable or odd target: notifications are best effort
            log.debug("could not send %s to %s: %s", address, target, exc)

    def subscribe(self, target: Target, on: bool = True) -> None:
        with self._lock:
            if on:
                self._subscribers[target] = None
                while len(self._subscribers) > 32:  # a bounded list: forget the oldest
                    self._subscribers.pop(next(iter(self._subscribers)))
            else:
                self._subscribers.pop(target, None)

    def notify(self, address: str, args: list | tuple, requester: Target | None = None,
               exclude: Target | None = None) -> None:
        """A job notification: to the job's requester, the configured target and the subscribers,
        each once (and not to `exclude`, which already has it as a reply)."""
        with self._lock:
            targets = dict.fromkeys([t for t in (requester, self.reply_target) if t] + list(self._subscribers))
        for target in targets:
            if target != exclude:
                self.send(target, address, args)

    def error(self, target: Target, job_id: int | str, reason: str) -> None:
        self.send(target, f"{PREFIX}/error", [job_id, " ".join(str(reason).split())[:MAX_REASON_CHARS]])

    def handle_packet(self, data: bytes, sender: Target) -> None:
        try:
            messages = decode(data)
        except Exception as exc:  # python-osc raises ParseError, but also IndexError, ValueError... on junk
            self._bad_packets.warning("malformed OSC packet from %s:%s (%d bytes): %s", sender[0], sender[1],
                                      len(data), exc)
            self.error(sender, NO_JOB, f"malformed OSC packet ({len(data)} bytes): {str(exc)[:200]}")
            return
        for message in messages:
            self.handle_message(message.address, list(message.params), sender)

    def handle_message(self, address: str, params: list, sender: Target) -> None:
        command = COMMANDS.get(address)
        try:
            if command is None:
                raise OscRequestError(f"{str(address)[:200]}: unknown address; the daemon answers "
                                      f"{', '.join(sorted(COMMANDS))}")
            args = check_arguments(command, params)
            replies = getattr(self.handler, command.method)(sender, *args)
        except MixdaemonError as exc:
            self._bad_packets.warning("request %s from %s:%s refused: %s", str(address)[:200], sender[0], sender[1], exc)
            self.error(sender, NO_JOB, str(exc))
            return
        except Exception as exc:
            log.exception("request %s from %s:%s failed", address, sender[0], sender[1])
            self.error(sender, NO_JOB, f"internal error: {type(exc).__name__}: {exc}")
            return
        for reply_address, reply_args in replies:
            self.send(sender, reply_address, reply_args)


# --- the client: `mixdaemon send` ----------------------------------------------------------------

class OscClient:
    """Sends requests from its own UDP port and reads what comes back to it."""

    def __init__(self, host: str, port: int):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.target = (host, port)
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0) if host in ("127.0.0.1", "::1", "localhost")
                       else ("", 0))

    def close(self) -> None:
        self.sock.close()

    def send(self, address: str, args: list | tuple = ()) -> None:
        self.sock.sendto(encode(address, args), self.target)

    def receive(self, timeout: float) -> tuple[str, list] | None:
        """The next message, or None after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data, _ = self.sock.recvfrom(65535)
            except socket.timeout:
                return None
            try:
                for message in decode(data):
                    return message.address, list(message.params)
            except Exception:
                continue  # not ours to judge; keep waiting
        return None


def _request_for(args) -> tuple[str, list]:
    cmd = args.send_command
    if cmd == "ping":
        return f"{PREFIX}/ping", []
    if cmd == "submit":
        files = [str(Path(p).absolute()) for p in args.stems]
        reference = str(Path(args.reference).absolute()) if args.reference else ""
        out = str(Path(args.out).absolute()) if args.out else ""
        if len(files) == 1:
            return f"{PREFIX}/submit", [files[0], reference, out]
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


def _print_message(address: str, params: list) -> None:
    print(" ".join([address, *(str(p) for p in params)]), flush=True)


def cmd_send(args) -> int:
    """Send one request, print the reply; with --wait (submit), follow the job to done/error.
    Exit status: 0 success, 1 an error reply, 3 no reply within --timeout."""
    host, port = args.host, args.port
    if args.config:
        from .config import load_config
        osc = load_config(args.config).osc
        host = host or ("127.0.0.1" if osc.host in ("0.0.0.0", "") else osc.host)
        port = port or osc.port
    client = OscClient(host or "127.0.0.1", port or DEFAULT_OSC_PORT)
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


def add_send_parser(subparsers) -> argparse.ArgumentParser:
    """`mixdaemon send COMMAND ...`: an OSC client for every daemon command."""
    p = subparsers.add_parser("send", help="send a command to a running daemon over OSC and print the reply",
                              description="Send one OSC request to `mixdaemon serve` and print the reply. "
                                          "Exit status: 0 ok, 1 error reply, 3 no reply in time.")
    p.add_argument("--host", help="daemon address (default: from --config, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="daemon OSC port (default: from --config, else 7700)")
    p.add_argument("--config", help="read the daemon's OSC host and port from this config.toml")
    p.add_argument("--timeout", type=float, default=5.0,
                   help="seconds to wait for a reply (with --wait: for each message)")
    cmds = p.add_subparsers(dest="send_command", required=True)
    cmds.add_parser("ping", help="check that the daemon answers")
    s = cmds.add_parser("submit", help="convert a stems folder, a file, or several files")
    s.add_argument("stems", nargs="+", help="a folder of stems, one file, or several stem files")
    s.add_argument("--reference", help="reference file or folder (default: the daemon's default reference)")
    s.add_argument("--out", help="output root (default: the daemon's output root)")
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
    p.set_defaults(func=_checked_send)
    return p


def _checked_send(args) -> int:
    if args.send_command == "reference" and not args.clear and not args.path:
        raise MixdaemonError("send reference: give a PATH, or --clear")
    return cmd_send(args)
