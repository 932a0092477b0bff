"""mixdaemon as a user installs it: the wheel (not an editable install) in a fresh virtual
environment, run from another folder, finds its shipped models and writes the user's own into the
per-user data folder, never into site-packages; an editable install finds the same shipped models
in the repository's engines/.

The fresh environments borrow torch and the other dependencies from the project's environment
through a .pth file (torch is pinned to a local wheel and must never be downloaded); the wheel
itself is installed with --no-deps and comes first on sys.path."""
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ("default.safetensors", "params-default.safetensors", "automix-default.safetensors", "MODEL_CARD.md")

pytestmark = pytest.mark.slow


def _run(args, cwd, env, timeout=120) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}: {done.stderr[-2000:]}"
    return done


def _source_copy(to: Path) -> Path:
    """The files a build reads, copied: the build leaves build/ and *.egg-info beside them, and the
    checkout may hold models or caches that are not the project's."""
    to.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, to / name)
    shutil.copytree(REPO / "mixdaemon", to / "mixdaemon", ignore=shutil.ignore_patterns("__pycache__"))
    (to / "engines").mkdir()
    for name in SHIPPED:
        shutil.copy(REPO / "engines" / name, to / "engines" / name)
    return to


def _fresh_venv(folder: Path) -> tuple[Path, Path]:
    """(python, site-packages) of a new environment that sees the project environment's packages
    after its own."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=60)
    python = folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    borrowed = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (site / "_mixdaemon_dependencies.pth").write_text("".join(f"{p}\n" for p in borrowed))
    return python, site


def _pip(python: Path, *args) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-index", *map(str, args)], check=True, capture_output=True, timeout=180)


def _user_env(tmp_path: Path) -> dict:
    """A user's environment: no MIXDAEMON_ENGINES, their own data folder and home."""
    env = {k: v for k, v in os.environ.items() if k not in ("MIXDAEMON_ENGINES", "PYTHONPATH")}
    env.update(HOME=str(tmp_path / "home"), XDG_DATA_HOME=str(tmp_path / "home" / "data"))
    return env


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts}


def test_the_wheel_ships_its_models_and_every_engine_runs_from_another_folder(tmp_path):
    source = _source_copy(tmp_path / "source")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=180)
    wheel, = (tmp_path / "dist").glob("mixdaemon-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(source).as_posix() for p in (source / "mixdaemon").rglob("*.py")}
    assert modules - names == set(), "packages missing from pyproject.toml's list"
    assert {f"mixdaemon/engines/{name}" for name in SHIPPED} <= names

    python, site = _fresh_venv(tmp_path / "venv")
    _pip(python, wheel)
    env, work = _user_env(tmp_path), tmp_path / "elsewhere"
    work.mkdir()
    cli = python.parent / ("mixdaemon.exe" if os.name == "nt" else "mixdaemon")
    installed = _run([python, "-c", "import mixdaemon; print(mixdaemon.__file__)"], work, env).stdout
    assert Path(installed.strip()).is_relative_to(site)
    before = _files(site / "mixdaemon")

    listed = _run([cli, "models", "list"], work, env).stdout.splitlines()
    assert listed[0] == f"your models: {tmp_path / 'home' / 'data' / 'mixdaemon' / 'engines'}"
    assert listed[2] == f"shipped models (read-only): {site / 'mixdaemon' / 'engines'}"
    assert [line.split()[0] for line in listed[3:]] == ["automix-default", "default", "params-default"]

    _run([cli, "example", "--out", "songs", "--seconds", "3"], work, env)
    for engine in ("match", "param", "neural"):
        extra = ["--backend", "torch"] if engine == "neural" else []  # an ONNX export would take ~20 s
        _run([cli, "transfer", "songs/input", "--reference", "songs/reference", "--out", engine, "--engine", engine,
              "-q", *extra], work, env)
        assert sf.info(work / engine / "mixture.wav").duration == pytest.approx(3.0, abs=0.01)
    _run([cli, "automix", "songs/input", "--out", "mix.wav", "-q"], work, env)
    assert sf.info(work / "mix.wav").duration == pytest.approx(3.0, abs=0.01)
    assert _files(site / "mixdaemon") == before  # nothing written into the installed package


def test_an_editable_install_finds_the_shipped_models_in_the_checkouts_engines_folder(tmp_path):
    source = _source_copy(tmp_path / "source")
    python, _ = _fresh_venv(tmp_path / "venv")
    _pip(python, "--no-build-isolation", "-e", source)
    work = tmp_path / "elsewhere"
    work.mkdir()
    listed = _run([python, "-m", "mixdaemon", "models", "list"], work, _user_env(tmp_path)).stdout.splitlines()
    assert listed[2] == f"shipped models (read-only): {source / 'engines'}"
    assert [line.split()[0] for line in listed[3:]] == ["automix-default", "default", "params-default"]
