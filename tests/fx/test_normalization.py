"""FX normalization (fx/normalization.py, fx/stats.py) on the real stems of ../shared."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from scipy import signal

from mixdaemon.audio import dsp
from mixdaemon.errors import ConfigError, StemLayoutError
from mixdaemon.fx import normalization as fxnorm
from mixdaemon.fx.fit import fit
from mixdaemon.fx.stats import FxStats, default_stats_path

SONGS = ("song_a", "song_b", "song_c")


def read_song(folder) -> dict[str, np.ndarray]:
    stems = {}
    for stem in fxnorm.STEM_NAMES:
        audio, rate = sf.read(folder / f"{stem}.wav", dtype="float32", always_2d=True)
        assert rate == dsp.WORKING_RATE  # the stems are 44.1 kHz (only song_b/c mixtures are 48 kHz)
        stems[stem] = audio
    return stems


@pytest.fixture(scope="module")
def mst_stats(mst_stats_path) -> FxStats:
    return FxStats.load(mst_stats_path)


@pytest.fixture(scope="module")
def songs(real_stems) -> dict[str, dict[str, np.ndarray]]:
    return {song: read_song(real_stems / song) for song in SONGS}


@pytest.fixture(scope="module")
def normalized(songs, mst_stats) -> dict[str, dict[str, np.ndarray]]:
    return {song: fxnorm.normalize_stems(stems, mst_stats, order="mst_inference", seed=0)
            for song, stems in songs.items()}


# --- statistics files ---------------------------------------------------------------------------------

def test_both_original_statistics_files_load(mst_stats_path, fxnorm_stats_path):
    mst = FxStats.load(mst_stats_path)
    fx = FxStats.load(fxnorm_stats_path)
    assert (mst.flavour, fx.flavour) == ("mst", "fxnorm")
    for stats in (mst, fx):
        assert set(stats.stems) == set(fxnorm.STEM_NAMES)
        for s in stats.stems.values():
            assert s.eq.shape == (32769,) and s.eq.dtype == np.float32
            assert -16 < s.compression[0] < -12 and 0.5 < s.compression[1] < 2
    assert mst.stems["vocals"].loudness == pytest.approx(-25.365, abs=1e-3)
    assert mst.stems["other"].imager == pytest.approx(0.794, abs=1e-3) and mst.stems["other"].panning is None
    assert fx.stems["drums"].loudness == pytest.approx(-34.178, abs=1e-3)
    assert fx.stems["bass"].panning.shape == (32769,) and fx.stems["bass"].imager is None

    # Smoothed again at load, like the original loaders: the steep low-frequency edge moves, the
    # rest of the (already smooth) curve does not.
    raw = np.load(mst_stats_path, allow_pickle=True)[()]["eq"]["vocals"]
    loaded = mst.stems["vocals"].eq
    assert np.max(np.abs(loaded[:50] / raw[:50] - 1)) > 0.2
    assert np.allclose(loaded[2000:30000], raw[2000:30000], rtol=0.05)


def test_npz_round_trip_keeps_values_and_metadata(mst_stats, tmp_path):
    path = mst_stats.save(tmp_path / "stats.npz")
    again = FxStats.load(path)
    assert again.flavour == "mst" and again.metadata["source"] == mst_stats.source
    assert "created" in again.metadata and again.metadata["format_version"] == 1
    for stem, s in mst_stats.stems.items():
        t = again.stems[stem]
        assert np.array_equal(s.eq, t.eq)   # no second smoothing on our own format
        assert (s.compression, s.loudness, s.imager) == (t.compression, t.loudness, t.imager)


def test_shipped_default_statistics_load():
    for flavour in ("mst", "fxnorm"):
        stats = FxStats.load(default_stats_path(flavour))
        assert stats.flavour == flavour and set(stats.stems) == set(fxnorm.STEM_NAMES)
        assert "real_stems" in stats.source and stats.metadata["order"][0] == "eq"


def test_unusable_statistics_file_is_a_config_error(tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, {"eq": {}})
    with pytest.raises(ConfigError, match="bad.npy"):
        FxStats.load(bad)
    with pytest.raises(ConfigError, match="not found"):
        FxStats.load(tmp_path / "missing.npz")


# --- normalization of real stems ------------------------------------------------------------------------

def test_every_stem_reaches_the_loudness_target(normalized, mst_stats):
    for song, stems in normalized.items():
        for stem, y in stems.items():
            assert y.dtype == np.float32 and y.shape[1] == 2
            loudness = dsp.integrated_loudness(y)
            assert abs(loudness - mst_stats.stems[stem].loudness) < 0.5, (song, stem, loudness)


def test_every_stem_reaches_the_imager_target(normalized, mst_stats):
    for song, stems in normalized.items():
        for stem, y in stems.items():
            assert abs(dsp.mid_energy_fraction(y) - mst_stats.stems[stem].imager) < 0.02, (song, stem)


def test_two_runs_are_bit_identical_and_the_seed_matters(songs, normalized, mst_stats):
    stems = songs["song_a"]
    # song_a's bass is near mono (mid fraction 0.998), so the random Haas step runs on it
    assert dsp.mid_energy_fraction(stems["bass"]) > fxnorm.HAAS_MONO_THRESHOLD["bass"]
    again = fxnorm.normalize_stems(stems, mst_stats, order="mst_inference", seed=0)
    for stem in fxnorm.STEM_NAMES:
        assert np.array_equal(again[stem], normalized["song_a"][stem]), stem
    other_seed = fxnorm.normalize_stems({"bass": stems["bass"]}, mst_stats, order="mst_inference", seed=1)
    assert not np.array_equal(other_seed["bass"], normalized["song_a"]["bass"])


def test_fxnorm_order_with_fxnorm_statistics(songs, fxnorm_stats_path):
    stats = FxStats.load(fxnorm_stats_path)
    calls = []
    out = fxnorm.normalize_stems(songs["song_a"], stats, order="fxnorm",
                                 progress=lambda label, fraction: calls.append((label, fraction)))
    assert len(calls) == 16 and calls[-1][1] == 1.0 and {label.split(":")[0] for label, _ in calls} == set(fxnorm.STEM_NAMES)
    for stem, y in out.items():
        assert abs(dsp.integrated_loudness(y) - stats.stems[stem].loudness) < 0.5, stem


def test_wrong_statistics_for_the_order_or_unknown_stem_are_user_errors(songs, mst_stats, fxnorm_stats_path):
    with pytest.raises(ConfigError, match="panning"):
        fxnorm.normalize_stems({"bass": songs["song_a"]["bass"]}, mst_stats, order="fxnorm")
    with pytest.raises(ConfigError, match="imager"):
        fxnorm.normalize_stems({"bass": songs["song_a"]["bass"]}, FxStats.load(fxnorm_stats_path))
    with pytest.raises(StemLayoutError, match="piano"):
        fxnorm.normalize_stems({"piano": songs["song_a"]["bass"]}, mst_stats)


def test_silent_and_mono_stems(mst_stats):
    silent = np.zeros((44100 * 2, 2), dtype=np.float32)
    tone = 0.1 * np.sin(2 * np.pi * 220 * np.arange(44100 * 3) / 44100).astype(np.float32)
    out = fxnorm.normalize_stems({"vocals": silent, "bass": tone}, mst_stats)
    assert np.array_equal(out["vocals"], silent)            # gated: passed through
    assert out["bass"].shape == (tone.shape[0], 2)          # mono in, stereo out


# --- individual steps -------------------------------------------------------------------------------------

def test_eq_boost_is_clamped_on_a_huge_high_frequency_deficit(mst_stats, rng):
    # Noise low-passed at 1 kHz: at 8–16 kHz it is ~100 dB below the vocals statistic's shape.
    sos = signal.butter(8, 1000, fs=44100, output="sos")
    dull = signal.sosfilt(sos, rng.standard_normal((44100 * 6, 2)), axis=0) * 0.1
    x = np.pad(dull, ((fxnorm.STEP_PAD, fxnorm.STEP_PAD), (0, 0)))
    eq = fxnorm.EqMatch(mst_stats.stems["vocals"].eq, min_db=-40)
    unclamped = fxnorm.EqMatch(mst_stats.stems["vocals"].eq, min_db=-40, max_gain_db=np.inf)
    channel = dsp.lufs_norm(x[:, 0], fxnorm.EQ_LUFS)
    band = slice(int(8000 * 65536 / 44100), int(16000 * 65536 / 44100))
    assert np.min(unclamped.net_gain_db(channel)[band]) > 30      # what the released code would apply

    y = eq(x)
    spectrum_in = dsp.average_magnitude_spectrum(channel, 65536, 16384)[0]
    spectrum_out = dsp.average_magnitude_spectrum(y[:, 0], 65536, 16384)[0]
    gain_db = dsp.db(spectrum_out[band]) - dsp.db(spectrum_in[band])
    assert np.max(gain_db) < fxnorm.EQ_MAX_GAIN_DB + 0.5
    assert np.median(gain_db) > fxnorm.EQ_MAX_GAIN_DB - 1.0        # and the clamp is actually reached


def test_hfc_onsets_find_each_note_just_before_it(rng):
    sr = 44100
    x = rng.standard_normal(sr * 4) * 1e-4
    notes = np.arange(8000, sr * 4 - sr // 2, sr // 3)
    decay = np.exp(-np.arange(sr // 4) / 3000.0)
    for start in notes:
        x[start:start + decay.size] += 0.3 * np.sin(2 * np.pi * 880 * np.arange(decay.size) / sr) * decay
    onsets = fxnorm.hfc_onsets(x)
    assert onsets.size == notes.size
    # aubio reports an onset 4403 samples before it confirms it: 1–3 frames before the note's frame
    assert np.all((onsets > notes - 3 * 1024) & (onsets <= notes))


def test_compression_search_agrees_with_brute_force(songs, mst_stats):
    stem = "drums"
    x = np.pad(songs["song_a"][stem][:44100 * 6].astype(np.float64), ((fxnorm.STEP_PAD, fxnorm.STEP_PAD), (0, 0)))
    x = fxnorm.peak_normalize(fxnorm.EqMatch(mst_stats.stems[stem].eq, -40)(x)[:, 0], fxnorm.COMP_PEAK_DB)
    mean_db, std_db = mst_stats.stems[stem].compression
    setting = fxnorm.COMP_SETTINGS[stem]
    y, result = fxnorm.search_compression(x, mean_db, std_db, setting)
    assert result.ratio == setting.ratio and result.passes <= 6
    assert result.final_mean_db < mean_db + std_db <= result.peak_stat[0]
    # The released search, restricted to r0: the first threshold whose output gets below μ+σ.
    for threshold in fxnorm.COMP_THRESHOLDS_DB:
        z = dsp.compress(x, threshold, setting.ratio, setting.attack_ms, setting.release_ms)
        if fxnorm.onset_peak_stat(z)[0] < mean_db + std_db:
            break
    assert threshold == result.threshold_db
    assert np.array_equal(y, z)
    assert dsp.peak(y) < dsp.peak(x)      # compressed, no make-up gain


def test_panning_acts_on_the_whole_stem_below_the_cap_only(songs, fxnorm_stats_path):
    stats = FxStats.load(fxnorm_stats_path)
    x = songs["song_c"]["drums"].astype(np.float64)            # 19.7 s
    step = fxnorm.PanningMatch(stats.stems["drums"].panning, fxnorm.PAN_MAX_FREQ_HZ["drums"])
    y = step(x)
    side = step.leaning_side(np.pad(x, ((fxnorm.PAN_FFT, fxnorm.PAN_FFT), (0, 0))))
    offset = np.array([0.3, 0.7]) if side > 0 else np.array([0.7, 0.3])
    late = slice(44100 * 12, 44100 * 19)    # after frame 278 (6.5 s), where the released code stopped
    spec_in = np.abs(dsp.stft_np(x[late] * offset, 2048, 1024)).mean(axis=0)
    spec_out = np.abs(dsp.stft_np(y[late], 2048, 1024)).mean(axis=0)
    ratio = spec_out / spec_in
    below = slice(int(200 * 2048 / 44100), int(5000 * 2048 / 44100))
    above = slice(int(8000 * 2048 / 44100), int(15000 * 2048 / 44100))
    assert np.max(np.abs(ratio[:, below] - 1)) > 0.1              # re-panned below 6 kHz, also late
    assert np.allclose(ratio[:, above], 1, atol=0.01)             # only the fixed offset above


def test_loudness_step_hits_the_target_even_when_peaks_exceed_full_scale():
    clicks = np.zeros((44100 * 4, 2))
    clicks[::22050] = 0.9                                           # crest factor far above 25 dB
    y = fxnorm.LoudnessMatch(-25.0)(clicks)
    assert dsp.integrated_loudness(y) == pytest.approx(-25.0, abs=0.01)
    assert dsp.peak(y) > 1.0


# --- fitting ------------------------------------------------------------------------------------------------

def test_fit_on_a_tiny_folder_and_load_the_result(real_stems, tmp_path, mst_stats):
    for song in ("song_a", "song_c"):
        (tmp_path / "songs" / song).mkdir(parents=True)
        for stem in fxnorm.STEM_NAMES:
            audio, rate = sf.read(real_stems / song / f"{stem}.wav", frames=44100 * 6, start=44100 * 4)
            sf.write(tmp_path / "songs" / song / f"{stem}.wav", audio, rate)
    (tmp_path / "songs" / "song_c" / "vocals.wav").unlink()            # a missing stem is skipped
    sf.write(tmp_path / "songs" / "song_a" / "notes.txt.wav", np.zeros((10, 2)), 44100)   # ignored name

    stats = fit(tmp_path / "songs", flavour="mst")
    assert stats.metadata["songs_used"]["eq"] == {"drums": 2, "bass": 2, "other": 2, "vocals": 1}
    assert stats.metadata["order"] == ["eq", "compression", "imager", "loudness"]
    for stem, s in stats.stems.items():
        assert -40 < s.loudness < -15 and 0.5 < s.imager <= 1.0 and s.eq.shape == (32769,)
    loaded = FxStats.load(stats.save(tmp_path / "mine.npz"))
    assert loaded.stems["bass"].loudness == stats.stems["bass"].loudness
    out = fxnorm.normalize_stems({"bass": read_song(real_stems / "song_b")["bass"]}, loaded)
    assert abs(dsp.integrated_loudness(out["bass"]) - loaded.stems["bass"].loudness) < 0.5


def test_fit_rejects_a_folder_without_songs(tmp_path):
    with pytest.raises(StemLayoutError, match="no song folders"):
        fit(tmp_path)


def _compress_by_the_spec(x, threshold_db, ratio, attack_ms, release_ms, sr=44100):
    """§1.3 written out plainly, one channel: detector 20·log10|x| (−120 dB below 1e-6), hard knee,
    one-pole smoothing of the gain reduction (attack while it rises, release while it falls)."""
    alpha_attack, alpha_release = np.exp(-1.0 / (0.001 * sr * attack_ms)), np.exp(-1.0 / (0.001 * sr * release_ms))
    out, smoothed = np.empty_like(x), 0.0
    for n, sample in enumerate(x):
        level = 20.0 * np.log10(abs(sample)) if abs(sample) >= 1e-6 else -120.0
        target = (level - threshold_db) * (1.0 - 1.0 / ratio) if level >= threshold_db else 0.0
        alpha = alpha_attack if target > smoothed else alpha_release
        smoothed = alpha * smoothed + (1.0 - alpha) * target
        out[n] = sample * 10.0 ** (-smoothed / 20.0)
    return out


@pytest.mark.parametrize("threshold_db", [-20.0, -60.0, -130.0])
def test_the_compressor_follows_the_spec_in_every_layout(threshold_db, rng):
    x = rng.standard_normal((2000, 2)) * np.linspace(0.0, 0.5, 2000)[:, None]
    x[500:700] = 0.0                                     # silence: below the detector's floor
    expected = np.stack([_compress_by_the_spec(x[:, c], threshold_db, 6.0, 2.0, 30.0) for c in range(2)], axis=1)
    np.testing.assert_allclose(dsp.compress(x, threshold_db, 6.0, 2.0, 30.0), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dsp.compress(x[:, 0], threshold_db, 6.0, 2.0, 30.0), expected[:, 0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dsp.compress(x[:, :1], threshold_db, 6.0, 2.0, 30.0), expected[:, :1], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dsp.compress(np.ascontiguousarray(x.T), threshold_db, 6.0, 2.0, 30.0, time_axis=-1),
                               expected.T, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="time_axis"):
        dsp.compress(x, threshold_db, 6.0, 2.0, 30.0, time_axis=1)
