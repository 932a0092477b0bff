"""The daemon's OSC interface: address space, UDP server, replies and notifications, and the client
that `mixdaemon send` (cli/send.py) uses.

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

import logging
import socket
import socketserver
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket

from mixdaemon.errors import MixdaemonError

log = logging.getLogger("mixdaemon.osc")

PREFIX = "/mixdaemon"
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


# --- the client ----------------------------------------------------------------

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
