"""--precision: the bf16 cloner runs (whole windows and the stream) within a stated error of fp32 on
real stems, fp32 is exactly today's path, "auto" keeps fp32, bf16 is refused where the CPU lacks it,
and a wrong value is a one-line error."""
import argparse
import logging

import numpy as np
import pytest
import torch

from mixdaemon.audio.io import read_audio
from mixdaemon.cli.transfer import add_transfer_options, settings_from_args
from mixdaemon.errors import ConfigError, EngineUnavailable
from mixdaemon.mixing.settings import TransferSettings, validated
from mixdaemon.nets import precision
from mixdaemon.nets.backends import TorchBackend, create_backend
from mixdaemon.nets.inference import convert
from mixdaemon.nets.mst import ClonerConfig, EncoderConfig, FXencoder, MixFXcloner
from mixdaemon.nets.precision import resolve_precision, snr_db
from mixdaemon.nets.store import save_pair
from tests.support.models import v2_model

torch.set_num_threads(2)
SR = 44100
CLONER = ClonerConfig(nblocks=4, channel_width=8, kernel_size=3, dilation_growth=8, cond_dim=16)
# bf16 against fp32 on song_a's bass measures 60 dB for this small cloner, whole or streamed; the
# full-size cloner's figures are in docs/BENCHMARKS.md ("Lower-precision CPU inference")
BF16_SNR_FLOOR_DB = 50.0


@pytest.fixture(scope="module")
def cloner():
    return v2_model(MixFXcloner(CLONER))


@pytest.fixture(scope="module")
def song(real_stems):
    return 0.5 * read_audio(real_stems / "song_a" / "bass.wav").samples[2 * SR:5 * SR]


@pytest.fixture
def style():
    return np.random.default_rng(0).uniform(0, 2, CLONER.cond_dim).astype(np.float32)


@pytest.fixture
def native_bf16(monkeypatch):
    """Pretend this CPU has bf16 arithmetic (torch emulates it where it has not: slower, same numbers)."""
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)


def test_bf16_cloner_runs_within_the_stated_error_of_fp32_whole_and_streamed(cloner, song, style):
    fp32 = convert(cloner, song, style)
    bf16 = TorchBackend(cloner=cloner, device="cpu", precision="bf16")
    whole = convert(bf16, song, style)
    streamed = convert(bf16, song, style, chunk_seconds=1.0, stream=True)
    assert whole.shape == streamed.shape == song.shape and whole.dtype == np.float32
    assert snr_db(fp32, whole) > BF16_SNR_FLOOR_DB
    assert snr_db(fp32, streamed) > BF16_SNR_FLOOR_DB
    assert snr_db(fp32, whole) < 90  # it does compute in bf16: not fp32 under another name
    assert "bf16 convolutions" in bf16.describe()


def test_fp32_is_todays_path_bit_for_bit(cloner, song, style):
    # the fp32 backend calls the very module it did before --precision existed, so equality is the claim
    torch_fp32 = create_backend("torch", None, cloner, precision="fp32")
    assert np.array_equal(convert(torch_fp32, song, style), convert(TorchBackend(cloner=cloner), song, style))
    assert torch_fp32.describe() == "torch on cpu"


def test_auto_keeps_fp32_and_bf16_needs_native_bf16(monkeypatch, caplog, cloner):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.INFO, logger="mixdaemon.nets.precision"):
        assert resolve_precision("auto") == "fp32"
    assert "precision auto → fp32 (this CPU has no native bf16" in caplog.text
    with pytest.raises(EngineUnavailable, match=r"^precision 'bf16' is not available: this CPU has no native bf16"):
        create_backend("auto", None, cloner, precision="bf16")
    assert resolve_precision("bf16", device="cuda") == "bf16"  # GPUs compute bf16 natively
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", width=24) == "fp32"  # the shipped default's width: slower in bf16
    assert resolve_precision("auto", device="cuda", width=128) == "fp32"


def test_auto_computes_a_full_width_cloner_in_bf16_on_native_bf16_unless_a_graph_backend_is_named(
        native_bf16, caplog):
    wide = MixFXcloner(ClonerConfig(nblocks=2, channel_width=precision.BF16_MIN_WIDTH, kernel_size=3, cond_dim=16))
    with caplog.at_level(logging.INFO, logger="mixdaemon.nets.precision"):
        backend = create_backend("auto", None, wide, precision="auto")
    assert backend.describe() == "torch on cpu, bf16 convolutions"
    assert "precision auto → bf16 (native bf16, cloner width 128" in caplog.text
    assert create_backend("onnxruntime", None, wide, precision="auto").describe().startswith("onnxruntime")
    assert "bf16" not in create_backend("auto", None, wide, precision="fp32").describe()  # the switch that keeps fp32


def test_bf16_runs_on_torch_and_auto_picks_torch_for_it(native_bf16, cloner):
    backend = create_backend("auto", FXencoder(EncoderConfig(channels=(8, 16), kernels=(9, 5), strides=(4, 1))),
                             cloner, precision="bf16")
    assert backend.name == "torch" and backend.describe() == "torch on cpu, bf16 convolutions"
    assert next(backend.encoder.parameters()).dtype == torch.float32  # the encoder stays fp32
    with pytest.raises(ConfigError, match=r"^precision 'bf16' runs on the torch backend, not 'onnxruntime'$"):
        create_backend("onnxruntime", None, cloner, precision="bf16")


def test_the_neural_engine_converts_at_the_set_precision_and_refines_in_fp32(native_bf16, cloner, tmp_path):
    from mixdaemon.mixing.neural import NeuralEngine

    encoder = v2_model(FXencoder(EncoderConfig(channels=(8, 16), kernels=(9, 5), strides=(4, 1))))
    save_pair(tmp_path / "small.safetensors", encoder, v2_model(MixFXcloner(CLONER)))
    engine = NeuralEngine.from_settings(TransferSettings(engine="neural", model=str(tmp_path / "small.safetensors"),
                                                         precision="bf16"))
    assert engine.info["backend"] == "torch on cpu, bf16 convolutions"
    assert isinstance(engine.cloner, MixFXcloner) and next(engine.cloner.parameters()).dtype == torch.float32


def test_a_wrong_precision_is_a_one_line_error_naming_the_key():
    with pytest.raises(ConfigError) as error:
        validated(TransferSettings, {"precision": "int8"})
    assert str(error.value) == "precision: Input should be 'auto', 'fp32' or 'bf16' (got 'int8')"
    assert validated(TransferSettings, {}).precision == "auto"


def test_the_command_line_option_reaches_the_settings():
    parser = argparse.ArgumentParser()
    add_transfer_options(parser)
    assert settings_from_args(parser.parse_args(["--precision", "fp32"])).precision == "fp32"
    assert settings_from_args(parser.parse_args([])).precision == "auto"
