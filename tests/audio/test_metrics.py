"""audio.metrics: L_MSS, FxNorm feature distances, embedding distance; and
the loudness and true-peak meters they rely on (audio.dsp, audio.mastering).

Known answers are derived in each test's docstring; the real-music tests use song_a's mixture."""
import numpy as np
import pytest
import soundfile as sf
import torch
from scipy import signal

from mixdaemon.audio import metrics
from mixdaemon.audio.dsp import integrated_loudness
from mixdaemon.audio.mastering import true_peak_dbtp
from mixdaemon.errors import MixdaemonError

SR = 44100
PANNING_KEYS = ("panning_total", "panning_low", "panning_mid", "panning_high")


@pytest.fixture(scope="module")
def song(real_stems) -> np.ndarray:
    """6 s of a real stereo mixture, float32 (n, 2)."""
    x, sr = sf.read(real_stems / "song_a" / "mixture.wav", dtype="float32")
    assert sr == SR and x.shape[1] == 2
    return x[2 * SR:8 * SR]


@pytest.fixture(scope="module")
def clip(song) -> np.ndarray:
    """The first 3 s of the excerpt: enough for every L_MSS scale, and quick."""
    return song[:3 * SR]


def _as_batch(*signals: np.ndarray) -> torch.Tensor:
    """(n, 2) arrays → one [B, 2, n] float32 tensor."""
    return torch.from_numpy(np.stack([s.T for s in signals]).astype(np.float32))


def _faded(x: np.ndarray, seconds: float = 0.01) -> np.ndarray:
    """Raised-cosine fade in/out, so that a test tone does not start with a step."""
    n = int(seconds * SR)
    ramp = np.sin(np.linspace(0.0, np.pi / 2, n)) ** 2
    envelope = np.ones(x.shape[0])
    envelope[:n], envelope[-n:] = ramp, ramp[::-1]
    return x * envelope[:, None]


# --- L_MSS ------------------------------------------------------------------------------------------

def test_mss_is_zero_for_identical_signals(clip):
    batch = _as_batch(clip, clip[::-1])
    assert metrics.mss_loss_lr(batch, batch.clone()).item() == 0.0
    assert metrics.mss_loss_ms(batch, batch.clone()).item() == 0.0
    assert metrics.mss_distance(clip, clip, mode="lr") == 0.0
    assert metrics.mss_distance(clip, clip, mode="ms") == 0.0


def test_mss_grows_with_the_difference(clip, real_stems, rng):
    vocals, _ = sf.read(real_stems / "song_a" / "vocals.wav", dtype="float32")
    vocals = vocals[2 * SR:5 * SR]
    noise = rng.standard_normal(clip.shape).astype(np.float32)
    for mode in ("lr", "ms"):
        louder_vocals = [metrics.mss_distance(clip + gain * vocals, clip, mode=mode) for gain in (0.1, 0.5, 1.0)]
        noisier = [metrics.mss_distance(clip + level * noise, clip, mode=mode) for level in (0.001, 0.01)]
        assert 0.0 < louder_vocals[0] < louder_vocals[1] < louder_vocals[2], mode
        assert 0.0 < noisier[0] < noisier[1], mode


