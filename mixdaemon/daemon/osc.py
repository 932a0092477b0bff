"""The daemon's OSC interface: address space, request dispatch, UDP server, replies and
notifications, and a client for programs (`mixdaemon send`, cli/send.py, is one).

The address space is documented in integrations/osc/ADDRESS_SPACE.md; COMMANDS below is its
machine-readable form (`dispatch` checks every request against it). In short: requests go to
/mixdaemon/<command>; the reply goes back to the sender's address and port, and to the configured
reply target (for clients that cannot receive on the port they send from); job notifications
(/mixdaemon/queued, /progress, /done, /error, /cancelled) go to the client that submitted the job,
to the configured reply target and to subscribers. Anything wrong with a request (unparseable
packet, unknown address, wrong argument types, a path outside the allowed roots) is answered with
/mixdaemon/error "-" <reason>; the server itself never stops on a bad packet.

Requests also come from inside the daemon's process: the request-file bridge
(daemon/requestfiles.py) serves each request file through the same `dispatch` as a UDP request,
as a LocalClient whose messages are handed over in-process rather than sent.

Bundles are accepted and their messages handled in order; their time tags are ignored (a request
runs when it arrives).

Requests that read input files (submit, submit/files, automix, reference: Command.reads_files) are
served off the receive thread, one at a time in the order they came, by the server's file-request
thread: hashing a large bounce takes seconds, and ping, status and cancel are answered meanwhile. A
packet holding one of them is served whole there, its messages in order.
"""
from __future__ import annotations

import logging
import queue
import re
import socket
import socketserver
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket

from mixdaemon import defaults
from mixdaemon.errors import MixdaemonError

log = logging.getLogger("mixdaemon.osc")

PREFIX = "/mixdaemon"
NO_JOB = "-"  # the job-id argument of an error that belongs to no job
MAX_JOB_ID = 2**31 - 1  # an OSC int32; larger numbers (int64, floats, digit strings) are no job
MAX_REASON_CHARS = 1500  # keeps every reply well inside one UDP datagram
MAX_WAITING_FILE_REQUESTS = 256  # packets of file-reading requests waiting; beyond, a "busy" error reply
Target = tuple[str, int]  # a UDP client: (host, port)
Message = tuple[str, list]  # (address, arguments)


class OscRequestError(MixdaemonError):
    """A request that cannot be served as sent (wrong arguments, unknown address)."""


class LocalClient:
    """A client inside the daemon's process (a request file's request): what the daemon sends it,
    its later replies too, is handed to `deliver(address, args)` rather than sent over UDP.
    Compared by identity: two requests of the same name are two clients."""

    def __init__(self, name: str, deliver: Callable[[str, list], None]):
        self.name = name
        self.deliver = deliver

    def __repr__(self) -> str:
        return f"request file {self.name}"


Sender = Target | LocalClient


def describe(sender: Sender) -> str:
    """The sender for a log line: host:port, or the request file."""
    return repr(sender) if isinstance(sender, LocalClient) else f"{sender[0]}:{sender[1]}"


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
    reads_files: bool = False  # lists and hashes input files: served on the file-request thread


