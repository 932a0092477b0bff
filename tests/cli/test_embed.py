"""`mixdaemon embed FILE... --out emb.npy` with a model pair from the model store."""
import numpy as np
import soundfile as sf
import torch

from mixdaemon.cli.main import main
from mixdaemon.nets.mst import ClonerConfig, EncoderConfig, FXencoder, MixFXcloner
from mixdaemon.nets.store import save_pair

SMALL_ENCODER = EncoderConfig(channels=(8, 8, 16, 16), kernels=(9, 9, 5, 5), strides=(4, 4, 2, 2))


def test_embed_writes_one_row_per_file_and_ignores_trailing_silence(tmp_path, real_stems, monkeypatch, capsys):
    torch.manual_seed(0)
    encoder = FXencoder(SMALL_ENCODER).eval()
    cloner = MixFXcloner(ClonerConfig(nblocks=2, channel_width=4, cond_dim=encoder.config.embedding_dim)).eval()
    save_pair(tmp_path / "store" / "tiny.safetensors", encoder, cloner)
    monkeypatch.setenv("MIXDAEMON_ENGINES", str(tmp_path / "store"))
    data, rate = sf.read(real_stems / "song_a" / "drums.wav", dtype="float32")
    sf.write(tmp_path / "drums.wav", data[: 4 * rate], rate)
    sf.write(tmp_path / "drums_tail.wav", np.concatenate([data[: 4 * rate], np.zeros((2 * rate, 2))]), rate)
    sf.write(tmp_path / "vocals.wav", sf.read(real_stems / "song_a" / "vocals.wav", dtype="float32")[0][: 4 * rate], rate)
    out = tmp_path / "emb.npy"
    code = main(["embed", str(tmp_path / "drums.wav"), str(tmp_path / "drums_tail.wav"), str(tmp_path / "vocals.wav"),
                 "--out", str(out), "--model", "tiny"])
    assert code == 0, capsys.readouterr().err
    e = np.load(out)
    assert e.shape == (3, encoder.config.embedding_dim)
    np.testing.assert_allclose(e[0], e[1], rtol=1e-5, atol=1e-6)  # silence adds nothing to the style
    # another sound gives another embedding (a random small encoder separates them only weakly)
    assert np.abs(e[0] - e[2]).max() > 10 * np.abs(e[0] - e[1]).max() + 1e-6
