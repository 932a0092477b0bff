"""Request files: the daemon's OSC commands for clients that cannot send UDP (a stock REAPER Lua
script has no sockets), as files in a folder.

A client writes `<name>.request` into the requests folder (`<state_dir>/requests`), atomically: it
writes another name first and renames it. UTF-8, one `key=value` per line:

    mixdaemon-request 1
    address=/mixdaemon/submit
    arg=/home/me/Music/Song/mixdaemon/renders/Song-20261122-101500
    arg=/home/me/Music/Refs/ref.wav
    arg=/home/me/Music/Song/mixdaemon

`address` is a request address of integrations/osc/ADDRESS_SPACE.md; each `arg` line is one
argument, in order, as a string (job ids too: the daemon reads "12" as job 12). In values a
backslash, newline, carriage return and tab are written as two characters each: `\\\\`, `\\n`,
`\\r`, `\\t`.

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
pairs older than a week are removed when the bridge starts.

A submitted job is followed through its notifications: the bridge hears every job notification in
the daemon's process, so it follows a job that someone else submitted first as well. After a
restart, an unfinished submission's job is asked for with /mixdaemon/status once and followed from
there. Every message reaches a reply file as a UDP client would receive it (encoded and decoded:
float32 numbers, U+FFFD for names that are not UTF-8). The REAPER scripts' OSC client
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

from mixdaemon.daemon.jobstore import MANIFEST_NAME
from mixdaemon.daemon.osc import PREFIX, LocalClient, decode, dispatch, encode
from mixdaemon.files import atomic_write

log = logging.getLogger("mixdaemon.requestfiles")

REQUEST_SUFFIX = ".request"
REPLY_SUFFIX = ".reply"
REQUEST_HEADER = "mixdaemon-request 1"
REPLY_HEADER = "mixdaemon-reply 1"
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


def parse_request(text: str) -> tuple[str, list[str]]:
    """(address, args) of a request file's text; ValueError naming what is wrong."""
    lines = [line.rstrip("\r") for line in text.split("\n")]
    if lines[0].strip() != REQUEST_HEADER:
        raise ValueError(f"the first line must be '{REQUEST_HEADER}'")
    address, args = None, []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or key not in ("address", "arg"):
            raise ValueError(f"line {number} ({line[:60]!r}): expected address=... or arg=...")
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
        self.answer_seconds = answer_seconds  # a request with no answer in this time fails
        self.keep_seconds = keep_seconds
        self._pending: list[_Pending] = []
        # What the daemon sends, from any of its threads, for the bridge's thread to apply in order:
        # (the request it is for, or None for a job notification; address; args).
        self._inbox: queue.SimpleQueue[tuple[_Pending | None, str, list]] = queue.SimpleQueue()
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
                for name in self._new_requests():
                    self._serve(name)
                self._check_unanswered()
            except Exception:  # one odd file or message must not stop the bridge
                log.exception("request files: unexpected error; continuing")
                self._stop.wait(self.scan_seconds)

    # -- files --

    def _request_path(self, name: str) -> Path:
        return self.folder / f"{name}{REQUEST_SUFFIX}"

    def _reply_path(self, name: str) -> Path:
        return self.folder / f"{name}{REPLY_SUFFIX}"

    def _write(self, name: str, status: dict) -> None:
        with atomic_write(self._reply_path(name), "w", encoding="utf-8") as f:
            f.write(format_reply(status))

    def _new_requests(self) -> list[str]:
        try:
            names = sorted(e.name[:-len(REQUEST_SUFFIX)] for e in os.scandir(self.folder)
                           if e.name.endswith(REQUEST_SUFFIX) and not e.name.startswith("."))
        except OSError:
            return []
        return [n for n in names if not self._reply_path(n).exists()]

    def _resume(self) -> None:
        """After a restart: follow the jobs of unfinished submissions again (by asking their
        status); fail other unanswered requests; remove finished pairs older than keep_seconds."""
        now = time.time()
        for reply in sorted(self.folder.glob(f"*{REPLY_SUFFIX}")):
            name = reply.name[:-len(REPLY_SUFFIX)]
            try:
                status = parse_reply(reply.read_text(encoding="utf-8"))
                address, args = parse_request(self._request_path(name).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if status.get("state") in FINAL_STATES:
                if now - reply.stat().st_mtime > self.keep_seconds:
                    reply.unlink(missing_ok=True)
                    self._request_path(name).unlink(missing_ok=True)
            elif address in _FOLLOWS_JOB and status.get("job_id", "").isdigit():
                status["job_id"] = int(status["job_id"])
                pending = self._follow(_Pending(name, address, time.monotonic(), status=status))
                self._dispatch(pending, _STATUS, [status["job_id"]])
            else:
                status.update(state="error", message="the daemon stopped before answering; send the request again")
                self._write(name, status)

    # -- serving --

    def _follow(self, pending: _Pending) -> _Pending:
        """Make the request a client of the daemon, whose later replies come to the inbox."""
        pending.client = LocalClient(pending.name, lambda address, args: self._inbox.put((pending, address, args)))
        self._pending.append(pending)
        return pending

    def _serve(self, name: str) -> None:
        path = self._request_path(name)
        try:
            address, args = parse_request(path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            self._write(name, {"state": "error", "message": f"{path}: not a request file this daemon reads ({exc})"})
            return
        pending = self._follow(_Pending(name, address, time.monotonic()))
        if address == _CANCEL and args and args[0].strip().isdigit():
            pending.status["job_id"] = int(args[0])  # a running job's cancellation is confirmed later
        self._write(name, pending.status)  # from now on it counts as sent, even after a restart
        log.info("request %s: %s %s", name, address, " ".join(args))
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
        if not self._request_path(pending.name).exists():  # the client gave up and removed it
            self._pending.remove(pending)
            return
        self._write(pending.name, status)
        if status["state"] in FINAL_STATES:
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
