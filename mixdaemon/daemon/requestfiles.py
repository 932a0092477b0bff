"""Request files: the daemon's OSC commands for clients that cannot send UDP (a stock REAPER Lua
script has no sockets), as files in a folder.

A client writes `<name>.request` into the requests folder (`<state_dir>/requests`), atomically: it
writes another name first (one that does not end in `.request`, or starts with a dot) and renames
it. UTF-8, one `key=value` per line, and a last line `end`:

    mixdaemon-request 1
    address=/mixdaemon/submit
    arg=/home/me/Music/Song/mixdaemon/renders/Song-20261122-101500
    arg=/home/me/Music/Refs/ref.wav
    arg=/home/me/Music/Song/mixdaemon
    end

`address` is a request address of integrations/osc/ADDRESS_SPACE.md; each `arg` line is one
argument, in order, as a string (job ids too: the daemon reads "12" as job 12). In values a
backslash, newline, carriage return and tab are written as two characters each: `\\\\`, `\\n`,
`\\r`, `\\t`.

The `end` line is what makes a request whole: a file without it is still being written (by a
client that writes in place) and is left alone until it has it; one that stays without it for
`answer_seconds` is answered with an error. A request is read only when it is a regular file of at
most 64 KiB at its name in the folder: a link (wherever it leads), a FIFO, a device or a larger file
is refused with an error reply without reading it (and without blocking), so is a file that is not
UTF-8 or not in this format. Each request is taken once: served, or answered with one error reply,
never read again while its name stays (a client may reuse a name after removing the request).

The bridge, inside the daemon, hands each request to the daemon's command handler through the same
dispatch as a UDP request (daemon/osc.py), so a request file is served exactly like an OSC request
(the same checks, errors and replies), and keeps `<name>.reply` beside it up to date, rewritten
atomically (files.atomic_write) at every change:

    mixdaemon-reply 1
    state=running
    job_id=12
    percent=42.5
    stage=converting drums
    reply=/mixdaemon/progress
    reply_arg=12
    reply_arg=42.5
    reply_arg=converting drums

`state` is `sent` (waiting for the daemon), then for a submission `queued`, `running` and finally
`done` (with `manifest=`, the result's manifest.json), `error` or `cancelled`; other requests end in
`ok`, `warning` or `error`. `message=` holds the reason of an error or a warning; `reply=` and
`reply_arg=` the last OSC message that changed the state. A request that has a reply file has been
sent and is never sent again. The client deletes both files when it is done with them; finished
pairs older than a week are removed when the bridge starts. What a reply file says comes from the
daemon's own handling only: the bridge has no socket that a reply or a notification could come in
from, and a link planted at a reply's name is replaced, never written through.

A submitted job is followed through its notifications: the bridge hears every job notification in
the daemon's process, so it follows a job that someone else submitted first as well. After a
restart, an unfinished submission's job is asked for with /mixdaemon/status once and followed from
there (a pair the bridge cannot read then is reported in the log and skipped). Every message
reaches a reply file as a UDP client would receive it (encoded and decoded: float32 numbers, U+FFFD
for names that are not UTF-8). The REAPER scripts' OSC client
(integrations/reaper/mixdaemon_common.lua) turns the same messages into the same states.
"""
from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixdaemon.daemon.confine import read_small_file
from mixdaemon.daemon.jobstore import MANIFEST_NAME
from mixdaemon.daemon.osc import COMMANDS, PREFIX, LocalClient, check_arguments, decode, dispatch, encode
from mixdaemon.errors import MixdaemonError
from mixdaemon.files import atomic_write

log = logging.getLogger("mixdaemon.requestfiles")

REQUEST_SUFFIX = ".request"
REPLY_SUFFIX = ".reply"
REQUEST_HEADER = "mixdaemon-request 1"
REQUEST_END = "end"
REPLY_HEADER = "mixdaemon-reply 1"
MAX_REQUEST_BYTES = 64 * 1024  # a request names a few paths; a larger file is no request (nor a reply)
LOG_QUOTE_CHARS = 200  # what of a request's text a log line quotes
FINAL_STATES = ("done", "error", "cancelled", "ok", "warning")

