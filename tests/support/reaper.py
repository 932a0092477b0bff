"""Running the REAPER scripts under a real Lua 5.4 against the stub `reaper` API (reaper_stub.lua
beside this file, which records every call and renders real WAV files)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np

from tests.support.daemon import REPO, wav_bytes

LUA, LUAC = shutil.which("lua5.4"), shutil.which("luac5.4")
SCRIPTS = REPO / "integrations" / "reaper"
STUB = REPO / "tests" / "support" / "reaper_stub.lua"
HAS_LUASOCKET = LUA is not None and subprocess.run([LUA, "-e", "require('socket')"], capture_output=True).returncode == 0


def lua_literal(value) -> str:
    """A Python value as a Lua expression (the stub's project file is Lua)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):  # UTF-8 bytes; all but printable ASCII as \ddd escapes
        return '"' + "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\{b:03d}" for b in value.encode()) + '"'
    if isinstance(value, (list, tuple)):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    return "{" + ", ".join(f"[{lua_literal(str(k))}] = {lua_literal(v)}" for k, v in value.items()) + "}"


class Reaper:
    """A project for the stub, and runs of the scripts against it."""

    def __init__(self, folder: Path, project: dict):
        self.folder = folder
        self.state = folder / "project_state.lua"
        self.state.write_text("return " + lua_literal(project) + "\n", encoding="ascii")
        self.runs = 0

    def run(self, script: str, timeout: float = 60) -> dict:
        self.runs += 1
        out = self.folder / f"run{self.runs}.json"
        subprocess.run([LUA, str(STUB), str(self.state), str(out), str(SCRIPTS / script)], cwd=self.folder,
                       timeout=timeout, check=True)
        result = json.loads(out.read_text(encoding="utf-8"))
        result["calls"] = [(c["name"], c["args"]) for c in result["calls"]]
        return result


def calls_named(result: dict, name: str) -> list[list]:
    return [args for n, args in result["calls"] if n == name]


def render_settings_before(result: dict, until: int) -> dict:
    """The render settings the script set before call number `until` (the render)."""
    return {a[1]: a[2] for n, a in result["calls"][:until]
            if n in ("GetSetProjectInfo", "GetSetProjectInfo_String") and a[3] is True}


def tone(seconds: float, hz: float) -> np.ndarray:
    """A stereo sine: audio for tests where the daemon does not listen to it."""
    t = np.arange(int(seconds * 44100)) / 44100
    return np.repeat(0.3 * np.sin(2 * np.pi * hz * t)[:, None], 2, axis=1).astype(np.float32)


def write_wav(path: Path, samples: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(wav_bytes(samples))
    return path
