"""The output stage: converted stems never clip, stay under the true-peak ceiling and still sum to
the written mix."""
import numpy as np
import pytest

from mixdaemon.audio.mastering import limit_linked, true_peak_dbtp


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


def test_the_envelope_is_exact_wherever_it_may_reach_the_level_asked_for():
    from mixdaemon.audio.mastering import true_peak_envelope
    rng = np.random.default_rng(3)
    t = np.arange(44100 * 3)
    # quiet passages and loud bursts of a bright tone (whose true peaks fall between samples)
    x = (np.sin(2 * np.pi * 11025.3 * t / 44100)[:, None] * np.where((t // 20000) % 3 == 0, 0.9, 0.02)[:, None]
         + 0.01 * rng.standard_normal((t.size, 2))).astype(np.float32)
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
