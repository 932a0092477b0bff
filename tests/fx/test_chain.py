"""The interpretable FX chain: each stage does what its setting says, a chain streamed block by block
renders what the whole stem does, fx_params.json holds the settings in user units, and FXmanipulator
draws map onto equivalent settings."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mixdaemon.audio import dsp, streams
from mixdaemon.audio.io import read_audio
from mixdaemon.fx.chain import (
    PRIME_SECONDS,
    CompressorSettings,
    EqBand,
    ReverbSend,
    StemChain,
    chain_effect,
    chain_from_draw,
    default_eq,
    eq_response_db,
    render,
    write_fx_params,
)
from mixdaemon.fx.manipulator import FXManipulator, Imager, Panner

SR = 44100


def sine(hz: float, seconds: float = 1.0, amplitude: float = 0.25) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return np.repeat(amplitude * np.sin(2 * np.pi * hz * t)[:, None], 2, axis=1).astype(np.float32)


def rms_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.asarray(x, dtype=np.float64) ** 2)))


def noise(rng, seconds=1.0, side=0.5):
    mid, other = rng.standard_normal((2, int(seconds * SR))) * 0.1
    return np.stack([mid + side * other, mid - side * other], axis=1).astype(np.float32)


def test_the_default_chain_leaves_audio_untouched(rng):
    x = noise(rng)
    assert StemChain().stages() == []
    np.testing.assert_array_equal(render(x, StemChain()), x)


def test_eq_bands_change_the_level_at_their_frequency_as_set():
    eq = default_eq()
    eq[2] = EqBand("peak", 1500.0, 6.0, 1.0)
    eq[4] = EqBand("high_shelf", 6000.0, -9.0)
    chain = StemChain(eq=eq)
    at_peak, far_above = sine(1500.0), sine(15000.0)
    boost = rms_db(render(at_peak, chain)[SR // 2:]) - rms_db(at_peak[SR // 2:])
    assert boost == pytest.approx(6.0, abs=0.1)
    assert rms_db(render(far_above, chain)[SR // 2:]) - rms_db(far_above[SR // 2:]) == pytest.approx(-9.0, abs=0.3)
    # the analytic response the estimator fits is the rendered one
    assert eq_response_db(chain.eq, np.array([1500.0]))[0] == pytest.approx(boost, abs=0.01)


def test_width_and_pan_act_like_the_controls_of_a_mixer(rng):
    x = noise(rng)
    mono = render(x, StemChain(width=0.0))
    np.testing.assert_allclose(mono[:, 0], mono[:, 1], atol=1e-6)
    wide = render(x, StemChain(width=2.0))
    side_gain = np.std(wide[:, 0] - wide[:, 1]) / np.std(x[:, 0] - x[:, 1])
    assert side_gain == pytest.approx(2.0, rel=1e-3)
    left_panned = render(x, StemChain(pan=-0.5))
    np.testing.assert_allclose(left_panned[:, 0], x[:, 0], atol=1e-6)
    np.testing.assert_allclose(left_panned[:, 1], 0.5 * x[:, 1], atol=1e-6)
    assert np.max(np.abs(render(x, StemChain(pan=1.0))[:, 0])) == 0.0


def test_compressor_turns_loud_passages_down_and_gain_is_exact():
    loud = sine(200.0, amplitude=0.9)
    squashed = render(loud, StemChain(compressor=CompressorSettings(-30.0, 8.0, 1.0, 50.0)))
    assert rms_db(squashed[SR // 2:]) < rms_db(loud[SR // 2:]) - 15.0
    np.testing.assert_allclose(render(loud, StemChain(gain_db=6.0)), loud * 10 ** (6 / 20), rtol=1e-5)
    assert not CompressorSettings(-30.0, 1.0).active and not CompressorSettings(0.0, 4.0).active


def test_reverb_send_leaves_a_tail_after_the_sound_stops():
    burst = np.concatenate([sine(440.0, 0.3), np.zeros((SR, 2), np.float32)])
    wet = render(burst, StemChain(reverb=ReverbSend(-6.0, 0.8)))
    tail = slice(int(0.4 * SR), int(0.8 * SR))
    assert np.max(np.abs(burst[tail])) == 0.0 and rms_db(wet[tail]) > -60.0


def every_stage(threshold_db: float) -> StemChain:
    return StemChain([EqBand("low_shelf", 90.0, 4.0), EqBand("peak", 450.0, -5.0, 1.2), EqBand("peak", 2200.0, 3.0, 0.8),
                      EqBand("peak", 6500.0, -2.0, 2.0), EqBand("high_shelf", 9000.0, 5.0)],
                     CompressorSettings(threshold_db, 8.0, 0.3, 60.0), width=1.6, pan=0.35, reverb=ReverbSend(-8.0, 0.85),
                     gain_db=4.0)


@pytest.mark.parametrize("compressed", [True, False])  # the compressor's opening held back or not
@pytest.mark.parametrize("sizes", [[1, 4095, 13, 100000], [44100]])
def test_a_chain_streamed_in_any_blocks_renders_what_the_whole_stem_does(real_stems, sizes, compressed):
    # from a second in, where the drums play: the stem's opening is near silence, which would hide a
    # reverb tail or a gain reduction lost between blocks
    drums = read_audio(real_stems / "song_a" / "drums.wav").samples[SR:]
    chain = every_stage(dsp.db(np.max(np.abs(drums))) - 20.0)
    if not compressed:
        chain.compressor = CompressorSettings()
    assert len(chain.stages()) == 4 + compressed
    whole = render(drums, chain)
    assert whole.shape == drums.shape and whole.dtype == np.float32
    np.testing.assert_allclose(streams.in_blocks(chain_effect(chain), drums, sizes), whole, rtol=0, atol=1e-4)


def test_a_streamed_chain_holds_back_only_the_compressor_opening(rng):
    x = noise(rng, seconds=2.0)
    chain = every_stage(-30.0)
    stream, lead = chain_effect(chain).stream(x.shape[0]), int(PRIME_SECONDS * SR)
    out, taken = [], 0
    for start in range(0, x.shape[0], 4096):
        block = x[start:start + 4096]
        out.append(stream.push(block, last=start + 4096 >= x.shape[0]))
        taken += block.shape[0]
        assert sum(o.shape[0] for o in out) == (0 if taken <= lead else taken)
    np.testing.assert_allclose(np.concatenate(out), render(x, chain), rtol=0, atol=1e-4)


def test_the_compressor_carries_its_gain_reduction_across_blocks(rng):
    x = rng.standard_normal((30000, 2)) * np.linspace(0.01, 1.0, 30000)[:, None]
    compressor = dsp.Compressor(-24.0, 6.0, 0.5, 40.0)
    whole = dsp.compress(x, -24.0, 6.0, 0.5, 40.0)
    np.testing.assert_array_equal(streams.in_blocks(compressor, x, [1, 4095, 13, 7000]), whole)
    np.testing.assert_array_equal(streams.in_blocks(compressor, x[:, 0], [999]), whole[:, 0])  # mono


def test_fx_params_json_holds_the_settings_in_user_units(tmp_path):
    chain = StemChain([EqBand("low_shelf", 80.0, 3.0), EqBand("peak", 400.0, -2.5, 0.8), EqBand("peak", 2000.0, 1.0, 1.2),
                       EqBand("peak", 6000.0, -4.0, 0.5), EqBand("high_shelf", 9000.0, 2.0)],
                      CompressorSettings(-20.0, 3.5, 5.0, 120.0), width=0.8, pan=-0.3, reverb=ReverbSend(-12.0, 0.5),
                      gain_db=-1.5)
    path = write_fx_params(tmp_path / "fx_params.json", {"vocals": chain, "bass": StemChain()}, {"name": "param"})
    assert [p.name for p in tmp_path.iterdir()] == ["fx_params.json"]  # no partial file left behind
    document = json.loads(path.read_text())
    assert document["format"] == "mixdaemon-fx-params" and document["engine"] == {"name": "param"}
    assert document["stems"]["vocals"] == {
        "gain_db": -1.5,
        "eq": [{"type": "low_shelf", "freq_hz": 80.0, "gain_db": 3.0, "q": 0.707},
               {"type": "peak", "freq_hz": 400.0, "gain_db": -2.5, "q": 0.8},
               {"type": "peak", "freq_hz": 2000.0, "gain_db": 1.0, "q": 1.2},
               {"type": "peak", "freq_hz": 6000.0, "gain_db": -4.0, "q": 0.5},
               {"type": "high_shelf", "freq_hz": 9000.0, "gain_db": 2.0, "q": 0.707}],
        "compressor": {"threshold_db": -20.0, "ratio": 3.5, "attack_ms": 5.0, "release_ms": 120.0},
        "width": 0.8, "pan": -0.3, "reverb": {"send_db": -12.0, "room_size": 0.5}}
    assert document["stems"]["bass"]["reverb"]["send_db"] is None  # JSON null: no send
    assert all(band["gain_db"] == 0.0 for band in document["stems"]["bass"]["eq"])


def test_an_fxmanipulator_draw_maps_to_settings_with_the_same_effect(rng):
    x = noise(rng, side=0.3).astype(np.float64)
    drawn = FXManipulator("vocals").draw(np.random.default_rng(3))
    drawn["fired"].update(eq=True, pan=True, imager=True, comp=False, reverb=False, gain=False)
    drawn["params"]["eq"] = FXManipulator("vocals").effects["eq"].draw(np.random.default_rng(4))
    drawn["params"]["pan"] = {"position": 0.8, "law": "constant_power"}
    drawn["params"]["imager"] = {"width": 1.5}
    chain = chain_from_draw(drawn, x)
    assert [b.gain_db for b in chain.eq] == [drawn["params"]["eq"][k] for k in (
        "low_shelf_gain_db", "peak1_gain_db", "peak2_gain_db", "peak3_gain_db", "high_shelf_gain_db")]
    # The imager's change of the side/mid ratio and the pan law's right/left ratio are reproduced.
    imaged = Imager().apply(x, {"width": 1.5})
    ratio = lambda y: np.std(y[:, 0] - y[:, 1]) / np.std(y[:, 0] + y[:, 1])  # noqa: E731
    assert ratio(render(x, StemChain(width=chain.width))) == pytest.approx(ratio(imaged), rel=1e-3)
    left, right = Panner.gains(0.8, "constant_power")
    panned = render(x, StemChain(pan=chain.pan))
    assert np.std(panned[:, 1]) / np.std(panned[:, 0]) == pytest.approx(right / left * np.std(x[:, 1]) / np.std(x[:, 0]), rel=1e-4)
    assert chain.compressor == CompressorSettings() and not chain.reverb.active


def test_rendering_refuses_mono_arrays():
    with pytest.raises(ValueError, match=r"expected \(n, 2\)"):
        render(np.zeros(100, np.float32), StemChain())
