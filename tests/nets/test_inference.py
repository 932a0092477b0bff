"""Chunked conversion equals whole-song processing; reference embeddings ignore silence and padding.

Small models with the reference README's v2 weight fill (realistic signal scale, see tests/support/models.py).
"""
import numpy as np
import pytest
import torch
from scipy import signal

from mixdaemon.errors import MixdaemonError
from mixdaemon.nets.inference import convert, embed_reference, interpolated_embedding
from mixdaemon.nets.mst import ClonerConfig, EncoderConfig, FXencoder, MixFXcloner
from tests.support.models import v2_model

torch.set_num_threads(2)
SR = 44100
COND = 16
# receptive field 74,899 samples (1.7 s): chunks of 1–5 s need context from several neighbours
CLONER = ClonerConfig(nblocks=6, channel_width=8, kernel_size=3, dilation_growth=8, cond_dim=COND)
ENCODER = EncoderConfig(channels=(8, 16, COND), kernels=(9, 5, 3), strides=(4, 4, 1))


class RecordingCloner(MixFXcloner):
    """Remembers the input shape of every call."""

    def __init__(self, config):
        super().__init__(config)
        self.calls = []

    def forward(self, x, cond):
        self.calls.append(tuple(x.shape))
        return super().forward(x, cond)


@pytest.fixture(scope="module")
def cloner():
    return v2_model(RecordingCloner(CLONER))


@pytest.fixture(scope="module")
def encoder():
    return v2_model(FXencoder(ENCODER))


def filtered_noise(n: int, seed: int = 0) -> np.ndarray:
    """Band-limited stereo noise with a slow level envelope, peak 0.3."""
    rng = np.random.default_rng(seed)
    x = signal.sosfilt(signal.butter(4, [80, 6000], "bandpass", fs=SR, output="sos"), rng.standard_normal((n, 2)), axis=0)
    x *= 0.6 + 0.4 * np.sin(2 * np.pi * 0.3 * np.arange(n) / SR)[:, None]
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def whole(cloner, audio, e):
    with torch.inference_mode():
        y = cloner(torch.from_numpy(np.ascontiguousarray(audio.T))[None], torch.from_numpy(e)[None])
    return y[0].numpy().T


def embedding(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 2, COND).astype(np.float32)


