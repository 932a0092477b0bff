"""`mixdaemon transfer --amount --stem-amount --match` as a user runs it: amount 0 writes the input
stems back (through the limiter, which leaves quiet stems alone), fx_params.json records the
controls, and a wrong value is one line naming it, exit status 2, nothing written."""
import json

import numpy as np
import pytest
import torch

from mixdaemon.audio.examples import synth_song
from mixdaemon.audio.io import read_audio, write_audio
from mixdaemon.cli.main import main
from mixdaemon.nets.mst import ClonerConfig, EncoderConfig, FXencoder, MixFXcloner
from mixdaemon.nets.repo import ENGINES_ENV
from mixdaemon.nets.store import save_pair
from tests.support.models import v2_model

STEMS = ("drums", "bass", "other", "vocals")


@pytest.fixture(scope="module")
def songs(tmp_path_factory):
    """Quiet input stems (the mix peaks near −14 dBFS: far under the limiter's −1 dBTP) and louder
    reference stems, 2 s each."""
    root = tmp_path_factory.mktemp("songs")
    for folder, seed, peak in (("input", 0, 0.05), ("reference", 1, 0.4)):
        for name, x in synth_song(2.0, seed=seed).items():
            write_audio(root / folder / f"{name}.wav", x * (peak / np.max(np.abs(x))))
    return root


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engines")
    save_pair(folder / "tiny.safetensors", v2_model(FXencoder(EncoderConfig(channels=(4, 8, 16), kernels=(9, 5, 5),
                                                                            strides=(16, 8, 4)))),
              v2_model(MixFXcloner(ClonerConfig(nblocks=2, channel_width=4, kernel_size=3, cond_dim=16))))
    return folder


def _transfer(songs, out, *options) -> int:
    return main(["transfer", str(songs / "input"), "--reference", str(songs / "reference"), "--out", str(out),
                 "--quiet", *options])


def _written_minus_input(songs, out, stem: str) -> float:
    y = read_audio(out / f"{stem}.wav").samples
    x = read_audio(songs / "input" / f"{stem}.wav").samples
    assert y.shape == x.shape
    return float(np.max(np.abs(y - x)))


@pytest.mark.parametrize("engine", ["match", "neural"])
def test_amount_0_writes_the_input_stems(songs, tiny_store, tmp_path, monkeypatch, capsys, engine):
    monkeypatch.setenv(ENGINES_ENV, str(tiny_store))
    torch.set_num_threads(2)
    model = ["--model", "tiny", "--backend", "torch"] if engine == "neural" else []
    moved = tmp_path / "moved"
    assert _transfer(songs, moved, "--engine", engine, *model) == 0, capsys.readouterr().err
    kept = tmp_path / "kept"
    assert _transfer(songs, kept, "--engine", engine, *model, "--amount", "0") == 0, capsys.readouterr().err
    for stem in STEMS:
        assert _written_minus_input(songs, moved, stem) > 1e-3, f"{stem}: the engine does not move it at amount 1"
        assert _written_minus_input(songs, kept, stem) < 1e-6, stem  # 24-bit rounding only


def test_a_stem_amount_of_0_keeps_that_stem(songs, tmp_path, capsys):
    out = tmp_path / "out"
    assert _transfer(songs, out, "--stem-amount", "vocals=0", "--stem-amount", "bass=0") == 0, capsys.readouterr().err
    assert _written_minus_input(songs, out, "vocals") < 1e-6 and _written_minus_input(songs, out, "bass") < 1e-6
    assert _written_minus_input(songs, out, "drums") > 1e-3


@pytest.mark.parametrize("options, message", [
    (["--amount", "1.5"], "amount: Input should be less than or equal to 1 (got '1.5')"),
    (["--amount", "-0.1"], "amount: Input should be greater than or equal to 0 (got '-0.1')"),
    (["--amount", "lots"], "amount: Input should be a valid number"),
    (["--match", "level,loudness"], "match[1]: Input should be 'level', 'eq', 'dynamics', 'width' or 'space' "
                                    "(got 'loudness')"),
    (["--match", ","], "match: choose at least one of level, eq, dynamics, width, space"),
    (["--stem-amount", "voice=0.5"], "stem_amount: 'voice' is not a stem; use drums, bass, other, vocals"),
    (["--stem-amount", "vocals"], "--stem-amount 'vocals': give STEM=AMOUNT, e.g. vocals=0.3"),
    (["--stem-amount", "vocals=2"], "stem_amount.vocals: Input should be less than or equal to 1 (got '2')"),
])
def test_a_wrong_control_is_one_line_and_exit_status_2(songs, tmp_path, capsys, options, message):
    out = tmp_path / "out"
    assert _transfer(songs, out, *options) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mixdaemon: error: {message}") and err.count("\n") == 1, err
    assert not out.exists()


def test_fx_params_records_the_controls(songs, tmp_path, capsys):
    out = tmp_path / "out"
    code = _transfer(songs, out, "--engine", "param", "--amount", "0.5", "--stem-amount", "vocals=0.2",
                     "--match", "eq,level")
    assert code == 0, capsys.readouterr().err
    engine = json.loads((out / "fx_params.json").read_text())["engine"]
    assert engine["name"] == "param"
    assert (engine["amount"], engine["stem_amount"], engine["match"]) == (0.5, {"vocals": 0.2}, ["level", "eq"])
