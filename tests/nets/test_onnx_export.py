"""The exported ONNX graphs compute what the torch models compute, on real stems, with dynamic
batch and time axes; the FP16 graph (for TensorRT) is really FP16 inside; exports are cached.

Small configs with the v2 weight fill for the full parity grid; one full-size check per model.
"""
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mixdaemon.audio.io import read_audio
from mixdaemon.nets.backends import OnnxRuntimeBackend, TorchBackend, as_backend
from mixdaemon.nets.mst import ClonerConfig, EncoderConfig, FXencoder, MixFXcloner
from mixdaemon.nets.onnx_export import GRAPHS, NCHWC_MIN_WIDTH, ensure_onnx, export_onnx
from tests.support.models import v2_model

torch.set_num_threads(2)
SR = 44100
# wide enough for the 2-D convolution formulation (nets/onnx_export.py's NCHWC_MIN_WIDTH); test_backends.py runs the 1-D one
CLONER = ClonerConfig(nblocks=6, channel_width=32, kernel_size=3, dilation_growth=8, cond_dim=16)
ENCODER = EncoderConfig(channels=(8, 16, 16), kernels=(9, 5, 3), strides=(4, 4, 1))
STEMS = ("drums", "bass", "other", "vocals")


def stem_batch(real_stems, batch: int, length: int, offset: int = 3 * SR, gain: float = 1.0) -> np.ndarray:
    """[batch, 2, length] float32: that many real stems of song_a from `offset` on, times `gain`."""
    return np.stack([gain * read_audio(real_stems / "song_a" / f"{name}.wav").samples[offset:offset + length].T
                     for name in STEMS[:batch]]).astype(np.float32)


# the v2-filled cloners amplify: at full scale the loud drums would mostly clip
CLONER_GAIN = 0.3


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    assert CLONER.channel_width >= NCHWC_MIN_WIDTH
    encoder, cloner = v2_model(FXencoder(ENCODER)), v2_model(MixFXcloner(CLONER))
    store = tmp_path_factory.mktemp("engines")
    return TorchBackend(encoder, cloner), OnnxRuntimeBackend.from_models(encoder, cloner, store=store, threads=2)


@pytest.mark.parametrize("length", [30_001, 3 * SR + 17])
@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_equals_torch_on_real_stems(small, real_stems, length, batch):
    reference, exported = small
    audio = stem_batch(real_stems, batch, length)
    e = reference.embed(audio)
    np.testing.assert_allclose(exported.embed(audio), e, rtol=0, atol=1e-4)
    assert e.shape == (batch, ENCODER.embedding_dim) and e.max() > 0.1  # a non-trivial embedding
    # embeddings at the scale the small cloner's v2 weights expect (the small encoder's are ~10× smaller)
    style = np.random.default_rng(length).uniform(0, 2, (batch, CLONER.cond_dim)).astype(np.float32)
    audio = CLONER_GAIN * audio
    y = reference.convert(audio, style)
    assert y.shape == audio.shape and y.std() > 0.01 and np.mean(np.abs(y) < 1) > 0.5  # a signal, mostly unclamped
    np.testing.assert_allclose(exported.convert(audio, style), y, rtol=0, atol=1e-4)
    # one embedding for the whole batch, as inference.convert passes it
    np.testing.assert_allclose(exported.convert(audio, style[:1]), reference.convert(audio, style[:1]),
                               rtol=0, atol=1e-4)