def test_chunked_conversion_equals_whole_song(cloner):
    audio = filtered_noise(60 * SR + 1)  # odd length
    e = embedding(1)
    reference = whole(cloner, audio, e)
    assert reference.std() > 0.05 and np.mean(np.abs(reference) >= 1) < 0.1  # a real signal, mostly unclipped
    cloner.calls.clear()
    a = convert(cloner, audio, e, chunk_seconds=2, batch_size=1)
    window = round(2 * SR) + 2 * (CLONER.receptive_field // 2)
    assert set(cloner.calls) == {(1, 2, window)}  # bounded windows, whatever the song length
    b = convert(cloner, audio, e, chunk_seconds=5, batch_size=3)
    assert a.shape == b.shape == audio.shape and a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
    np.testing.assert_allclose(a, reference, rtol=0, atol=1e-4)


@pytest.mark.parametrize("length", [1, 999, 30_001, 2 * SR + 1, 2 * SR + CLONER.receptive_field + 7])
def test_any_length_comes_back_whole_and_exact(cloner, length):
    audio = filtered_noise(length, seed=length)
    e = embedding(2)
    y = convert(cloner, audio, e, chunk_seconds=2, batch_size=2)
    assert y.shape == (length, 2)
    np.testing.assert_allclose(y, whole(cloner, audio, e), rtol=0, atol=1e-4)


def test_reference_interpolation_is_exact_per_chunk(cloner):
    audio = filtered_noise(6 * SR + 123, seed=3)
    e_a, e_b = embedding(4), embedding(5)
    y = convert(cloner, audio, interpolated_embedding(e_a, e_b), batch_size=4)  # default chunk: 1 s
    n_chunks = 7
    for i in (0, 4, n_chunks - 1):
        w = i / (n_chunks - 1)
        e = ((1 - w) * e_a.astype(np.float64) + w * e_b).astype(np.float32)
        part = slice(i * SR, (i + 1) * SR)
        np.testing.assert_allclose(y[part], whole(cloner, audio, e)[part], rtol=0, atol=1e-4, err_msg=f"chunk {i}")
    # and the fade is audible: the first and last second differ from the constant-A conversion differently
    only_a = whole(cloner, audio, e_a)
    assert np.abs(y[:SR] - only_a[:SR]).max() < 1e-4 < np.abs(y[-SR:] - only_a[-SR:]).max()


def test_progress_reaches_total(cloner):
    audio = filtered_noise(7 * SR + 5)
    calls = []
    convert(cloner, audio, embedding(6), chunk_seconds=2, batch_size=2,
            progress=lambda stage, fraction: calls.append((stage, fraction)))
    fractions = [f for _, f in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(calls) == 2


SEGMENT = 16384


def test_silence_around_and_inside_the_reference_changes_nothing(encoder):
    music = filtered_noise(4 * SEGMENT, seed=7)
    music[0] = music[-1] = 0.5  # so that trimming starts and ends exactly at the music
    e = embed_reference(encoder, music, SEGMENT)
    silence = np.zeros((2 * SEGMENT + 77, 2), np.float32)
    hiss = (1e-5 * np.random.default_rng(0).standard_normal((SEGMENT, 2))).astype(np.float32)
    padded = np.concatenate([silence, hiss, music, silence])
    np.testing.assert_allclose(embed_reference(encoder, padded, SEGMENT), e, rtol=1e-5, atol=1e-6 * np.abs(e).max())
    gap = np.concatenate([music[:2 * SEGMENT], np.zeros((2 * SEGMENT, 2), np.float32), music[2 * SEGMENT:]])
    np.testing.assert_allclose(embed_reference(encoder, gap, SEGMENT), e, rtol=1e-5, atol=1e-6 * np.abs(e).max())


def test_partial_last_segment_is_not_zero_padded(encoder):
    """A periodic signal looks the same in every segment, so 2.5 segments must embed like one."""
    period = 256  # divides SEGMENT / 2, so the final segment holds the same content as the others
    t = np.arange(SEGMENT * 5 // 2)
    tone = sum(np.sin(2 * np.pi * h * t / period + h) / h for h in (1, 2, 3, 5))
    audio = 0.3 * np.stack([tone, np.roll(tone, 17)], axis=1).astype(np.float32)
    one = embed_reference(encoder, audio[:SEGMENT], SEGMENT)
    tol = 1e-5 * np.abs(one).max()
    np.testing.assert_allclose(embed_reference(encoder, audio, SEGMENT), one, rtol=0, atol=tol)
    # what the authors' zero-padded tail would have given: clearly different
    with torch.inference_mode():
        tail = np.zeros((SEGMENT, 2), np.float32)
        tail[:SEGMENT // 2] = audio[2 * SEGMENT:]
        padded_tail = encoder(torch.from_numpy(tail.T.copy())[None])[0].numpy()
    assert np.abs((2 * one + padded_tail) / 3 - one).max() > 100 * tol


def test_short_reference_is_looped(encoder):
    n = ENCODER.min_input_length
    clip = filtered_noise(n // 3, seed=8)
    looped = np.resize(clip, (n, 2))
    np.testing.assert_allclose(embed_reference(encoder, clip, SEGMENT), embed_reference(encoder, looped, SEGMENT),
                               rtol=1e-6)


def test_silent_reference_is_refused(encoder):
    with pytest.raises(MixdaemonError, match="song_b.wav: the reference is silent"):
        embed_reference(encoder, np.zeros((5 * SEGMENT, 2), np.float32), SEGMENT, name="song_b.wav")
    hiss = (3e-4 * np.random.default_rng(1).standard_normal((5 * SEGMENT, 2))).astype(np.float32)
    hiss[SEGMENT] = 0.01  # one click above the threshold: the segments are still below −60 dBFS RMS
    with pytest.raises(MixdaemonError, match="every segment is below -60 dBFS RMS"):
        embed_reference(encoder, hiss, SEGMENT)
