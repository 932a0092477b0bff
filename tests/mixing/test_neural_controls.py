"""The neural engine under the user's controls, with a small model pair in a temporary model store:
amount 0 returns the input (and runs no network), amount 0.5 lands halfway between the input and
the network's output, per-stem amounts override the amount, a partial --match is refused before
any model loads, and a silent reference stem leaves its input stem as it was."""
import numpy as np
import pytest
import torch

from mixdaemon.audio.examples import synth_song
from mixdaemon.errors import ConfigError
from mixdaemon.mixing import neural
from mixdaemon.mixing.neural import NeuralEngine
from mixdaemon.mixing.settings import TransferSettings
from mixdaemon.nets.mst import ClonerConfig, EncoderConfig, FXencoder, MixFXcloner
from mixdaemon.nets.store import ENGINES_ENV, save_pair
from tests.support.models import v2_model

torch.set_num_threads(2)
ENCODER = EncoderConfig(channels=(4, 8, 16), kernels=(9, 5, 5), strides=(16, 8, 4))
CLONER = ClonerConfig(nblocks=2, channel_width=4, kernel_size=3, cond_dim=16)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engines")
    save_pair(folder / "tiny.safetensors", v2_model(FXencoder(ENCODER)), v2_model(MixFXcloner(CLONER)))
    return folder


@pytest.fixture
def engine_with(store, monkeypatch):
    monkeypatch.setenv(ENGINES_ENV, str(store))

    def make(**settings) -> NeuralEngine:
        return NeuralEngine.from_settings(TransferSettings(engine="neural", model="tiny", backend="torch", **settings))
    return make


@pytest.fixture(scope="module")
def song():
    return synth_song(2.0, seed=0), synth_song(2.0, seed=1)


def test_amount_0_returns_the_input_and_runs_no_network(engine_with, song, monkeypatch):
    stems, reference = song
    engine = engine_with(amount=0.0)

    def must_not_run(*args, **kwargs):
        raise AssertionError("the network ran for a stem at amount 0")
    monkeypatch.setattr(neural, "convert", must_not_run)
    monkeypatch.setattr(neural, "embed_reference", must_not_run)
    out = engine.convert(stems, reference).stems
    assert set(out) == set(stems)
    for name, x in stems.items():
        assert np.array_equal(out[name], x), name


def test_amount_half_lands_halfway_between_the_input_and_the_network(engine_with, song):
    stems, reference = song
    full = engine_with().convert(stems, reference).stems
    half = engine_with(amount=0.5).convert(stems, reference).stems
    for name, x in stems.items():
        assert np.sqrt(np.mean((full[name] - x) ** 2)) > 1e-3, f"{name}: the network changed nothing to halve"
        np.testing.assert_allclose(half[name], x + 0.5 * (full[name] - x), rtol=0, atol=1e-5, err_msg=name)


def test_a_stem_amount_overrides_the_amount(engine_with, song):
    stems, reference = song
    full = engine_with().convert(stems, reference).stems
    out = engine_with(stem_amount={"vocals": 0.0, "bass": 0.25}).convert(stems, reference).stems
    assert np.array_equal(out["vocals"], stems["vocals"])
    np.testing.assert_allclose(out["bass"], stems["bass"] + 0.25 * (full["bass"] - stems["bass"]), rtol=0, atol=1e-5)
    for name in ("drums", "other"):
        np.testing.assert_array_equal(out[name], full[name])


@pytest.mark.parametrize("match", [("level",), ("level", "eq", "dynamics", "width")])
def test_a_partial_match_is_refused_before_the_models_load(store, monkeypatch, match):
    monkeypatch.setenv(ENGINES_ENV, str(store))
    settings = TransferSettings(engine="neural", model="no-such-pair", match=match)
    with pytest.raises(ConfigError, match=r"^match: the neural engine moves every aspect at once; "
                                          r"--match needs --engine match or param$"):
        NeuralEngine.from_settings(settings)


@pytest.mark.parametrize("peak", [0.0, 3e-4])  # digital silence; noise peaking at −70 dBFS
def test_a_silent_reference_stem_keeps_its_input_stem(engine_with, song, peak):
    """Not the FX-normalized stem, not a failed job: the input stem as it came."""
    stems, reference = song
    noise = np.random.default_rng(0).uniform(-1, 1, reference["vocals"].shape).astype(np.float32)
    silent = peak * noise
    engine = engine_with()
    full = engine.convert(stems, reference).stems
    out = engine.convert(stems, {**reference, "vocals": silent}).stems
    assert np.array_equal(out["vocals"], stems["vocals"])
    for name in ("drums", "bass", "other"):
        np.testing.assert_array_equal(out[name], full[name])


def test_a_fade_to_reference_b_is_blended_by_the_amount_too(engine_with, song):
    stems, reference = song
    reference_b = synth_song(2.0, seed=2)
    full = engine_with().convert(stems, reference, reference_b_stems=reference_b).stems
    half = engine_with(amount=0.5).convert(stems, reference, reference_b_stems=reference_b).stems
    for name, x in stems.items():
        assert np.sqrt(np.mean((full[name] - x) ** 2)) > 1e-3, name
        np.testing.assert_allclose(half[name], x + 0.5 * (full[name] - x), rtol=0, atol=1e-5, err_msg=name)
