"""A transfer of any length in bounded memory: the planned effects rendered block by block give the
whole-signal output, and a long song is measured on excerpts without holding it."""
import dataclasses
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from mixdaemon import defaults
from mixdaemon.audio.io import read_audio
from mixdaemon.audio.mastering import true_peak_dbtp
from mixdaemon.audio.streams import in_blocks
from mixdaemon.mixing.factory import make_engine
from mixdaemon.mixing.measure import measured_whole
from mixdaemon.mixing.settings import TransferSettings
from mixdaemon.mixing.transfer import transfer

STEMS = ("drums", "bass", "other", "vocals")
PARTITIONS = ([1, 4095, 13, 100_000], [44_100])


def _song(root, song, real_stems, seconds, start=0.0):
    """A stem folder of `seconds` of a real song (looped when the song is shorter)."""
    folder = root / f"{song}-{seconds:g}s"
    if not folder.exists():
        folder.mkdir()
        for stem in STEMS:
            data, rate = sf.read(real_stems / song / f"{stem}.wav", dtype="float32", always_2d=True)
            a, n = int(start * rate), int(seconds * rate)
            looped = np.tile(data[a:], (n // max(1, data.shape[0] - a) + 1, 1))[:n]
            sf.write(folder / f"{stem}.wav", looped, rate, subtype="PCM_24")
    return folder


@pytest.fixture(scope="module")
def songs(tmp_path_factory, real_stems):
    root = tmp_path_factory.mktemp("streaming")
    return {"input": _song(root, "song_a", real_stems, 8, 2.0), "reference": _song(root, "song_b", real_stems, 8, 4.0),
            "root": root}


def _stems(folder):
    return {stem: read_audio(folder / f"{stem}.wav").samples for stem in STEMS}


# The neural engine on torch: the shipped default pair, no ONNX export into the model store
SETTINGS = {"match": {}, "param": {}, "neural": {"backend": "torch"}}


@pytest.mark.parametrize("engine_name", ["match", "param", "neural"])
def test_each_planned_effect_streamed_in_any_blocks_equals_the_whole_signal_render(songs, engine_name):
    engine = make_engine(TransferSettings(engine=engine_name, **SETTINGS[engine_name]))
    x, ref = _stems(songs["input"]), _stems(songs["reference"])
    plan = engine.plan(measured_whole(x), measured_whole(ref))
    moved = [name for name, effect in plan.effects.items() if effect is not None]
    assert moved == list(STEMS)
    for name in moved:
        assert not np.allclose(plan.rendered[name], x[name], atol=1e-3)  # the stem did change
        for sizes in PARTITIONS:
            streamed = in_blocks(plan.effects[name], x[name], sizes)
            assert streamed.shape == x[name].shape
            np.testing.assert_allclose(streamed, plan.rendered[name], rtol=0, atol=1e-4, err_msg=f"{name} {sizes}")


class _StreamedOnly:
    """The engine whose plan is always rendered as streams (never from the fit's own render)."""

    def __init__(self, engine):
        self.engine, self.name, self.info, self.capabilities = engine, engine.name, engine.info, engine.capabilities

    def plan(self, *args, **kwargs):
        return dataclasses.replace(self.engine.plan(*args, **kwargs), rendered=None)


@pytest.mark.parametrize("engine_name", ["match", "param", "neural"])
def test_a_job_rendered_in_one_second_blocks_writes_what_the_whole_signal_job_writes(songs, tmp_path, monkeypatch,
                                                                                      engine_name):
    settings = TransferSettings(engine=engine_name, **SETTINGS[engine_name])
    whole = transfer(songs["input"], songs["reference"], tmp_path / "whole", settings)
    monkeypatch.setattr(defaults, "RENDER_BLOCK_SECONDS", 1)
    streamed = transfer(songs["input"], songs["reference"], tmp_path / "streamed", settings,
                        engine=_StreamedOnly(make_engine(settings)))
    for name in (*STEMS, "mixture"):
        a, b = sf.read(whole.outputs[name])[0], sf.read(streamed.outputs[name])[0]
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4, err_msg=name)
    assert streamed.loudness_after == pytest.approx(whole.loudness_after, abs=0.01)
    assert streamed.true_peak_dbtp <= defaults.CEILING_DBTP + 1e-3


def _traced_peak(function) -> int:
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("engine_name", ["match", "neural"])
def test_a_long_song_is_measured_on_excerpts_and_lands_on_the_reference_in_memory_that_does_not_grow(
        songs, real_stems, tmp_path, monkeypatch, engine_name):
    # Scaled down so that the test runs in seconds: songs longer than 12 s are measured on six 2-s
    # windows per stem and rendered half a second at a time.
    monkeypatch.setattr(defaults, "ANALYSIS_SECONDS", 12.0)
    monkeypatch.setattr(defaults, "ANALYSIS_WINDOW_SECONDS", 2.0)
    monkeypatch.setattr(defaults, "RENDER_BLOCK_SECONDS", 0.5)
    short = _song(songs["root"], "song_a", real_stems, 20)
    long = _song(songs["root"], "song_a", real_stems, 60)
    results = {}

    settings = TransferSettings(engine=engine_name, **SETTINGS[engine_name])

    def job(folder):
        return lambda: results.setdefault(folder.name, transfer(folder, songs["reference"], tmp_path / folder.name,
                                                                settings))
    peaks = {folder.name: _traced_peak(job(folder)) for folder in (short, long)}
    result = results[long.name]
    # three times the song, not more memory: what a job holds is its measurement (the excerpts, the
    # fit's copies of them) and a block
    assert peaks[long.name] < 1.3 * peaks[short.name]
    for name in (*STEMS, "mixture"):
        out, rate = sf.read(result.outputs[name], always_2d=True)
        assert out.shape[0] == 60 * rate
        assert true_peak_dbtp(out.astype(np.float32)) <= defaults.CEILING_DBTP + 0.01
    for name in STEMS:  # the level step lands each whole stem near its reference stem
        assert abs(result.loudness_after[name] - result.reference_loudness[name]) < 1.0, name