def test_mss_is_differentiable_and_batched(clip, rng):
    target = _as_batch(clip[:SR // 2], 0.5 * clip[SR:SR + SR // 2])
    estimate = (target + 0.01 * torch.from_numpy(rng.standard_normal(target.shape).astype(np.float32)))
    estimate.requires_grad_(True)
    loss = metrics.mss_loss_lr(estimate, target) + metrics.mss_loss_ms(estimate, target)
    loss.backward()
    assert estimate.grad is not None and torch.isfinite(estimate.grad).all()
    assert estimate.grad.abs().sum() > 0
    # A batch's loss is the mean of its items' losses (both items have the same size).
    with torch.no_grad():
        per_item = [metrics.mss_loss_lr(estimate[i:i + 1], target[i:i + 1]).item() for i in range(2)]
        assert metrics.mss_loss_lr(estimate, target).item() == pytest.approx(np.mean(per_item), rel=1e-5)


def test_mss_formula_on_a_pure_gain(rng):
    """With estimate = g·target every bin has |Ŷ| = g·|Y| (the 1e-7 terms are negligible for loud
    white noise), so per scale LOG = (log10 g)² and L1 = |g − 1|·mean|Y|. Over the 4 scales:
    L_MSS(g) = 0.9·|g − 1|·S + 0.1·4·(log10 g)², S = Σ mean|Y|. g = 10 and g = 0.1 share the LOG
    part 0.4, and their L1 parts are in the ratio 9 : 0.9."""
    target = torch.from_numpy((0.1 * rng.standard_normal((1, 2, SR))).astype(np.float32))
    for loss in (metrics.mss_loss_lr, metrics.mss_loss_ms):
        up, down = loss(10.0 * target, target).item(), loss(0.1 * target, target).item()
        assert down > 1.0
        assert up - 0.4 == pytest.approx(10.0 * (down - 0.4), rel=1e-3)


def test_mss_mid_side_ignores_a_channel_swap(clip):
    """Swapping L and R keeps M = L+R and negates S = L−R, whose magnitude spectrum is unchanged: the
    M/S loss is 0 while the L/R loss is not."""
    swapped = clip[:, ::-1].copy()
    assert metrics.mss_distance(swapped, clip, mode="ms") < 1e-6
    assert metrics.mss_distance(swapped, clip, mode="lr") > 0.1


def test_mss_rejects_bad_input(clip):
    mono = torch.zeros(1, 1, 8192)
    with pytest.raises(ValueError, match=r"\[B, 2, T\]"):
        metrics.mss_loss_lr(mono, mono)
    with pytest.raises(ValueError, match="too short"):
        metrics.mss_loss_ms(torch.zeros(1, 2, 1000), torch.zeros(1, 2, 1000))
    with pytest.raises(ValueError, match="mode"):
        metrics.mss_distance(clip, clip, mode="xy")


# --- loudness and peak ------------------------------------------------------------------------------

def test_true_peak_detects_an_intersample_peak():
    """A sine at fs/4 with a 45° phase has samples at ±sin(45°) = ±0.707 (−3.01 dBFS) while the
    waveform itself reaches ±1 between them: true peak ≈ 0 dBTP."""
    n = np.arange(2 * SR)
    tone = np.sin(np.pi / 2 * n + np.pi / 4)
    x = _faded(np.stack([tone, tone], axis=1))
    assert 20 * np.log10(np.max(np.abs(x))) == pytest.approx(-3.0103, abs=0.01)
    assert true_peak_dbtp(x) == pytest.approx(0.0, abs=0.05)
    assert true_peak_dbtp(np.zeros((100, 2))) == pytest.approx(-600.0)


def test_integrated_loudness_of_a_997hz_sine():
    """BS.1770: a 0 dBFS 997 Hz sine in one channel reads −3.01 LUFS, in both channels 0 LUFS.
    Tolerance 0.1 LU (EBU Tech 3341's): pyloudnorm's cookbook shelf filter reads ≈0.04 LU low."""
    t = np.arange(5 * SR) / SR
    tone = np.sin(2 * np.pi * 997 * t)
    assert integrated_loudness(np.stack([tone, 0 * tone], axis=1), SR) == pytest.approx(-3.01, abs=0.1)
    assert integrated_loudness(np.stack([tone, tone], axis=1), SR) == pytest.approx(0.0, abs=0.1)
    # No gating block fits in 0.1 s; silence has no loudness.
    assert integrated_loudness(np.stack([tone, tone], axis=1)[:SR // 10], SR) == -np.inf
    assert integrated_loudness(np.zeros((SR, 2)), SR) == -np.inf


# --- FxNorm feature distances -----------------------------------------------------------------------

def test_fxnorm_distances_are_zero_for_identical_signals(song):
    distances = metrics.fxnorm_feature_distances(song, song.copy())
    for group in ("loudness", "spectral", "panning", "dynamic"):
        assert group in distances
    assert len(distances) == 23
    for name, value in distances.items():
        assert value == 0.0, name


def test_fxnorm_loudness_of_a_6db_gain():
    """Target: a 997 Hz sine at amplitude 0.1 in both channels ≈ −20 LUFS (0 LUFS − 20 dB) with a
    −20 dBFS peak; output: the same +6 dB. Hand-computed MAPEs: d_lufs = |ΔL|/|L_t| = 6/20 = 0.30,
    d_peak = 6/20 = 0.30."""
    t = np.arange(3 * SR) / SR
    tone = 0.1 * np.sin(2 * np.pi * 997 * t)
    target = np.stack([tone, tone], axis=1)
    output = target * 10.0 ** (6.0 / 20.0)
    difference = integrated_loudness(output, SR) - integrated_loudness(target, SR)
    assert difference == pytest.approx(6.0, abs=0.05)
    distances = metrics.fxnorm_feature_distances(output, target)
    assert distances["d_lufs"] == pytest.approx(0.30, abs=0.003)
    assert distances["d_peak"] == pytest.approx(0.30, abs=0.001)
    assert distances["loudness"] == pytest.approx(0.30, abs=0.002)


def test_fxnorm_gain_moves_only_the_loudness_terms(song):
    """Everything but loudness is measured after peak normalization, so a gain leaves it at 0; on
    real music d_lufs = 6 LU / |L_target|."""
    target = 0.3 * song.astype(np.float64)
    output = target * 10.0 ** (6.0 / 20.0)
    distances = metrics.fxnorm_feature_distances(output, target)
    target_lufs = integrated_loudness(target)
    assert distances["d_lufs"] == pytest.approx(6.0 / abs(target_lufs), rel=0.01)
    for name, value in distances.items():
        if name not in ("d_lufs", "d_peak", "loudness"):
            assert abs(value) < 1e-9, name


def test_fxnorm_panning_known_answers(rng):
    """With R = g·L in every bin, φ = 2g/(1+g²) and |SPS| = 1 − φ = (1−g)²/(1+g²) in every bin, so the
    per-frame SPS RMS is that constant in every band: 1 for hard-left (g = 0), 0.2 for g = 0.5, 0
    for centred (g = 1). Each panning MAPE is |P_t − P_o| / P_t."""
    mono = rng.standard_normal(2 * SR) * 0.25
    hard_left = np.stack([mono, 0 * mono], axis=1)
    half_left = np.stack([mono, 0.5 * mono], axis=1)
    half_right = np.stack([0.5 * mono, mono], axis=1)
    centred = np.stack([mono, mono], axis=1)

    centred_vs_left = metrics.fxnorm_feature_distances(centred, hard_left)  # |1 − 0| / 1
    half_vs_left = metrics.fxnorm_feature_distances(half_left, hard_left)  # |1 − 0.2| / 1
    mirror = metrics.fxnorm_feature_distances(half_right, half_left)  # the RMS ignores the side
    for key in PANNING_KEYS + ("panning",):
        assert centred_vs_left[key] == pytest.approx(1.0, abs=1e-9), key
        assert half_vs_left[key] == pytest.approx(0.8, abs=1e-9), key
        assert mirror[key] == pytest.approx(0.0, abs=1e-9), key
    # A centred target has SPS = 0 everywhere; FxNorm drops those frames, leaving nothing to compare.
    left_vs_centred = metrics.fxnorm_feature_distances(hard_left, centred)
    assert all(np.isnan(left_vs_centred[key]) for key in PANNING_KEYS + ("panning",))
    assert np.isfinite(left_vs_centred["spectral"])


def test_fxnorm_spectral_and_dynamic_terms_react(song):
    """A 3 kHz low-pass moves the spectral terms (above all the high-band contrast) but hardly the
    low-band contrast; hard clipping moves the dynamic terms."""
    lowpassed = signal.lfilter(*signal.butter(2, 3000 / (SR / 2)), song, axis=0)
    darker = metrics.fxnorm_feature_distances(lowpassed, song)
    assert darker["centroid"] > 0.2 and darker["rolloff"] > 0.2 and darker["contrast_high"] > 0.2
    assert darker["contrast_low"] < 0.05
    assert darker["spectral"] == pytest.approx(np.mean([darker[k] for k in
                                                        ("centroid", "bandwidth", "contrast", "rolloff", "flatness")]))
    clipped = metrics.fxnorm_feature_distances(np.clip(3.0 * song, -0.5, 0.5), song)
    assert clipped["crest"] > 0.1 and clipped["rms"] > 0.1
    assert clipped["dynamic"] == pytest.approx(np.mean([clipped[k] for k in ("rms", "spread", "crest")]))
    assert clipped["dynamic"] > 10 * metrics.fxnorm_feature_distances(0.9 * song, song)["dynamic"] + 0.05


def test_fxnorm_rejects_unusable_input(song):
    with pytest.raises(MixdaemonError, match="at least 44032"):
        metrics.fxnorm_feature_distances(song[:40000], song[:40000])
    with pytest.raises(MixdaemonError, match="differ in length"):
        metrics.fxnorm_feature_distances(song[:-1], song)
    with pytest.raises(MixdaemonError, match="silent"):
        metrics.fxnorm_feature_distances(song, np.zeros_like(song))
    with pytest.raises(MixdaemonError, match=r"\(n_samples, 2\)"):
        metrics.fxnorm_feature_distances(song[:, 0], song[:, 0])


# --- embedding distance -----------------------------------------------------------------------------

def test_embedding_cosine_distance(rng):
    a = rng.random(2048)
    b = rng.random(2048)
    assert metrics.embedding_distance(a, a) == pytest.approx(0.0, abs=1e-12)
    assert metrics.embedding_distance(a, 3.0 * a) == pytest.approx(0.0, abs=1e-12)
    assert metrics.embedding_distance(np.array([1.0, 0.0]), np.array([0.0, 2.0])) == pytest.approx(1.0)
    assert metrics.embedding_distance(a, -a) == pytest.approx(2.0)
    expected = 1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert metrics.embedding_distance(torch.tensor(a)[None], torch.tensor(b)[None]) == pytest.approx(expected)
    assert metrics.embedding_distance(a, b, scale=0.5) == pytest.approx(0.5 * expected)
    with pytest.raises(ValueError):
        metrics.embedding_distance(a, b[:10])