_SUBMITS = (f"{PREFIX}/submit", f"{PREFIX}/submit/files", f"{PREFIX}/automix")
_STATUS, _PREVIEW, _CANCEL = f"{PREFIX}/status", f"{PREFIX}/preview", f"{PREFIX}/cancel"
_QUEUED = f"{PREFIX}/queued"
_FOLLOWS_JOB = (*_SUBMITS, _CANCEL)  # requests whose final answer may come long after

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_UNESCAPES = {"n": "\n", "r": "\r", "t": "\t"}


def escape(text: str) -> str:
    return "".join(_ESCAPES.get(c, c) for c in text)


def unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: _UNESCAPES.get(m.group(1), m.group(1)), text)


def quoted(text: str) -> str:
    """text for a log line: at most LOG_QUOTE_CHARS characters of it, and its length if cut."""
    return text if len(text) <= LOG_QUOTE_CHARS else f"{text[:LOG_QUOTE_CHARS]}… ({len(text)} characters)"


def being_written(text: str) -> bool:
    """Whether a request file's text may still grow into a request: it lacks the final `end` line,
    and what is there of its first line does not contradict the header (junk is refused at once)."""
    lines = text.rstrip("\n").split("\n")
    if lines[-1].rstrip("\r") == REQUEST_END:
        return False
    first = lines[0].rstrip("\r")
    return first == REQUEST_HEADER if len(lines) > 1 or text.endswith("\n") else REQUEST_HEADER.startswith(first)


def parse_request(text: str) -> tuple[str, list[str]]:
    """(address, args) of a request file's whole text; ValueError naming what is wrong."""
    lines = [line.rstrip("\r") for line in text.rstrip("\n").split("\n")]
    if lines[0].strip() != REQUEST_HEADER:
        raise ValueError(f"the first line must be '{REQUEST_HEADER}'")
    if len(lines) < 2 or lines[-1] != REQUEST_END:
        raise ValueError(f"the last line must be '{REQUEST_END}' (the request is not whole)")
    address, args = None, []
    for number, line in enumerate(lines[1:-1], start=2):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or key not in ("address", "arg"):
            raise ValueError(f"line {number} ({line[:60]!r}): expected address=..., arg=... or {REQUEST_END}")
        if key == "address":
            address = unescape(value)
        else:
            args.append(unescape(value))
    if not address:
        raise ValueError("no address= line")
    return address, args


def format_reply(status: dict) -> str:
    lines = [REPLY_HEADER]
    for key in ("state", "job_id", "percent", "stage", "message", "manifest", "reply"):
        if status.get(key) is not None:
            lines.append(f"{key}={escape(str(status[key]))}")
    lines += [f"reply_arg={escape(str(a))}" for a in status.get("reply_args", ())]
    return "\n".join(lines) + "\n"


def parse_reply(text: str) -> dict:
    """The status a reply file holds (what format_reply wrote; numbers come back as strings)."""
    status: dict = {"reply_args": []}
    for line in text.split("\n")[1:]:
        key, sep, value = line.partition("=")
        if sep:
            if key == "reply_arg":
                status["reply_args"].append(unescape(value))
            else:
                status[key] = unescape(value)
    return status


@dataclass(eq=False)  # each request is itself: two alike requests are two
class _Pending:
    """A request being served: who it is to the daemon, and what its reply file says."""

    name: str
    address: str
    sent: float
    client: LocalClient | None = None
    status: dict = field(default_factory=lambda: {"state": "sent"})