def test_stream_graph_continues_where_the_last_block_stopped(small, real_stems):
    """Two stream steps from zero states equal the whole-song call, delayed by half a receptive field."""
    reference, exported = small
    audio = stem_batch(real_stems, 1, 2 * SR, gain=CLONER_GAIN)
    e = np.random.default_rng(5).uniform(0, 2, (1, CLONER.cond_dim)).astype(np.float32)
    delay = CLONER.receptive_field // 2
    stream_in = np.concatenate([audio, np.zeros((1, 2, delay), np.float32)], axis=-1)
    split = SR + 123
    outputs = []
    for backend in (reference, exported):
        states = backend.stream_states()
        first, states = backend.stream(stream_in[..., :split], e, 0, audio.shape[-1], states)
        second, _ = backend.stream(stream_in[..., split:], e, split, audio.shape[-1], states)
        outputs.append(np.concatenate([first, second], axis=-1)[..., delay:])
    whole = reference.convert(audio, e)
    np.testing.assert_allclose(outputs[0], whole, rtol=0, atol=1e-4)
    np.testing.assert_allclose(outputs[1], whole, rtol=0, atol=1e-4)


def _float_types(path) -> dict[str, set[int]]:
    model = onnx.load(str(path))
    io = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}
    weights = {t.data_type for t in model.graph.initializer if t.dims and t.dims[0] > 2}  # not shape constants
    return {"io": set(io.values()), "weights": weights}


def test_fp16_graph_computes_in_float16_behind_float32_inputs(tmp_path, real_stems):
    cloner = v2_model(MixFXcloner(CLONER))
    path = export_onnx("mixfxcloner", cloner, tmp_path / "c16.onnx", precision="fp16")
    types = _float_types(path)
    assert types["io"] == {onnx.TensorProto.FLOAT} and types["weights"] == {onnx.TensorProto.FLOAT16}
    audio = stem_batch(real_stems, 2, SR, gain=CLONER_GAIN)
    e = np.random.default_rng(0).uniform(0, 2, (2, CLONER.cond_dim)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y16 = session.run(None, {"audio": audio, "embedding": e})[0]
    y32 = TorchBackend(cloner=cloner).convert(audio, e)
    error = np.abs(y16 - y32).max()
    assert 1e-5 < error < 2e-2  # FP16 rounding, not FP32 arithmetic and not a broken graph


def test_export_is_cached_and_keyed_by_weights(tmp_path):
    cloner = MixFXcloner(ClonerConfig(nblocks=2, channel_width=4, kernel_size=3, cond_dim=4)).eval()
    path = ensure_onnx("mixfxcloner", cloner, "a" * 64, store=tmp_path)
    stat = path.stat()
    time.sleep(0.01)
    assert ensure_onnx("mixfxcloner", cloner, "a" * 64, store=tmp_path) == path
    assert path.stat().st_ino == stat.st_ino and path.stat().st_mtime_ns == stat.st_mtime_ns  # not re-exported
    other = ensure_onnx("mixfxcloner", cloner, "b" * 64, store=tmp_path)
    assert other != path and other.is_file()
    assert path.parent.parent == tmp_path / "cache"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fxencoder", "mixfxcloner"])
def test_full_size_model_matches_torch(kind, tmp_path, real_stems):
    """The shipped architecture: reflection padding at every encoder stage; dilations to 8192."""
    model = v2_model(FXencoder() if kind == "fxencoder" else MixFXcloner())
    path = export_onnx(kind, model, tmp_path / f"{kind}.onnx")
    assert kind in GRAPHS
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    reference = as_backend(model)
    if kind == "fxencoder":
        for batch, length in ((1, model.config.min_input_length), (2, 3 * SR)):
            audio = stem_batch(real_stems, batch, length)
            e = reference.embed(audio)
            np.testing.assert_allclose(session.run(None, {"audio": audio})[0], e, rtol=0, atol=1e-4)
    else:
        for batch, length in ((1, 4001), (2, SR // 4)):
            audio = stem_batch(real_stems, batch, length, gain=CLONER_GAIN)
            e = np.random.default_rng(batch).uniform(0, 2, (batch, 2048)).astype(np.float32)
            y = reference.convert(audio, e)
            assert y.std() > 0.01
            np.testing.assert_allclose(session.run(None, {"audio": audio, "embedding": e})[0], y, rtol=0, atol=1e-4)
