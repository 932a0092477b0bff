"""The harness of the daemon fault benchmark and its probes: a real `mixdaemon serve` subprocess
with its config, its job table, and a watch on its output root for partial results."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from mixdaemon.daemon.osc import OscClient
from mixdaemon.daemon.watcher import wav_header_is_final

REPO = Path(__file__).resolve().parents[1]


# --- the daemon, its output folder ---------------------------------------------------------------

def write_config(work: Path, reply_port: int, reference: Path, **extra) -> Path:
    """work/config.toml: watch work/watch, results in work/out, state in work/state (a config's
    paths are relative to its folder), an OS-chosen OSC port, notifications to reply_port."""
    (work / "watch").mkdir(parents=True, exist_ok=True)
    top = {"settle_seconds": 0.3, "stale_seconds": 2.0, "reference": str(reference), "state_dir": "state", **extra}
    lines = [f"{key} = {json.dumps(value)}" for key, value in top.items()]
    lines += ['[[watch]]', 'path = "watch"', "[output]", 'root = "out"',
              "[osc]", 'host = "127.0.0.1"', "port = 0", f"reply_port = {reply_port}"]
    (work / "config.toml").write_text("\n".join(lines) + "\n")
    return work / "config.toml"


class Daemon:
    """`python -m mixdaemon serve --config CONFIG` as a subprocess; its log in CONFIG's folder."""

    def __init__(self, config: Path):
        self.state = config.parent / "state"
        with open(config.parent / "daemon.stderr", "ab") as err:
            self.process = subprocess.Popen([sys.executable, "-m", "mixdaemon", "serve", "--config", str(config)],
                                            cwd=REPO, stdout=err, stderr=err)
        self.address: tuple[str, int] | None = None

    def serving(self) -> bool:
        """Whether it serves: its daemon.json (written once OSC is bound) names its pid."""
        try:
            info = json.loads((self.state / "daemon.json").read_text())
        except (OSError, ValueError):
            return False
        if info.get("pid") != self.process.pid:
            return False
        self.address = (info["osc_host"], info["osc_port"])
        return True

    def wait_serving(self, timeout: float = 120.0) -> "Daemon":
        deadline = time.monotonic() + timeout
        while not self.serving():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not start (exit status {self.process.poll()}); "
                                   f"see {self.state.parent / 'daemon.stderr'}")
            time.sleep(0.05)
        return self

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def terminate(self) -> int:
        self.process.terminate()
        return self.process.wait(20)


class PartialOutputWatch:
    """Looks at the output root every 2 ms from a thread and records every visible entry that is
    not a whole result: a folder whose manifest.json names outputs that are all there, with final
    WAV headers, and its report."""

    def __init__(self, root: Path):
        self.root = root
        self.violations: list[str] = []
        self._whole: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _judge(self, folder: Path) -> str | None:
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
        except (OSError, ValueError):
            return "no readable manifest.json"
        files = [Path(p).name for p in manifest["outputs"].values()] + ["report.png"]
        missing = [n for n in files if not (folder / n).is_file()]
        unfinished = [n for n in files if n.endswith(".wav") and n not in missing and not wav_header_is_final(folder / n)]
        return f"missing {missing}, unfinished {unfinished}" if missing or unfinished else None

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                names = [n for n in os.listdir(self.root) if not n.startswith(".") and n not in self._whole]
            except OSError:
                names = []
            for name in names:
                problem = self._judge(self.root / name)
                if problem is None:
                    self._whole.add(name)
                else:
                    self.violations.append(f"{name}: {problem}")
            time.sleep(0.002)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def job_rows(state_dir: Path) -> list[dict]:
    db = sqlite3.connect(state_dir / "jobs.sqlite3")
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM jobs ORDER BY id")]
    finally:
        db.close()


def start(work: Path, listener: OscClient, reference: Path, **extra) -> Daemon:
    return Daemon(write_config(work, listener.port, reference, **extra)).wait_serving()