def apply_message(status: dict, request: str, address: str, params: list) -> dict:
    """The request's new status after a message from the daemon: a reply to it, a notification
    about its job, or the answer to the status question asked for it."""
    out = {**status, "reply": address, "reply_args": list(params)}
    submit = request in _SUBMITS
    if address == f"{PREFIX}/error":
        out.update(state="error", message=str(params[1]) if len(params) > 1 else "refused")
    elif address == f"{PREFIX}/queued":
        out.update(state="queued", job_id=params[0])
    elif address == f"{PREFIX}/progress":
        if not submit:
            return status  # a cancellation waits for the job's end, not its progress
        out.update(state="running", percent=params[1], stage=params[2])
    elif address == f"{PREFIX}/done":
        if submit:
            out.update(state="done", manifest=params[1], percent=100.0, stage="done")
        else:
            out.update(state="warning", message=f"job {params[0]} finished before it could be cancelled")
    elif address == f"{PREFIX}/cancelled":
        out.update(state="cancelled" if submit else "ok")
    elif address == f"{PREFIX}/warning":
        out.update(state="warning", message=str(params[1]) if len(params) > 1 else "")
    elif address == f"{PREFIX}/status/reply" and request != _STATUS:
        job_id, state, percent, stage, info = params[:5]
        if state == "done":
            return apply_message(status, request, f"{PREFIX}/done", [job_id, str(Path(info) / MANIFEST_NAME)])
        if state == "cancelled":
            return apply_message(status, request, f"{PREFIX}/cancelled", [job_id])
        if state == "error":
            out.update(state="error", message=info)
        elif submit:
            out.update(state=state, percent=percent, stage=stage)
        else:
            return status
    else:
        out.update(state="ok")
    return out