COMMANDS: dict[str, Command] = {c.address: c for c in (
    Command(f"{PREFIX}/ping", "cmd_ping", (), (f"{PREFIX}/pong",), "is the daemon there; replies its version"),
    Command(f"{PREFIX}/submit", "cmd_submit",
            (Arg("stems_path", "text"), Arg("reference_path", "text", optional=True), Arg("out_root", "text", optional=True),
             Arg("options", "text", optional=True)),
            (f"{PREFIX}/queued",),
            "convert a stems folder or one file; \"\" or no reference/out: the defaults; options: "
            "\"amount=0.5 match=level,eq stem_amount.vocals=0.3\" (see parse_options)", reads_files=True),
    Command(f"{PREFIX}/submit/files", "cmd_submit_files",
            (Arg("reference_path", "text"), Arg("out_root", "text"), Arg("stem_file", "text", variadic=True)),
            (f"{PREFIX}/queued",), "convert a list of stem files (reference and out may be \"\")", reads_files=True),
    Command(f"{PREFIX}/automix", "cmd_automix", (Arg("stems_path", "text"), Arg("out_root", "text", optional=True)),
            (f"{PREFIX}/queued",), "mix a stems folder (or one stem file) with the automix model; no reference",
            reads_files=True),
    Command(f"{PREFIX}/reference", "cmd_reference",
            (Arg("path_or_folder", "text"), Arg("path", "text", optional=True)),
            (f"{PREFIX}/reference/ok",),
            "one argument: set the default reference (\"\" clears); two: the reference for a watch folder",
            reads_files=True),
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
        elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
            number = int(value.strip())  # isdigit alone takes "²", which int() refuses
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


# --- a job's options ---------------------------------------------------------------------------

STEM_AMOUNT_PREFIX = "stem_amount."


def parse_options(text: str) -> dict:
    """The options argument of /mixdaemon/submit: `key=value` items separated by spaces or
    semicolons, of `amount=A` (0..1), `match=ASPECT,ASPECT...` and `stem_amount.STEM=A`:

        "amount=0.5 match=level,eq stem_amount.vocals=0.3"
        → {"amount": "0.5", "match": ["level", "eq"], "stem_amount": {"vocals": "0.3"}}

    The values stay text here; the daemon checks them as it checks config.toml's [transfer]. Only
    these keys: a request may choose how far and what moves, not which files the daemon reads."""
    options: dict = {}
    for item in re.split(r"[\s;]+", text.strip()):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise OscRequestError(f"options: {item[:80]!r}: give key=value, e.g. amount=0.5")
        if key == "amount":
            options["amount"] = value
        elif key == "match":
            options["match"] = [a for a in value.split(",") if a]
        elif key.startswith(STEM_AMOUNT_PREFIX) and len(key) > len(STEM_AMOUNT_PREFIX):
            options.setdefault("stem_amount", {})[key[len(STEM_AMOUNT_PREFIX):]] = value
        else:
            raise OscRequestError(f"options: unknown option {key[:80]!r}; use amount=A, match=ASPECT,... "
                                  f"or {STEM_AMOUNT_PREFIX}STEM=A")
    return options


def format_options(options: dict) -> str:
    """The options argument for parse_options' dict (what `mixdaemon send submit --amount` sends)."""
    items = [f"amount={options['amount']}"] if "amount" in options else []
    if "match" in options:
        items.append(f"match={','.join(options['match'])}")
    items += [f"{STEM_AMOUNT_PREFIX}{stem}={amount}" for stem, amount in options.get("stem_amount", {}).items()]
    return " ".join(items)


# --- encoding ------------------------------------------------------------------------------------

def printable(text: str) -> str:
    """text as valid UTF-8, for a reply or the job database: file names that are not valid UTF-8
    reach Python as lone surrogates; they are shown as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def encode(address: str, args: list | tuple = ()) -> bytes:
    builder = OscMessageBuilder(address=address)
    for value in args:
        if isinstance(value, Path):
            value = str(value)
        if isinstance(value, str):
            value = printable(value)
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


def error_reply(job_id: int | str, reason: str) -> Message:
    """/mixdaemon/error job_id reason, the reason on one line and short enough for one datagram."""
    return f"{PREFIX}/error", [job_id, " ".join(str(reason).split())[:MAX_REASON_CHARS]]


# --- serving a request ---------------------------------------------------------------------------

class _RateLimitedLog:
    """Logs a repeated warning at most once per `interval` seconds, with a count of the skipped ones."""

    def __init__(self, interval: float = 5.0):
        self.interval, self.last, self.skipped = interval, 0.0, 0
        self._lock = threading.Lock()

    def warning(self, msg: str, *args) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self.last < self.interval:
                self.skipped += 1
                return
            more = f" ({self.skipped} similar since the last message)" if self.skipped else ""
            self.last, self.skipped = now, 0
        log.warning(msg + more, *args)


# Refused requests and malformed packets, from every sender: a flood of them must not flood the log.
_refusals = _RateLimitedLog()


def dispatch(handler: Any, address: str, params: list, sender: Sender) -> list[Message]:
    """Serve one request: check it against COMMANDS and call the handler's method for it
    (method(sender, *args) → the replies). Returns the replies for the sender, or one
    /mixdaemon/error "-" naming what was wrong. The UDP server and the request-file bridge both
    serve requests through here, so a request is checked, refused and answered alike however it
    came."""
    command = COMMANDS.get(address)
    try:
        if command is None:
            raise OscRequestError(f"{str(address)[:200]}: unknown address; the daemon answers "
                                  f"{', '.join(sorted(COMMANDS))}")
        args = check_arguments(command, params)
        return list(getattr(handler, command.method)(sender, *args))
    except MixdaemonError as exc:
        _refusals.warning("request %s from %s refused: %s", str(address)[:200], describe(sender), exc)
        return [error_reply(NO_JOB, str(exc))]
    except Exception as exc:
        log.exception("request %s from %s failed", address, describe(sender))
        return [error_reply(NO_JOB, f"internal error: {type(exc).__name__}: {exc}")]


# --- the server ----------------------------------------------------------------------------------

def _resolved(target: Target, family: int) -> Target:
    """(host, port) with the host as the address packets come from ("localhost" → "127.0.0.1"),
    so that a reply target that is also the sender gets each reply once."""
    try:
        return socket.getaddrinfo(target[0], target[1], family=family, type=socket.SOCK_DGRAM)[0][4][:2]
    except OSError as exc:
        raise MixdaemonError(f"osc.reply_host: cannot resolve {target[0]!r} ({exc.strerror or exc})") from None


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
    """UDP OSC server. `handler` implements the COMMANDS' methods (see `dispatch`). `listeners` are
    in-process sinks, listener(address, args), that hear every job notification (the request-file
    bridge follows its jobs so)."""

    def __init__(self, host: str, port: int, handler: Any, reply_target: Target | None = None,
                 listeners: Iterable[Callable[[str, list], None]] = ()):
        try:
            self._server = _UdpServer((host, port), self)
        except OSError as exc:
            raise MixdaemonError(f"osc.port: cannot listen on UDP {host}:{port} ({exc.strerror or exc}); "
                                 "another daemon or program uses it, or the address is not this machine's") from None
        self.handler = handler
        self.reply_target = _resolved(reply_target, self._server.address_family) if reply_target else None
        self.listeners = list(listeners)
        self._subscribers: dict[Sender, None] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="mixdaemon-osc", daemon=True)
        # Packets of file-reading requests, (messages, sender), for the file-request thread; None stops it.
        self._file_requests: queue.Queue = queue.Queue(maxsize=MAX_WAITING_FILE_REQUESTS)
        self._file_thread = threading.Thread(target=self._serve_file_requests, name="mixdaemon-osc-files",
                                             daemon=True)

    @property
    def address(self) -> Target:
        return self._server.server_address[:2]

    def start(self) -> None:
        self._file_thread.start()
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop receiving; the file request being served may finish (up to `timeout` seconds), those
        still waiting are answered with an error."""
        if self._thread.is_alive():
            self._server.shutdown()
        if self._file_thread.is_alive():
            while True:
                try:
                    _, sender = self._file_requests.get_nowait()
                except queue.Empty:
                    break
                self.error(sender, NO_JOB, "the daemon is stopping; the request was not served")
            self._file_requests.put(None)
            self._file_thread.join(timeout)
        self._server.server_close()

    def send(self, target: Sender, address: str, args: list | tuple = ()) -> None:
        if isinstance(target, LocalClient):
            target.deliver(address, list(args))
            return
        try:
            self._server.socket.sendto(encode(address, args), target)
        except Exception as exc:  # unreachable or odd target: notifications are best effort
            log.debug("could not send %s to %s: %s", address, target, exc)

    def _reply_targets(self, sender: Sender) -> list[Sender]:
        """Where a reply to `sender` goes: to it, and, for a UDP client, to the configured reply
        target too, so that a client that cannot receive on the port it sends from (liblo's
        oscsend, python-osc's SimpleUDPClient) gets every reply there."""
        copy = self.reply_target if self.reply_target and not isinstance(sender, LocalClient) else None
        return list(dict.fromkeys([sender, *([copy] if copy else [])]))

    def reply(self, sender: Sender, address: str, args: list | tuple = ()) -> None:
        """A reply to a request of `sender` (see _reply_targets)."""
        for target in self._reply_targets(sender):
            self.send(target, address, args)

    def subscribe(self, target: Sender, on: bool = True) -> None:
        with self._lock:
            if on:
                self._subscribers[target] = None
                while len(self._subscribers) > 32:  # a bounded list: forget the oldest
                    self._subscribers.pop(next(iter(self._subscribers)))
            else:
                self._subscribers.pop(target, None)

    def notify(self, address: str, args: list | tuple, requester: Target | None = None,
               exclude: Sender | None = None) -> None:
        """A job notification: to the job's requester, the configured target and the subscribers,
        each once (and not to `exclude` nor where its reply went: they already have it as a reply);
        and to the listeners."""
        with self._lock:
            targets = dict.fromkeys([t for t in (requester, self.reply_target) if t] + list(self._subscribers))
        replied = self._reply_targets(exclude) if exclude is not None else []
        for target in targets:
            if target not in replied:
                self.send(target, address, args)
        for listener in self.listeners:
            listener(address, list(args))

    def error(self, sender: Sender, job_id: int | str, reason: str) -> None:
        """An error reply to a request of `sender`."""
        self.reply(sender, *error_reply(job_id, reason))

    def handle_packet(self, data: bytes, sender: Target) -> None:
        try:
            messages = decode(data)
        except Exception as exc:  # python-osc raises ParseError, but also IndexError, ValueError... on junk
            _refusals.warning("malformed OSC packet from %s (%d bytes): %s", describe(sender), len(data), exc)
            self.error(sender, NO_JOB, f"malformed OSC packet ({len(data)} bytes): {str(exc)[:200]}")
            return
        if any(getattr(COMMANDS.get(m.address), "reads_files", False) for m in messages):
            try:
                self._file_requests.put_nowait((messages, sender))
            except queue.Full:
                _refusals.warning("request from %s refused: %d file requests are waiting", describe(sender),
                                  MAX_WAITING_FILE_REQUESTS)
                self.error(sender, NO_JOB, f"busy: {MAX_WAITING_FILE_REQUESTS} requests that read files are "
                                           "waiting already; send it again shortly")
            return
        self._serve(messages, sender)

    def _serve(self, messages: list[OscMessage], sender: Target) -> None:
        for message in messages:
            for reply_address, reply_args in dispatch(self.handler, message.address, list(message.params), sender):
                self.reply(sender, reply_address, reply_args)

    def _serve_file_requests(self) -> None:
        while (item := self._file_requests.get()) is not None:
            try:
                self._serve(*item)
            except Exception:  # dispatch answers every request's failure; this thread must not die of a send
                log.exception("serving a file request from %s failed", describe(item[1]))


# --- the client ----------------------------------------------------------------------------------

class OscClient:
    """A UDP client of the daemon, for programs and scripts: it sends requests from a port of its
    own and reads what comes back to that port — the replies, and the notifications of the jobs it
    submitted (of every job once it subscribed, or when the daemon's `[osc] reply_port` is its
    `port`).

        client = OscClient("127.0.0.1", 7700)
        reply, (job_id, folder) = client.request("/mixdaemon/submit", ["/music/Song", "/music/ref.wav"])
        end = client.wait_for(lambda address, args: address in ("/mixdaemon/done", "/mixdaemon/error")
                              and args[0] == job_id, timeout=600)

    Messages are read in the order they came. `receive` takes the next one; `wait_for` and
    `request` take the first that they wait for and leave the ones before it unread, for later
    reads (at most `keep`: beyond that the oldest unread are dropped), so a notification that
    arrives while waiting for a reply is not lost. `target` (the daemon) may be changed, e.g. for a
    daemon restarted on another port."""

    def __init__(self, host: str = defaults.OSC_HOST, port: int = defaults.OSC_PORT, keep: int = 10000):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.target: Target = (host, port)
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)  # room for bursts of notifications
        self.sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0) if host in ("127.0.0.1", "::1", "localhost")
                       else ("", 0))
        self._unread: deque[Message] = deque(maxlen=keep)

    @property
    def port(self) -> int:
        """The client's own UDP port, where replies and notifications arrive."""
        return self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()

    def send(self, address: str, args: list | tuple = ()) -> None:
        self.sock.sendto(encode(address, args), self.target)

    def send_packet(self, data: bytes) -> None:
        """Send bytes as they are (a bundle built elsewhere, or a test of the daemon's parser)."""
        self.sock.sendto(data, self.target)

    def receive(self, timeout: float) -> Message | None:
        """The next message, or None if none came within `timeout` seconds (0: only one already here)."""
        return self.wait_for(lambda address, args: True, timeout)

    def wait_for(self, predicate: Callable[[str, list], bool], timeout: float) -> Message | None:
        """The first message, unread or arriving within `timeout` seconds, for which
        predicate(address, args) is true; None if none did. The others stay unread."""
        for i, (address, args) in enumerate(self._unread):
            if predicate(address, args):
                del self._unread[i]
                return address, args
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.0))
            try:
                data = self.sock.recv(65535)
            except (socket.timeout, BlockingIOError):
                return None
            try:
                messages = [(m.address, list(m.params)) for m in decode(data)]
            except Exception:
                continue  # not an OSC packet: not ours to judge
            for k, (address, args) in enumerate(messages):
                if predicate(address, args):
                    self._unread.extend(messages[k + 1:])
                    return address, args
                self._unread.append((address, args))

    def request(self, address: str, args: list | tuple = (), timeout: float = 5.0) -> Message | None:
        """Send a request and wait for its reply: the first message that is one of the command's
        replies (COMMANDS), or an error that belongs to no job or to the job the request names.
        None if none came within `timeout` seconds."""
        command = COMMANDS.get(address)
        replies = command.replies if command is not None else ()
        names_job = command is not None and command.args and command.args[0].kind == "job" and args
        errors_for = (NO_JOB, args[0]) if names_job else (NO_JOB,)

        def is_reply(reply: str, values: list) -> bool:
            return reply in replies or (reply == f"{PREFIX}/error" and bool(values) and values[0] in errors_for)

        self.send(address, args)
        return self.wait_for(is_reply, timeout)
