"""FXencoder and MixFXcloner against the authors' reference: state_dict layout, parameter counts and
the v2 golden outputs of ../shared/reference (README there)."""
import json

import numpy as np
import pytest
import torch

from mixdaemon.errors import ConfigError
from mixdaemon.nets.mst import ClonerConfig, EncoderConfig, FXencoder, MixFXcloner
from tests.support.models import v2_model

torch.set_num_threads(2)

def sine_pair() -> torch.Tensor:
    t = np.arange(88200, dtype=np.float64)
    x = np.stack([0.5 * np.sin(2 * np.pi * f * t / 44100) for f in (220.0, 330.0)])
    return torch.from_numpy(x.astype(np.float32))[None]


@pytest.fixture(scope="module")
def reference(shared_dir):
    return shared_dir / "reference"


@pytest.fixture(scope="module")
def golden_encoder(reference):
    """The v2 FXencoder and its output on the sine pair (shared by the encoder and cloner tests)."""
    encoder = v2_model(FXencoder())
    with torch.no_grad():
        return encoder, encoder(sine_pair())


@pytest.mark.parametrize("model_cls, manifest", [(FXencoder, "mst_fxencoder_state_dict.json"),
                                                 (MixFXcloner, "mst_mixfxcloner_state_dict.json")])
def test_default_models_have_the_authors_state_dict_layout(reference, model_cls, manifest):
    spec = json.loads((reference / manifest).read_text())
    model = model_cls()
    ours = [(name, list(t.shape)) for name, t in model.state_dict().items()]
    assert ours == [(t["name"], t["shape"]) for t in spec["tensors"]]
    assert sum(p.numel() for p in model.parameters()) == spec["num_parameters"]
    # what loading the official checkpoints does: a strict load of tensors with the manifest's names
    dtypes = {"float32": torch.float32, "int64": torch.int64}
    model.load_state_dict({t["name"]: torch.zeros(t["shape"], dtype=dtypes[t["dtype"]]) for t in spec["tensors"]},
                          strict=True)


def test_parameter_counts():
    assert sum(p.numel() for p in FXencoder().parameters()) == 81_392_682
    assert sum(p.numel() for p in MixFXcloner().parameters()) == 10_547_970


def test_fxencoder_matches_v2_golden(reference, golden_encoder):
    _, e = golden_encoder
    expected = np.load(reference / "golden_v2_fxencoder.npy")
    assert e.shape == (1, 2048)
    np.testing.assert_allclose(e[0].numpy(), expected, rtol=0, atol=1e-4 * np.abs(expected).max())


def test_mixfxcloner_matches_v2_golden(reference, golden_encoder):
    golden = np.load(reference / "golden_v2_mixfxcloner.npz")
    _, e = golden_encoder
    np.testing.assert_allclose(e[0].numpy(), golden["embedding"], rtol=0, atol=1e-4 * np.abs(golden["embedding"]).max())
    cloner = v2_model(MixFXcloner())
    x = sine_pair()
    with torch.no_grad():
        # the golden embedding itself, so that this test checks only the cloner
        y = cloner(x, torch.from_numpy(golden["embedding"])[None])[0].numpy()
    assert y.shape == (2, 88200)
    for key, part in (("decimated", y[:, ::441]), ("first64", y[:, :64]), ("last64", y[:, -64:])):
        np.testing.assert_allclose(part, golden[key], rtol=0, atol=1e-4, err_msg=key)


def test_receptive_field_and_min_input_length_follow_the_config():
    assert ClonerConfig().receptive_field == 229_363
    assert ClonerConfig(nblocks=3, kernel_size=5, dilation_growth=3).receptive_field == 1 + 4 * (1 + 3 + 9)
    assert ClonerConfig(nblocks=4, dilation_growth=2, stack_size=2).dilations == [1, 2, 1, 2]
    assert EncoderConfig().min_input_length == 8193
    encoder = FXencoder().eval()
    with torch.no_grad():
        assert encoder(torch.zeros(1, 2, 8193)).shape == (1, 2048)
        with pytest.raises(RuntimeError):
            encoder(torch.zeros(1, 2, 8192))
    small = FXencoder(EncoderConfig(channels=(4, 8, 8), kernels=(9, 6, 3), strides=(4, 2, 1))).eval()
    n = small.config.min_input_length
    with torch.no_grad():
        assert small(torch.zeros(1, 2, n)).shape == (1, 8)
        with pytest.raises(RuntimeError):
            small(torch.zeros(1, 2, n - 1))


@pytest.mark.parametrize("length", [1, 1000, 4097])
def test_cloner_output_length_equals_input_length(length):
    cloner = v2_model(MixFXcloner(ClonerConfig(nblocks=4, channel_width=8, cond_dim=16)))
    with torch.no_grad():
        y = cloner(torch.rand(3, 2, length) - 0.5, torch.rand(1, 16))
    assert y.shape == (3, 2, length)


def test_cloner_is_centred_on_its_receptive_field():
    """An impulse spreads exactly receptive_field // 2 samples to each side, no further."""
    cfg = ClonerConfig(nblocks=4, channel_width=8, kernel_size=5, dilation_growth=3, cond_dim=16)
    cloner = v2_model(MixFXcloner(cfg))
    x = torch.zeros(1, 2, 801)
    cond = torch.rand(1, 16)
    with torch.no_grad():
        base = cloner(x, cond)
        x[0, :, 400] = 0.5
        changed = (cloner(x, cond) - base).abs().amax(dim=(0, 1)).nonzero().flatten()
    half = cfg.receptive_field // 2
    assert changed.min() == 400 - half and changed.max() == 400 + half


def test_configs_round_trip_and_refuse_bad_values():
    enc = EncoderConfig(channels=(4, 8), kernels=(5, 3), strides=(2, 1))
    assert EncoderConfig.from_dict(json.loads(json.dumps(enc.to_dict()))) == enc
    cl = ClonerConfig(nblocks=6, channel_width=8)
    assert ClonerConfig.from_dict(json.loads(json.dumps(cl.to_dict()))) == cl
    with pytest.raises(ConfigError, match="channel_widht"):
        ClonerConfig.from_dict({"channel_widht": 8})
    with pytest.raises(ConfigError, match="kernel_size"):
        ClonerConfig(kernel_size=4)
    with pytest.raises(ConfigError, match="same length"):
        EncoderConfig(channels=(4, 8), kernels=(5,), strides=(2, 1))


def test_small_cloner_and_encoder_train():
    """The in-place inference arithmetic must leave autograd intact (training uses these modules)."""
    torch.manual_seed(0)
    encoder = FXencoder(EncoderConfig(channels=(4, 8), kernels=(5, 3), strides=(4, 1))).train()
    cloner = MixFXcloner(ClonerConfig(nblocks=3, channel_width=8, cond_dim=8)).train()
    x = torch.rand(2, 2, 2000) - 0.5
    y = cloner(x, encoder(x))
    y.square().mean().backward()
    grads = [p.grad for p in (*encoder.parameters(), *cloner.parameters())]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert cloner.blocks[0].film.film_fc.weight.grad.abs().sum() > 0