class RequestFolder:
    """Serves the request files in `folder` through `handler`, the daemon's command handler (see
    osc.dispatch). The daemon gives `notify` every job notification."""

    def __init__(self, folder: str | os.PathLike, handler: Any, *, scan_seconds: float = 0.2,
                 answer_seconds: float = 10.0, keep_seconds: float = 7 * 86400.0):
        self.folder = Path(folder)
        self.handler = handler
        self.scan_seconds = scan_seconds
        self.answer_seconds = answer_seconds  # a request with no answer (or no end) in this time fails
        self.keep_seconds = keep_seconds
        self._pending: list[_Pending] = []
        # What the daemon sends, from any of its threads, for the bridge's thread to apply in order:
        # (the request it is for, or None for a job notification; address; args).
        self._inbox: queue.SimpleQueue[tuple[_Pending | None, str, list]] = queue.SimpleQueue()
        # Requests served or refused in this run, by name: each is taken once, whatever happens to
        # its reply file (one that cannot be written must not make the request be read again).
        self._taken: set[str] = set()
        # Requests still being written: name → (hash of what is there, since when it is so).
        self._unfinished: dict[str, tuple[int, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mixdaemon-requests", daemon=True)

    # -- lifecycle --

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._resume()
        self._thread.start()
        log.info("serving request files in %s", self.folder)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._pending.clear()

    def notify(self, address: str, args: list) -> None:
        """A job notification (any job's: the bridge picks those of its requests' jobs)."""
        self._inbox.put((None, address, args))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._receive(self.scan_seconds)
                self._scan()
                self._check_unanswered()
            except Exception:  # a bug of the bridge's own: logged, and the bridge goes on
                log.exception("request files: unexpected error; continuing")
                self._stop.wait(self.scan_seconds)

    # -- files --

    def _request_path(self, name: str) -> Path:
        return self.folder / f"{name}{REQUEST_SUFFIX}"

    def _reply_path(self, name: str) -> Path:
        return self.folder / f"{name}{REPLY_SUFFIX}"

    def _write(self, name: str, status: dict) -> bool:
        """Write the reply file (atomically: a planted link at its name is replaced, never written
        through); False, logged, where it cannot be written."""
        try:
            with atomic_write(self._reply_path(name), "w", encoding="utf-8") as f:
                f.write(format_reply(status))
            return True
        except OSError as exc:
            log.error("request %s: cannot write its reply %s (%s); the request is dropped",
                      quoted(name), quoted(str(self._reply_path(name))), exc.strerror or exc)
            return False

    def _names(self, suffix: str) -> set[str]:
        try:
            return {e.name[:-len(suffix)] for e in os.scandir(self.folder)
                    if e.name.endswith(suffix) and not e.name.startswith(".")}
        except OSError:
            return set()

    def _read_request(self, name: str) -> tuple[str, list[str]] | None:
        """(address, args) of a whole request; None while it is still being written. Raises
        FileNotFoundError where it is gone, MixdaemonError or ValueError (one line) for a file that
        is not a request this daemon reads."""
        data = read_small_file(self._request_path(name), MAX_REQUEST_BYTES, "request file")
        text = data.decode("utf-8")
        if not being_written(text):
            self._unfinished.pop(name, None)
            return parse_request(text)
        now, seen = time.monotonic(), self._unfinished.get(name)
        if seen is None or seen[0] != hash(data):
            self._unfinished[name] = (hash(data), now)  # it grows: the writer is at work
        elif now - seen[1] > self.answer_seconds:
            self._unfinished.pop(name)
            raise ValueError(f"no final '{REQUEST_END}' line after {self.answer_seconds:g} s: write the request "
                             f"under another name and rename it to {name}{REQUEST_SUFFIX} once it is whole")
        return None

    def _scan(self) -> None:
        names = self._names(REQUEST_SUFFIX)
        self._taken &= names  # a name whose request was removed may come again
        for gone in self._unfinished.keys() - names:
            del self._unfinished[gone]
        for name in sorted(names - self._taken):
            if os.path.lexists(self._reply_path(name)):  # sent before, by an earlier run
                self._taken.add(name)
            else:
                self._take(name)

    def _take(self, name: str) -> None:
        """Serve a new request, or answer it with one error reply; either way only once."""
        path = self._request_path(name)
        try:
            request = self._read_request(name)
        except FileNotFoundError:
            return  # its client removed it since the listing
        except MixdaemonError as exc:  # a link, a FIFO, a device, too large: refused unread
            self._refuse(name, str(exc))
            return
        except ValueError as exc:  # not UTF-8, not in the format
            self._refuse(name, f"{path}: not a request file this daemon reads ({exc})")
            return
        if request is None:
            return
        self._taken.add(name)
        try:
            self._serve(name, *request)
        except Exception as exc:  # a bug: this request fails, once; the others are served
            log.exception("request %s: failed", quoted(name))
            self._pending = [p for p in self._pending if p.name != name]
            self._write(name, {"state": "error", "message": f"internal error: {type(exc).__name__}: {exc}"})

    def _refuse(self, name: str, message: str) -> None:
        self._taken.add(name)
        log.warning("request %s refused: %s", quoted(name), quoted(message))
        self._write(name, {"state": "error", "message": message})

    def _resume(self) -> None:
        """After a restart: follow the jobs of unfinished submissions again (by asking their
        status); fail other unanswered requests; remove finished pairs older than keep_seconds. A
        pair that cannot be read or resumed is reported and skipped: it never keeps the daemon from
        starting."""
        for name in sorted(self._names(REPLY_SUFFIX)):
            try:
                self._resume_one(name)
            except FileNotFoundError:
                continue  # a reply without its request: the client is done with it
            except (MixdaemonError, ValueError, OSError) as exc:
                log.warning("request %s: cannot resume it, skipped: %s", quoted(name), quoted(str(exc)))
            except Exception:  # a bug of the bridge's own: logged; the daemon starts all the same
                log.exception("request %s: cannot resume it, skipped", quoted(name))

    def _resume_one(self, name: str) -> None:
        reply = self._reply_path(name)
        status = parse_reply(read_small_file(reply, MAX_REQUEST_BYTES, "reply file").decode("utf-8"))
        if status.get("state") in FINAL_STATES:
            if time.time() - os.lstat(reply).st_mtime > self.keep_seconds:
                reply.unlink(missing_ok=True)
                self._request_path(name).unlink(missing_ok=True)
            return
        address, _ = self._read_request(name) or (None, None)
        job_id = _job_id(status.get("job_id"))
        if address in _FOLLOWS_JOB and job_id is not None:
            status["job_id"] = job_id
            pending = self._follow(_Pending(name, address, time.monotonic(), status=status))
            self._dispatch(pending, _STATUS, [job_id])
        else:
            status.update(state="error", message="the daemon stopped before answering; send the request again")
            self._write(name, status)

    # -- serving --

    def _follow(self, pending: _Pending) -> _Pending:
        """Make the request a client of the daemon, whose later replies come to the inbox."""
        pending.client = LocalClient(pending.name, lambda address, args: self._inbox.put((pending, address, args)))
        self._pending.append(pending)
        return pending

    def _serve(self, name: str, address: str, args: list[str]) -> None:
        pending = _Pending(name, address, time.monotonic())
        if address == _CANCEL:
            pending.status["job_id"] = _job_id(args[0] if args else None)  # its end is confirmed later
        if not self._write(name, pending.status):  # from now on it counts as sent, even after a restart
            return
        self._follow(pending)
        log.info("request %s: %s %s", quoted(name), quoted(address), quoted(" ".join(args)))
        self._dispatch(pending, address, args)

    def _dispatch(self, pending: _Pending, address: str, args: list) -> None:
        # Through the OSC encoding and back, as a UDP request arrives (an embedded NUL ends a string,
        # odd characters become U+FFFD), so the handler sees the same request either way.
        try:
            (message,) = decode(encode(address, args))
            address, args = message.address, list(message.params)
        except Exception:  # not an OSC address ("submit" without the slash): dispatch names the problem
            pass
        status = pending.status
        for reply_address, reply_args in dispatch(self.handler, address, args, pending.client):
            status = self._applied(pending, status, reply_address, reply_args)
        self._update(pending, status)

    def _applied(self, pending: _Pending, status: dict, address: str, args: list) -> dict:
        """`status` after one message, taken as a UDP client would receive it."""
        for message in decode(encode(address, args)):
            status = apply_message(status, pending.address, message.address, list(message.params))
        return status

    def _receive(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for what the daemon sends and apply it to the requests."""
        try:
            item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            target, address, args = item
            if target is not None:
                if target in self._pending:
                    self._update(target, self._applied(target, target.status, address, args))
            elif args and address != _QUEUED:  # a submission has its /queued as its reply, first
                for pending in [p for p in self._pending if p.status.get("job_id") == args[0]]:
                    self._update(pending, self._applied(pending, pending.status, address, args))
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _update(self, pending: _Pending, status: dict) -> None:
        if status == pending.status:
            return
        pending.status = status
        if not os.path.lexists(self._request_path(pending.name)):  # the client gave up and removed it
            self._pending.remove(pending)
            return
        if not self._write(pending.name, status) or status["state"] in FINAL_STATES:
            self._pending.remove(pending)

    def _check_unanswered(self) -> None:
        now = time.monotonic()
        for pending in list(self._pending):
            if pending.address in _FOLLOWS_JOB and pending.status.get("job_id") is not None:
                continue  # a job's end may be hours away
            # A preview answers when playback has started, after loading the audio: longer.
            patience = self.answer_seconds * (3 if pending.address == _PREVIEW else 1)
            if now - pending.sent > patience:
                self._update(pending, {**pending.status, "state": "error",
                                       "message": f"the daemon did not answer {pending.address} within {patience:g} s"})


def _job_id(value: Any) -> int | None:
    """A job id as the daemon reads one in a request (osc's rule for a job argument), or None."""
    try:
        return check_arguments(COMMANDS[_CANCEL], [value])[0]
    except MixdaemonError:
        return None
