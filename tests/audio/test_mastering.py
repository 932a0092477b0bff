"""The output stage: converted stems never clip, stay under the true-peak ceiling and still sum to
the written mix; fed block by block (a job's render), it gives what it gives on the whole song."""
import numpy as np
import pytest
import soundfile as sf

from mixdaemon.audio.dsp import db
from mixdaemon.audio.mastering import (
    LimiterGain,
    LinkedLimiter,
    TruePeakEnvelope,
    limit_linked,
    limiter_gain,
    true_peak_dbtp,
    true_peak_envelope,
)
from mixdaemon.audio.streams import in_blocks

# blocks of one sample, of one short of the envelope's measuring block, odd sizes, a job's 10 s
PARTITIONS = ([1, 4095, 13, 100000], [8191, 8193, 52, 53], [441000])
AIM_DBTP = float(db(10 ** (-1.05 / 20) * 0.995))  # where the limiter puts the peaks for a -1 dBTP ceiling


def loud_stems(seconds=3.0, gain=3.0):
    rng = np.random.default_rng(7)
    n = int(seconds * 44100)
    t = np.arange(n) / 44100
    return {
        "drums": (gain * 0.5 * np.sign(np.sin(2 * np.pi * 2 * t))[:, None] * rng.standard_normal((n, 2)) * 0.3),
        "bass": np.repeat((gain * 0.6 * np.sin(2 * np.pi * 55 * t))[:, None], 2, axis=1),
        "other": gain * 0.2 * rng.standard_normal((n, 2)),
        "vocals": np.repeat((gain * 0.4 * np.sin(2 * np.pi * 11025 * t + 0.7))[:, None], 2, axis=1),
    }


def test_loud_stems_end_under_ceiling_and_sum_to_mix():
    stems = loud_stems()
    assert true_peak_dbtp(sum(stems.values())) > 6
    limited, mix, reported_peak = limit_linked(stems, ceiling_dbtp=-1.0)
    assert true_peak_dbtp(mix) <= -1.0
    assert reported_peak == pytest.approx(true_peak_dbtp(mix), abs=0.01)  # the limiter's reading is the meter's
    for name, x in limited.items():
        assert true_peak_dbtp(x) <= -1.0, name
        assert x.shape == stems[name].shape
    np.testing.assert_allclose(mix, np.sum(list(limited.values()), axis=0), atol=1e-6)
    # a limiter, not a clipper: no run of identical full-level samples (flat tops)
    assert np.max(np.abs(np.diff(mix[:, 0]))[np.abs(mix[:-1, 0]) > 0.85] == 0, initial=False) == 0


def test_quiet_material_passes_unchanged():
    stems = {k: v / 40 for k, v in loud_stems().items()}
    limited, mix, reported_peak = limit_linked(stems)
    for name in stems:
        np.testing.assert_array_equal(limited[name], stems[name].astype(np.float32))
    # far under the ceiling the limiter's reading of the mix is still the meter's, not a bound
    assert reported_peak == pytest.approx(true_peak_dbtp(mix), abs=0.01)


