"""Choosing a backend (auto, fallbacks, clear errors), running whole songs on ONNX Runtime exactly
as on torch, the neural engine on the chosen backend, and `mixdaemon backends build | list`."""
import logging
import sys

import numpy as np
import pytest
import torch

from mixdaemon.audio.io import read_audio
from mixdaemon.cli.main import main
from mixdaemon.errors import ConfigError, EngineUnavailable
from mixdaemon.mixing.settings import TransferSettings
from mixdaemon.nets.backends import choose_backend, create_backend
from mixdaemon.nets.inference import convert, embed_reference, interpolated_embedding
from mixdaemon.nets.mst import ClonerConfig, EncoderConfig, FXencoder, MixFXcloner
from mixdaemon.nets.repo import ENGINES_ENV
from mixdaemon.nets.store import save_pair
from tests.support.models import v2_model

torch.set_num_threads(2)
SR = 44100
# narrow: the 1-D convolution formulation (nets/onnx_export.py's NCHWC_MIN_WIDTH); test_onnx_export.py runs the 2-D one
CLONER = ClonerConfig(nblocks=6, channel_width=8, kernel_size=3, dilation_growth=8, cond_dim=16)
ENCODER = EncoderConfig(channels=(8, 16, 16), kernels=(9, 5, 3), strides=(4, 4, 1))


def hide(monkeypatch, *modules):
    """Make `import module` fail as it does where the package is not installed."""
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


def test_auto_falls_back_to_onnxruntime_without_tensorrt_and_says_why(monkeypatch, caplog):
    hide(monkeypatch, "tensorrt")
    with caplog.at_level(logging.INFO, logger="mixdaemon.nets.backends"):
        assert choose_backend("auto") == "onnxruntime"
    assert "backend auto → onnxruntime" in caplog.text
    assert "tensorrt: the tensorrt package is not importable" in caplog.text


def test_auto_falls_back_to_torch_without_either(monkeypatch, caplog):
    hide(monkeypatch, "tensorrt", "onnxruntime")
    with caplog.at_level(logging.INFO, logger="mixdaemon.nets.backends"):
        assert choose_backend("auto") == "torch"
    assert "backend auto → torch" in caplog.text
    assert "onnxruntime: the onnxruntime package is not importable" in caplog.text


def test_asking_for_a_backend_that_cannot_run_is_a_clear_error(monkeypatch):
    hide(monkeypatch, "tensorrt")
    with pytest.raises(EngineUnavailable, match=r"^backend 'tensorrt' is not available: the tensorrt package is not "
                                                r"importable .*install mixdaemon\[tensorrt\]$"):
        choose_backend("tensorrt")
    with pytest.raises(ConfigError, match="backend 'cuda': expected one of auto, torch, onnxruntime, tensorrt"):
        choose_backend("cuda")
    assert choose_backend("torch") == "torch"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A model store holding one small pair, "small", with its ONNX graphs exported once for the module."""
    folder = tmp_path_factory.mktemp("engines")
    info = save_pair(folder / "small.safetensors", v2_model(FXencoder(ENCODER)), v2_model(MixFXcloner(CLONER)))
    return folder, info


@pytest.fixture(scope="module")
def pair(store):
    folder, info = store
    encoder, cloner = v2_model(FXencoder(ENCODER)), v2_model(MixFXcloner(CLONER))
    backend = create_backend("onnxruntime", encoder, cloner, info, store=folder, threads=2)
    return encoder, cloner, backend


def test_onnxruntime_converts_real_songs_like_torch(pair, real_stems):
    encoder, cloner, backend = pair
    reference = read_audio(real_stems / "song_b" / "bass.wav").samples
    e = embed_reference(backend, reference, segment=2 ** 17)
    np.testing.assert_allclose(e, embed_reference(encoder, reference, segment=2 ** 17), rtol=0, atol=1e-4)
    song = 0.3 * read_audio(real_stems / "song_a" / "other.wav").samples  # 15 s
    style = np.random.default_rng(0).uniform(0, 2, CLONER.cond_dim).astype(np.float32)
    whole = convert(cloner, song, style, chunk_seconds=60)  # one call on the whole song
    assert np.mean(np.abs(whole) < 1) > 0.5
    np.testing.assert_allclose(convert(backend, song, style, chunk_seconds=4, stream=True), whole, rtol=0, atol=1e-4)
    np.testing.assert_allclose(convert(backend, song, style, chunk_seconds=4, batch_size=2), whole, rtol=0, atol=1e-4)
    fade = interpolated_embedding(style, 2 - style)
    np.testing.assert_allclose(convert(backend, song[:5 * SR], fade, batch_size=3),
                               convert(cloner, song[:5 * SR], fade, batch_size=3), rtol=0, atol=1e-4)


def test_neural_engine_runs_on_the_requested_backend(store, monkeypatch, pair):
    from mixdaemon.mixing.neural import NeuralEngine

    folder, info = store
    monkeypatch.setenv(ENGINES_ENV, str(folder))
    engine = NeuralEngine.from_settings(TransferSettings(engine="neural", model="small", backend="onnxruntime"))
    assert engine.backend.name == "onnxruntime" and engine.info["backend"].startswith("onnxruntime on CPU")
    hide(monkeypatch, "tensorrt")
    with pytest.raises(EngineUnavailable, match="backend 'tensorrt' is not available"):
        NeuralEngine.from_settings(TransferSettings(engine="neural", model="small", backend="tensorrt"))


def test_backends_build_and_list(store, pair, monkeypatch, capsys):
    folder, _ = store
    hide(monkeypatch, "tensorrt")
    assert main(["backends", "build", "--model", "small", "--store", str(folder)]) == 0
    out = capsys.readouterr().out
    assert out.count("ONNX ") == 3 and "TensorRT plans skipped: the tensorrt package is not importable" in out
    graphs = sorted(folder.glob("cache/*/*.onnx"))
    assert len(graphs) == 3  # the fixture's backend exported them: build reused them
    stamps = [p.stat().st_mtime_ns for p in graphs]
    assert main(["backends", "list", "--store", str(folder)]) == 0
    listing = capsys.readouterr().out
    for graph in ("fxencoder ", "mixfxcloner ", "mixfxcloner-stream "):
        assert f"\n{graph}" in "\n" + listing
    assert listing.count("[small]") == 3 and listing.count("ONNX opset 18") == 3
    assert main(["backends", "build", "--model", "small", "--store", str(folder), "--backend", "tensorrt"]) == 2
    assert "mixdaemon: error: backend 'tensorrt' is not available" in capsys.readouterr().err
    assert [p.stat().st_mtime_ns for p in graphs] == stamps
