"""Training: procedural material, the data pipeline, the losses, a tiny end-to-end run that ends in a
pair the neural engine can load, and exact resumption from checkpoints."""
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mixdaemon.errors import ConfigError
from mixdaemon.fx.stats import default_stats_path
from mixdaemon.nets.mst import ClonerConfig, MixFXcloner
from mixdaemon.nets.store import load_pair, read_pair_info
from mixdaemon.train.cloner import ClonerTrainingConfig, identity_init
from mixdaemon.train.data import (
    StemLibrary,
    cloner_batch,
    encoder_batch,
    manipulators,
    trim_silence,
)
from mixdaemon.train.encoder import ENCODER_PRESETS, EncoderTrainingConfig, nt_xent
from mixdaemon.train.loop import read_log
from mixdaemon.train.material import (
    fluidsynth_available,
    make_material,
    midi_file,
    render_song,
)
from mixdaemon.train.runs import train_cloner, train_encoder
from tests.support.training import quick_loop

SEGMENT = 16384  # 0.37 s: the tiny encoder's crops are 0.19–0.37 s


def tiny_encoder_config(**overrides) -> EncoderTrainingConfig:
    return EncoderTrainingConfig(**{"model": ENCODER_PRESETS["tiny"].to_dict(), "steps": 4, "items": 2,
                                    "segment": SEGMENT, "validation_items": 2, **overrides})


def tiny_cloner_config(encoder: Path, **overrides) -> ClonerTrainingConfig:
    return ClonerTrainingConfig(**{"encoder": str(encoder), "steps": 4, "items_per_stem": 1, "segment": SEGMENT,
                                   "validation_items": 1, "lr": 1e-3,
                                   "model": {"nblocks": 3, "channel_width": 4, "kernel_size": 3,
                                             "dilation_growth": 2}, **overrides})


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> dict:
    """Three 4-s numpy-synth songs for training, one for validation, normalized once."""
    root = tmp_path_factory.mktemp("material")
    make_material(root / "train", songs=3, seconds=4.0, seed=0, renderer="numpy")
    make_material(root / "val", songs=1, seconds=4.0, seed=1, renderer="numpy")
    return {"songs_dir": root / "train", "val_dir": root / "val", "cache_dir": root / "cache"}


ENCODER_CPU_SECONDS = {}


