"""Refining the reference embedding (nets/refine.py) with the shipped default pair on a real stem:
the steps bring the converted excerpt's measured style closer to the reference's, never further,
and leave the cloner's weights as they were."""
import numpy as np
import pytest
import torch
from scipy.signal import butter, sosfilt

from mixdaemon.audio.io import read_audio
from mixdaemon.nets.inference import embed_reference
from mixdaemon.nets.refine import refine_embedding, style_distance, style_measures
from mixdaemon.nets.store import load_pair
from tests.conftest import REAL_STEMS

torch.set_num_threads(2)
SONG = REAL_STEMS / "song_a"


@pytest.fixture(scope="module")
def pair():
    encoder, cloner, _ = load_pair("default")
    return encoder, cloner


@pytest.fixture(scope="module")
def stems():
    audio = read_audio(SONG / "other.wav").samples
    other = audio[44100 * 4:44100 * 6]
    # The reference: the same part darker (a 1.5-kHz low-pass) and nearly mono, 6 s later.
    later = audio[44100 * 10:44100 * 14]
    dark = sosfilt(butter(2, 1500, fs=44100, output="sos"), later, axis=0)
    mid = dark.mean(axis=1, keepdims=True)
    return other.astype(np.float32), (0.9 * mid + 0.1 * dark).astype(np.float32)


def test_a_darker_narrower_reference_is_measured_as_such():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((44100 * 2, 2)).astype(np.float32) * 0.1
    dark = sosfilt(butter(2, 1500, fs=44100, output="sos"), noise, axis=0).astype(np.float32)
    bright, darker = (style_measures(torch.from_numpy(np.ascontiguousarray(a.T))) for a in (noise, dark))
    assert darker[-7].item() < darker[0].item()                 # the top band well under the bottom one
    assert float(style_distance(bright, bright)) == 0.0
    assert float(style_distance(bright, darker)) > 3.0


def test_refinement_moves_the_conversion_toward_the_reference(pair, stems):
    encoder, cloner = pair
    x, reference = stems
    before = [p.detach().clone() for p in cloner.parameters()]
    start = embed_reference(encoder, reference)
    refined, distances = refine_embedding(cloner, x, reference, start, steps=6)
    assert len(distances) == 7
    assert min(distances) < 0.8 * distances[0], distances
    assert not np.allclose(refined, start)
    assert all(torch.equal(a, b) for a, b in zip(before, cloner.parameters()))


def test_no_steps_return_the_encoders_embedding(pair, stems):
    encoder, cloner = pair
    x, reference = stems
    start = embed_reference(encoder, reference)
    refined, distances = refine_embedding(cloner, x, reference, start, steps=0)
    np.testing.assert_array_equal(refined, start)
    assert len(distances) == 1