def test_limiting_is_local_not_a_global_gain():
    quiet = loud_stems(gain=0.1)
    n = quiet["bass"].shape[0]
    quiet["drums"][n // 2:n // 2 + 200] += 3.0  # one loud transient in the middle
    limited, _, _ = limit_linked(quiet)
    # one second before the transient, nothing was turned down
    np.testing.assert_allclose(limited["bass"][: n // 2 - 44100], quiet["bass"][: n // 2 - 44100], rtol=1e-6)


def bright_bursts(seconds=3):
    """Quiet passages and loud bursts of a bright tone (whose true peaks fall between samples)."""
    rng = np.random.default_rng(3)
    t = np.arange(int(44100 * seconds))
    return (np.sin(2 * np.pi * 11025.3 * t / 44100)[:, None] * np.where((t // 20000) % 3 == 0, 0.9, 0.02)[:, None]
            + 0.01 * rng.standard_normal((t.size, 2))).astype(np.float32)


def test_the_envelope_is_exact_wherever_it_may_reach_the_level_asked_for():
    x = bright_bursts()
    exact = true_peak_envelope(x)
    for above in (0.3, 0.8):
        fast = true_peak_envelope(x, above=above)
        # exact up to float32 rounding (the oversampling is an FFT convolution of each measured run)
        measured = exact >= above
        np.testing.assert_allclose(fast[measured], exact[measured], rtol=1e-5, atol=1e-6)
        bounded = np.abs(fast - exact) > 1e-5 * exact + 1e-6
        assert np.all(fast >= exact * (1 - 1e-5) - 1e-6) and np.all(fast[bounded] < above)  # elsewhere a bound under `above`
        assert np.mean(bounded) > 0.3                                                # the quiet parts were skipped
    assert true_peak_dbtp(x) == pytest.approx(float(20 * np.log10(exact.max() + 1e-30)), abs=1e-4)


@pytest.mark.parametrize("sizes", PARTITIONS)
def test_the_envelope_in_blocks_is_the_whole_signal_s(sizes):
    """Which parts are measured exactly is decided on blocks counted from the signal's start, so a
    stream cut anywhere gives the same envelope; as a peak meter (up_to_peak) its maximum is the
    true peak although it never knew the loudest sample in advance."""
    x = bright_bursts()
    for above in (0.3, 0.8):
        np.testing.assert_allclose(in_blocks(TruePeakEnvelope(above), x, sizes), true_peak_envelope(x, above),
                                   rtol=1e-5, atol=1e-6)
    meter = in_blocks(TruePeakEnvelope(2.0, up_to_peak=True), x, sizes)
    assert float(db(meter.max())) == pytest.approx(true_peak_dbtp(x), abs=1e-4)


@pytest.mark.parametrize("sizes", PARTITIONS)
def test_the_gain_curve_in_blocks_is_the_whole_signal_s(sizes):
    """The look-ahead reads across block edges and the release carries on: the same curve."""
    rng = np.random.default_rng(5)
    envelope = np.abs(rng.standard_normal(44100 * 3)) * np.repeat(rng.uniform(0.1, 1.5, 30), 4410)
    whole = limiter_gain(envelope, 0.8)
    np.testing.assert_allclose(in_blocks(LimiterGain(0.8), envelope, sizes), whole, rtol=0, atol=1e-9)
    assert np.all(envelope * whole <= 0.8 * (1 + 1e-12)) and whole.min() < 0.6


def limited_in_blocks(stems, sizes):
    """The linked limiter's stream fed the stems in blocks of the given sizes in turn: the limited
    stems, the mix and the reported true peak."""
    n = next(iter(stems.values())).shape[0]
    stream, parts, start, i = LinkedLimiter().stream(n), [], 0, 0
    while start < n or not parts:
        stop = min(n, start + sizes[i % len(sizes)])
        limited, mix = stream.push({k: v[start:stop] for k, v in stems.items()}, last=stop >= n)
        assert {x.shape[0] for x in limited.values()} == {mix.shape[0]}  # the stems in step with the mix
        parts.append((limited, mix))
        start, i = stop, i + 1
    return ({k: np.concatenate([p[0][k] for p in parts]) for k in stems}, np.concatenate([p[1] for p in parts]),
            stream.true_peak_dbtp)


@pytest.fixture(scope="module")
def boosted_real_stems(real_stems):
    """A real song's stems 12 dB louder than mixed: limited nearly all the time."""
    return {name: sf.read(real_stems / "song_a" / f"{name}.wav", dtype="float32")[0] * np.float32(4.0)
            for name in ("drums", "bass", "other", "vocals")}


def test_real_stems_in_blocks_are_limited_as_whole_and_stay_under_the_ceiling(boosted_real_stems):
    stems = boosted_real_stems
    whole = limit_linked(stems)
    for sizes in PARTITIONS[::2]:
        limited, mix, peak = limited_in_blocks(stems, sizes)
        for name in stems:
            np.testing.assert_allclose(limited[name], whole.stems[name], rtol=0, atol=1e-4)
        np.testing.assert_allclose(mix, whole.mixture, rtol=0, atol=1e-4)
        assert peak == pytest.approx(whole.true_peak_dbtp, abs=1e-3)
    for x in (*whole.stems.values(), whole.mixture):
        assert true_peak_dbtp(x) <= AIM_DBTP + 1e-3
    # limited to the ceiling, not under it
    assert whole.true_peak_dbtp == pytest.approx(AIM_DBTP, abs=0.01) == true_peak_dbtp(whole.mixture)


def test_what_the_gain_changes_add_between_samples_is_taken_off_too():
    """A 19 kHz tone with loud 100-sample bursts: the gain's fast changes make intersample peaks of
    their own (a first gain curve leaves them 0.006 dB over its aim). Every output ends at the aim,
    not over it, and not more than 0.01 dB under it."""
    n = 2 * 44100
    level = np.full(n, 0.5)
    for start in range(1000, n, 3000):
        level[start:start + 100] = 5.0
    x = (np.sin(2 * np.pi * 19000 * np.arange(n) / 44100 + 0.3) * level).astype(np.float32)
    stems = {"a": np.stack([x, 0.9 * x], axis=1), "b": np.stack([0.3 * x, x], axis=1)}
    limited, mix, peak = limit_linked(stems)
    peaks = [true_peak_dbtp(y) for y in (*limited.values(), mix)]
    assert max(peaks) <= AIM_DBTP + 1e-3
    assert peak == pytest.approx(true_peak_dbtp(mix), abs=1e-3) and peak > AIM_DBTP - 0.01


def test_a_lone_stem_is_its_own_mix():
    x = bright_bursts(1) * 2.0
    limited, mix, peak = limit_linked({"mix": x})
    np.testing.assert_array_equal(mix, limited["mix"])
    assert true_peak_dbtp(mix) <= AIM_DBTP + 1e-3 and peak == pytest.approx(true_peak_dbtp(mix), abs=1e-3)