@pytest.fixture(scope="module")
def trained_encoder(songs, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "encoder"
    started = time.process_time()
    path = train_encoder(tiny_encoder_config(), songs["songs_dir"], quick_loop(run), val_dir=songs["val_dir"],
                         cache_dir=songs["cache_dir"], threads=1)
    ENCODER_CPU_SECONDS["tiny"] = time.process_time() - started
    return path


# --- material ---------------------------------------------------------------------------------------

def test_numpy_material_is_seeded_and_in_musdb_layout(tmp_path):
    first = render_song((0, 3), 2.0, "numpy")
    assert render_song((0, 3), 2.0, "numpy")["drums"].tobytes() == first["drums"].tobytes()
    assert render_song((0, 4), 2.0, "numpy")["drums"].tobytes() != first["drums"].tobytes()
    folders = make_material(tmp_path, songs=2, seconds=1.0, seed=5, renderer="numpy")
    assert [f.name for f in folders] == ["song_0000", "song_0001"]
    assert all((f / f"{stem}.wav").is_file() for f in folders for stem in ("drums", "bass", "other", "vocals"))
    manifest = json.loads((tmp_path / "material.json").read_text())
    assert manifest["renderer"] == "numpy" and manifest["seed"] == 5
    with pytest.raises(ConfigError, match="seed 5"):
        make_material(tmp_path, songs=1, seconds=1.0, seed=6, renderer="numpy")


def test_midi_writer_orders_events_and_encodes_delta_times():
    from mixdaemon.train.material import _Part
    part = _Part(channel=0, program=33, pan=64, volume=100, notes=[(480, 200, 60, 100), (0, 100, 40, 90)])
    data = midi_file([part], tempo_bpm=120.0)
    assert data[:4] == b"MThd" and data[14:18] == b"MTrk"
    assert int.from_bytes(data[18:22], "big") == len(data) - 22
    assert b"\xff\x51\x03" + (500000).to_bytes(3, "big") in data  # 120 bpm
    assert data.index(bytes([0x90, 40, 90])) < data.index(bytes([0x90, 60, 100]))  # time order
    assert data.endswith(b"\xff\x2f\x00")


@pytest.mark.skipif(not fluidsynth_available(), reason="fluidsynth and a GM soundfont are not installed")
def test_fluidsynth_material_renders_four_audible_stems_deterministically():
    stems = render_song((0, 0), 2.0, "fluidsynth")
    assert set(stems) == {"drums", "bass", "other", "vocals"}
    assert all(x.shape == (88200, 2) and x.dtype == np.float32 for x in stems.values())
    assert all(np.sqrt(np.mean(x ** 2)) > 1e-3 for x in stems.values())
    assert render_song((0, 0), 2.0, "fluidsynth")["bass"].tobytes() == stems["bass"].tobytes()


# --- data -------------------------------------------------------------------------------------------

def test_trim_silence_drops_quiet_windows_only():
    loud = np.full((4410, 2), 0.1, dtype=np.float32)
    quiet = np.full((4410, 2), 1e-4, dtype=np.float32)  # −80 dBFS
    x = np.concatenate([quiet, loud, quiet, quiet, loud])
    assert np.array_equal(trim_silence(x), np.concatenate([loud, loud]))
    assert len(trim_silence(np.zeros((100, 2), dtype=np.float32))) == 0


def test_library_caches_normalized_stems_and_batches_are_seeded(songs):
    library = StemLibrary(songs["songs_dir"], default_stats_path("mst"), songs["cache_dir"])
    cached = sorted(p.name for p in (songs["cache_dir"] / "song_0000").iterdir())
    assert cached == sorted(f"{s}_normalized_mst_training_silence_trimmed.npy" for s in library.files)
    started = time.perf_counter()
    StemLibrary(songs["songs_dir"], default_stats_path("mst"), songs["cache_dir"])
    assert time.perf_counter() - started < 2.0  # the second time nothing is normalized again

    fx = manipulators()
    batch = encoder_batch(library, fx, np.random.default_rng(3), items=2, length=SEGMENT, strong_negatives=1)
    again = encoder_batch(library, fx, np.random.default_rng(3), items=2, length=SEGMENT, strong_negatives=1)
    assert set(batch.views) == {"drums", "bass", "other", "vocals", "mixture"}
    a, b = batch.views["vocals"]
    assert a.shape[:2] == b.shape[:2] == (4, 2) and SEGMENT // 2 <= a.shape[-1] < SEGMENT
    assert torch.equal(a, again.views["vocals"][0])
    assert torch.allclose(batch.views["mixture"][0], sum(batch.views[s][0] for s in library.files))

    triplets = cloner_batch(library, fx, np.random.default_rng(4), items_per_stem=1, length=SEGMENT)
    assert triplets.input.shape == triplets.target.shape == triplets.reference.shape == (4, 2, SEGMENT)
    assert triplets.target.abs().max() <= 1.0


# --- losses and initialisation ----------------------------------------------------------------------

def test_nt_xent_follows_its_definition_and_rewards_matching_pairs():
    torch.manual_seed(0)
    z_i, z_j = torch.rand(3, 8), torch.rand(3, 8)
    loss, _ = nt_xent(z_i, z_j, 0.5)
    z = torch.nn.functional.normalize(torch.cat([z_i, z_j]), dim=1)
    s = z @ z.T / 0.5
    expected = 0.0
    for k in range(6):
        positive = (k + 3) % 6
        others = [s[k, m] for m in range(6) if m != k]
        expected += -s[k, positive] + torch.logsumexp(torch.stack(others), 0)
    assert loss.item() == pytest.approx(expected.item() / 6, rel=1e-5)
    matching, accuracy = nt_xent(torch.eye(4) * 5, torch.eye(4) * 5, 0.1)
    assert accuracy.item() == 1.0 and matching.item() < loss.item()


def test_identity_init_makes_the_cloner_pass_audio_through():
    cloner = MixFXcloner(ClonerConfig(nblocks=4, channel_width=8, kernel_size=5, dilation_growth=4, cond_dim=16))
    identity_init(cloner)
    x = torch.rand(2, 2, 5000) - 0.5
    assert torch.allclose(cloner.train()(x, torch.randn(2, 16)), x, atol=1e-6)


# --- training runs ----------------------------------------------------------------------------------

def test_tiny_training_end_to_end_gives_a_pair_the_neural_engine_uses(songs, trained_encoder, tmp_path):
    started = time.process_time()
    out = train_cloner(tiny_cloner_config(trained_encoder), songs["songs_dir"], quick_loop(tmp_path / "cloner"),
                       val_dir=songs["val_dir"], cache_dir=songs["cache_dir"], threads=1,
                       out=tmp_path / "store" / "tiny.safetensors")
    # CPU seconds of the process (all threads), not wall time, so that a busy machine cannot fail
    # it; on an idle 2-core machine the wall time is at most this
    assert ENCODER_CPU_SECONDS["tiny"] + time.process_time() - started < 60
    info = read_pair_info(out)
    assert info.training["encoder"]["steps"] == 4 and info.training["cloner"]["steps"] == 4
    assert info.training["data"]["songs"] == 3
    assert info.cloner.config.cond_dim == info.encoder.config.embedding_dim == 32
    logged = read_log(tmp_path / "cloner", "val", "ratio_lr")
    assert sorted(logged) == [2, 4] and all(np.isfinite(v) for v in logged.values())

    from mixdaemon.fx.stats import FxStats
    from mixdaemon.mixing.neural import NeuralEngine
    from mixdaemon.nets.backends import create_backend
    encoder, cloner, info = load_pair("tiny", store=tmp_path / "store")
    engine = NeuralEngine(create_backend("torch", encoder, cloner, info), info, FxStats.load(default_stats_path("mst")))
    library = StemLibrary(songs["val_dir"], default_stats_path("mst"), songs["cache_dir"] / "validation")
    stems = {s: np.array(np.load(library.files[s][0][0])[:44100]) for s in library.files}
    converted = engine.convert(stems, stems).stems
    assert all(converted[s].shape == stems[s].shape and np.isfinite(converted[s]).all() for s in stems)


def test_resumed_encoder_run_follows_the_uninterrupted_loss_curve(songs, tmp_path):
    cfg = tiny_encoder_config(steps=5)
    common = {"val_dir": songs["val_dir"], "cache_dir": songs["cache_dir"], "threads": 2}
    train_encoder(cfg, songs["songs_dir"], quick_loop(tmp_path / "straight"), **common)
    # interrupted after step 3 — between the validations of steps 2 and 4, which reschedule the
    # FX probabilities — then resumed
    train_encoder(cfg, songs["songs_dir"], quick_loop(tmp_path / "resumed", stop_after=3), **common)
    assert max(read_log(tmp_path / "resumed")) == 3
    train_encoder(cfg, songs["songs_dir"], quick_loop(tmp_path / "resumed", resume=True), **common)
    for phase, metric in (("train", "loss"), ("val", "loss"), ("val", "p_eq")):
        straight = read_log(tmp_path / "straight", phase, metric)
        assert read_log(tmp_path / "resumed", phase, metric) == straight and len(straight) >= 2
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    with pytest.raises(ConfigError, match="different settings.*lr"):
        train_encoder(tiny_encoder_config(steps=5, lr=1e-3), songs["songs_dir"],
                      quick_loop(tmp_path / "resumed", resume=True), **common)
    with pytest.raises(ConfigError, match="holds a run already"):
        train_encoder(cfg, songs["songs_dir"], quick_loop(tmp_path / "resumed"), **common)


def test_resumed_cloner_run_follows_the_uninterrupted_loss_curve(songs, trained_encoder, tmp_path):
    cfg = tiny_cloner_config(trained_encoder, steps=3)
    common = {"val_dir": songs["val_dir"], "cache_dir": songs["cache_dir"], "threads": 2}
    train_cloner(cfg, songs["songs_dir"], quick_loop(tmp_path / "straight"), **common)
    assert train_cloner(cfg, songs["songs_dir"], quick_loop(tmp_path / "resumed", stop_after=1), **common).name == "checkpoint.pt"
    train_cloner(cfg, songs["songs_dir"], quick_loop(tmp_path / "resumed", resume=True), **common)
    straight = read_log(tmp_path / "straight")
    assert read_log(tmp_path / "resumed") == straight and sorted(straight) == [1, 2, 3]


def test_a_cloner_fine_tuned_from_a_pair_starts_from_its_weights_and_keeps_its_encoder(songs, trained_encoder,
                                                                                      tmp_path):
    common = {"val_dir": songs["val_dir"], "cache_dir": songs["cache_dir"], "threads": 1}
    first = train_cloner(tiny_cloner_config(trained_encoder), songs["songs_dir"], quick_loop(tmp_path / "first"),
                         out=tmp_path / "first.safetensors", **common)
    encoder, start, _ = load_pair(first)
    # the pair as encoder and as the start, on the pedalboard mixing chains; --size is replaced by the pair's
    cfg = tiny_cloner_config(str(first), init=str(first), fx_family="mixing-chains", steps=2, lr=1e-9,
                             model={"nblocks": 1, "channel_width": 2, "kernel_size": 3, "dilation_growth": 2})
    tuned = train_cloner(cfg, songs["songs_dir"], quick_loop(tmp_path / "tuned"), out=tmp_path / "tuned.safetensors",
                         **common)
    encoder_after, cloner_after, info = load_pair(tuned)
    assert info.encoder.weights_sha256 == read_pair_info(first).encoder.weights_sha256
    assert "model pair" in read_pair_info(tuned).encoder.provenance["source"]
    assert cloner_after.config == start.config
    # a learning rate of 1e-9 moves no weight that can be seen: the run started from the pair's weights
    # (BatchNorm's running statistics do move in training mode)
    after = dict(cloner_after.named_parameters())
    for name, weight in start.named_parameters():
        torch.testing.assert_close(after[name], weight, atol=1e-6, rtol=0)
