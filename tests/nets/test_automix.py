"""The FxNorm-automix networks and their losses (docs/ALGORITHMS.md §6.1–§6.3)."""
import numpy as np
import pytest
import torch
from scipy import signal

from mixdaemon.errors import ConfigError
from mixdaemon.nets.automix import (
    AUTOMIX_PRESETS,
    WAVEUNET_PRESETS,
    AutomixConfig,
    AutomixNet,
    WaveUNet,
    WaveUNetConfig,
    a_weighting_fir,
    automix_loss,
    min_loss_length,
)


def _parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_full_sizes_are_the_papers():
    # The paper counts 2 752 817: also the last TCN block's residual conv (128·256 + 256), which the
    # released model builds but never uses (§6.1: "absent in the last block"); we do not build it.
    ours = AutomixNet(AutomixConfig())
    assert _parameters(ours) == 2_752_817 - (128 * 256 + 256)
    assert AutomixConfig().guard == 32_446  # 505·64 + 63 + 63 (§6.1)
    # The paper counts 2 477 162 including the fixed identity-resampler filters (720 channels × 15 taps,
    # down and up), which are not weights here.
    wun = WaveUNet(WaveUNetConfig())
    assert _parameters(wun) == 2_477_162 - 2 * 720 * 15
    with torch.no_grad():
        assert wun(torch.zeros(1, 8, 1000)).shape == (1, 2, 1000 - 68)  # 440 960 → 440 892 at 10 s


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_automix_net_mixes_eight_channels_to_a_bounded_stereo_signal(size):
    torch.manual_seed(0)
    model = AutomixNet(AUTOMIX_PRESETS[size]).eval()
    x = torch.randn(2, 8, 64 * 64)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 2, 64 * 64)
    assert torch.isfinite(y).all() and y.abs().max() <= 1.0  # tanh output (float32 rounds its tails to 1)
    with torch.no_grad():  # the items of a batch are mixed independently
        assert torch.allclose(model(x[1:]), y[1:], atol=1e-5)


def test_inputs_the_networks_cannot_take_are_refused_with_the_reason():
    model = AutomixNet(AUTOMIX_PRESETS["tiny"])
    with pytest.raises(ValueError, match="multiple of 16"):
        model(torch.zeros(1, 8, 1000))
    with pytest.raises(ValueError, match=r"\[B, 8, T\]"):
        model(torch.zeros(1, 2, 1024))
    with pytest.raises(ValueError, match="T > 36"):
        WaveUNet(WAVEUNET_PRESETS["tiny"])(torch.zeros(1, 8, 30))
    with pytest.raises(ConfigError, match="basis"):
        AutomixConfig(basis=7)
    with pytest.raises(ConfigError, match="multiples of 8"):
        WaveUNetConfig(channels=(8, 12))
    with pytest.raises(ConfigError, match="unknown key"):
        AutomixConfig.from_dict({"bases": 8})


def test_wave_u_net_clamps_only_in_eval_mode():
    torch.manual_seed(0)
    model = WaveUNet(WAVEUNET_PRESETS["tiny"])
    with torch.no_grad():
        model.output.bias.fill_(5.0)
        x = torch.randn(1, 8, 200)
        assert model.train()(x).max() > 1.0
        assert model.eval()(x).abs().max() <= 1.0


def test_a_weighting_prefilter_follows_the_standard_curve():
    # IEC 61672 A-weighting: −19.1 dB at 100 Hz, 0 dB at 1 kHz, +1.3 dB at 2.5 kHz, −2.5 dB at 10 kHz.
    # A 101-tap fit of the bilinear design is within 2 dB of it (shallower at 100 Hz, warped at 10 kHz).
    _, response = signal.freqz(a_weighting_fir(), worN=[100.0, 1000.0, 2500.0, 10000.0], fs=44100)
    assert np.allclose(20 * np.log10(np.abs(response)), [-19.1, 0.0, 1.3, -2.5], atol=2.0)


def _noise(rng, length=None):
    return torch.from_numpy(rng.standard_normal((2, 2, length or min_loss_length() + 2048)).astype(np.float32)) * 0.1


@pytest.mark.parametrize("kind", ["La", "Lb"])
def test_losses_are_zero_only_for_the_target_and_grow_with_the_difference(kind, rng):
    target = _noise(rng)
    assert float(automix_loss(target, target, kind)) == pytest.approx(0.0, abs=1e-6)
    near, far = automix_loss(target * 0.9, target, kind), automix_loss(target * 0.5, target, kind)
    assert 0 < float(near) < float(far)
    # the difference channel counts: a mono fold-down of a wide target is far from it
    mono = target.mean(dim=1, keepdim=True).expand_as(target)
    assert float(automix_loss(mono, target, kind)) > float(near)


def test_lb_punishes_magnitude_errors_in_absolute_terms_la_relative_to_the_target(rng):
    target = _noise(rng)
    ratio = {kind: float(automix_loss(10 * target * 0.5, 10 * target, kind))
             / float(automix_loss(target * 0.5, target, kind)) for kind in ("La", "Lb")}
    assert ratio["La"] == pytest.approx(1.0, rel=1e-3)  # spectral convergence and log terms are scale-free
    assert ratio["Lb"] > 10  # the squared-magnitude term scales with the level


def test_loss_gradient_stays_finite_on_a_silent_output(rng):
    target = _noise(rng)
    output = torch.zeros_like(target, requires_grad=True)
    automix_loss(output, target, "Lb").backward()
    assert torch.isfinite(output.grad).all()


def test_loss_refuses_signals_too_short_for_its_edge_frames(rng):
    with pytest.raises(ValueError, match="at least"):
        automix_loss(_noise(rng, 44100), _noise(rng, 44100))
    with pytest.raises(ConfigError, match="La or Lb"):
        automix_loss(_noise(rng), _noise(rng), "L1")
