"""The neural engine under the user's controls, with a small model pair in a temporary model store:
amount 0 returns the input (and runs no network), amount 0.5 lands halfway between the input and
the network's output, per-stem amounts override the amount, a partial --match takes only those
aspects of the network's output, and a silent reference stem leaves its input stem as it was."""
import numpy as np
import pytest
import torch

from mixdaemon.audio.dsp import loudness_lufs
from mixdaemon.audio.examples import synth_song
from mixdaemon.mixing import neural
from mixdaemon.mixing.neural import NeuralEngine
from mixdaemon.mixing.settings import TransferSettings
from mixdaemon.nets.mst import ClonerConfig, EncoderConfig, FXencoder, MixFXcloner
from mixdaemon.nets.repo import ENGINES_ENV
from mixdaemon.nets.store import save_pair
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


def test_match_level_takes_only_the_networks_balance(engine_with, song):
    """--match level: each stem is the input times one gain, landing at the loudness the network
    gave that stem; the network's other changes (tone, dynamics, width) are not taken."""
    stems, reference = song
    full = engine_with().convert(stems, reference).stems
    out = engine_with(match=("level",)).convert(stems, reference).stems
    for name, x in stems.items():
        gain = out[name][np.abs(x) > 1e-3] / x[np.abs(x) > 1e-3]
        np.testing.assert_allclose(gain, gain[0], rtol=1e-4, err_msg=name)    # one gain for the whole stem
        assert abs(loudness_lufs(out[name]) - loudness_lufs(full[name])) < 0.1, name
        assert not np.allclose(out[name], full[name], atol=1e-3), name


def test_a_partial_match_is_scaled_by_the_amount(engine_with, song):
    stems, reference = song
    x = stems["drums"]
    moved = engine_with(match=("level",), amount=0.5).convert(stems, reference).stems["drums"]
    full = engine_with(match=("level",)).convert(stems, reference).stems["drums"]
    half_db, all_db = (loudness_lufs(y) - loudness_lufs(x) for y in (moved, full))
    assert abs(all_db) > 0.5 and half_db == pytest.approx(all_db / 2, abs=0.05)


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
