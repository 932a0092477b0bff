"""Helpers for the daemon tests (no tests here): generated stems, WAV bytes, a TOML writer, a real
daemon subprocess, and the package's OSC client with a record of every message it receives."""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from mixdaemon.daemon.osc import OscClient

REPO = Path(__file__).resolve().parents[2]
STEMS = ("drums", "bass", "other", "vocals")
# The notifications the tests wait for.
DONE, ERROR, QUEUED, PROGRESS = "/mixdaemon/done", "/mixdaemon/error", "/mixdaemon/queued", "/mixdaemon/progress"
RESULT_FILES = {"drums.wav", "bass.wav", "other.wav", "vocals.wav", "mixture.wav", "manifest.json", "report.png"}


def wav_bytes(samples: np.ndarray, sr: int = 44100, subtype: str = "PCM_24", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, sr, subtype=subtype, format=fmt)
    return buf.getvalue()


def song_stems(seconds: float, seed: int) -> dict[str, np.ndarray]:
    from mixdaemon.audio.examples import synth_song
    return synth_song(seconds, seed=seed)


def write_stems(folder: Path, seconds: float = 3.0, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, x in song_stems(seconds, seed).items():
        p = folder / f"{name}.wav"
        p.write_bytes(wav_bytes(x))
        paths.append(p)
    return paths


def write_in_pieces(folder: Path, files: dict[str, bytes], pieces: int, pause: float, between=lambda: None) -> float:
    """Write the files as a slow DAW bounce does: all of them a piece at a time, `pieces` equal
    pieces each, pausing `pause` seconds (and calling `between()`) between pieces. Returns the
    time (monotonic) of the last byte."""
    handles = {name: open(folder / name, "wb") for name in files}
    try:
        for k in range(pieces):
            for name, data in files.items():
                size = len(data) // pieces + 1
                handles[name].write(data[k * size:(k + 1) * size])
                handles[name].flush()
            last_byte = time.monotonic()
            if k < pieces - 1:
                time.sleep(pause)
                between()
    finally:
        for handle in handles.values():
            handle.close()
    return last_byte


def make_reference(folder: Path, seconds: float = 3.0) -> Path:
    """A folder of reference stems in a distinct style (the project's example generator)."""
    from mixdaemon.audio.examples import make_example
    _, reference = make_example(folder, seconds=seconds)
    return reference


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def write_toml(path: Path, data: dict) -> Path:
    """Top-level scalars, [section]s and [[watch]] tables: enough for the daemon's config."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict) and k != "watch"]
    for w in data.get("watch", []):
        lines.append("[[watch]]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in w.items()]
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(f"[{k}]")
            lines += [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def daemon_config(tmp: Path, reply_port: int | None, **extra) -> dict:
    """A test configuration: everything under tmp, OS-chosen OSC port, short settle time."""
    (tmp / "watch").mkdir(parents=True, exist_ok=True)
    cfg = {"settle_seconds": 0.3, "stale_seconds": 2.0, "state_dir": str(tmp / "state"),
           "watch": [{"path": str(tmp / "watch")}],
           "output": {"root": str(tmp / "out")},
           "osc": {"host": "127.0.0.1", "port": 0}}
    if reply_port is not None:
        cfg["osc"]["reply_port"] = reply_port
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k].update(v)
        else:
            cfg[k] = v
    return cfg


class DaemonProcess:
    """`python -m mixdaemon serve --config ...` (the user's `mixdaemon serve`) as a real subprocess."""

    def __init__(self, config_path: Path, state_dir: Path, env: dict | None = None):
        self.config_path, self.state_dir = config_path, state_dir
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.stderr_path = state_dir.parent / "daemon.stderr"

    def spawn(self) -> "DaemonProcess":
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "mixdaemon", "serve", "--config", str(self.config_path)],
                                         cwd=REPO, env=self.env, stdout=err, stderr=err)
        return self

    def start(self, timeout: float = 60.0) -> "DaemonProcess":
        """Spawn and wait until it serves (its daemon.json names its pid)."""
        self.spawn()
        info_path = self.state_dir / "daemon.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}: {self.stderr_path.read_text()[-3000:]}")
            try:
                info = json.loads(info_path.read_text())
                if info["pid"] == self.proc.pid:
                    self.port = info["osc_port"]
                    return self
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        raise RuntimeError("daemon did not start in time")

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 20.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def log(self) -> str:
        path = self.state_dir / "mixdaemon.log"
        return path.read_text() if path.exists() else ""


class BackgroundLoop:
    """A daemon thread running the subclass's `_run` until `_stop` is set (by `_end`)."""

    def _start(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _end(self) -> None:
        self._stop.set()
        self._thread.join(2)


class OscListener(BackgroundLoop):
    """A daemon.osc.OscClient whose every message a background thread records with its arrival
    time, so that a test can look back at all that came (`messages`, `of`) and wait for a message
    from a point on (`wait_for`). Its port is usually the daemon's reply_port."""

    def __init__(self):
        self.client = OscClient()
        self.port = self.client.port
        self.messages: list[tuple[float, str, list]] = []
        self._cond = threading.Condition()
        self._start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                message = self.client.receive(0.2)
            except OSError:  # closed
                return
            if message is not None:
                with self._cond:
                    self.messages.append((time.monotonic(), *message))
                    self._cond.notify_all()

    def send(self, target: tuple[str, int], address: str, *args) -> None:
        self.client.target = target
        self.client.send(address, args)

    def send_raw(self, target: tuple[str, int], data: bytes) -> None:
        self.client.target = target
        self.client.send_packet(data)

    def wait_for(self, predicate, timeout: float = 30.0, start: int = 0):
        """The first recorded (time, address, args) from index `start` on that satisfies
        predicate(address, args); None after timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for entry in self.messages[start:]:
                    if predicate(entry[1], entry[2]):
                        return entry
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def of(self, address: str) -> list[list]:
        with self._cond:
            return [args for _, a, args in self.messages if a == address]

    def close(self) -> None:
        self._end()
        self.client.close()


def send_cli(port: int, *args, timeout: float = 5.0) -> tuple[int, str, str]:
    """`mixdaemon send --port PORT ARGS...` run in this process (the real client over real UDP; a
    subprocess would spend seconds importing): (exit status, stdout, stderr)."""
    from mixdaemon.cli.main import build_parser
    argv = ["send", "--port", str(port), "--timeout", str(timeout), *args]
    parsed = build_parser(argv).parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = parsed.func(parsed)
    return status, out.getvalue(), err.getvalue()


def request(listener: OscListener, target, address: str, *args, reply=None, timeout: float = 10.0):
    """Send a request and wait for its reply (the first message to `reply`, or any error)."""
    start = len(listener.messages)
    listener.send(target, address, *args)
    got = listener.wait_for(lambda a, _: a == "/mixdaemon/error" or (reply is None or a == reply), timeout, start)
    assert got is not None, f"no reply to {address} {args}"
    return got[1], got[2]


class OutputMonitor(BackgroundLoop):
    """Polls an output root every few milliseconds and records every visible entry that is not a
    complete result folder (all files present, every WAV header final)."""

    def __init__(self, root: Path):
        self.root = root
        self.violations: list[str] = []
        self.seen: set[str] = set()
        self._start()

    def _run(self) -> None:
        from mixdaemon.daemon.watcher import wav_header_is_final
        while not self._stop.is_set():
            try:
                entries = [e for e in os.scandir(self.root) if not e.name.startswith(".")]
            except OSError:
                entries = []
            for e in entries:
                if e.name in self.seen:
                    continue
                folder = Path(e.path)
                names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
                bad = [n for n in RESULT_FILES if n.endswith(".wav") and n in names and not wav_header_is_final(folder / n)]
                if not RESULT_FILES <= names or bad:
                    self.violations.append(f"{e.name}: {sorted(names)} incomplete {bad}")
                else:
                    self.seen.add(e.name)
            time.sleep(0.002)

    def stop(self) -> None:
        self._end()
