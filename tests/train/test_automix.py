"""`mixdaemon train automix`: cached aligned data, a tiny run that ends in a model `mixdaemon automix`
uses, exact resumption, and the settings it refuses."""
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from mixdaemon.errors import ConfigError
from mixdaemon.fx.stats import default_stats_path
from mixdaemon.mixing.automix import automix
from mixdaemon.mixing.settings import AutomixSettings
from mixdaemon.nets.automix import AUTOMIX_PRESETS, WAVEUNET_PRESETS
from mixdaemon.nets.store import read_automix_info
from mixdaemon.train.automix import AutomixTrainingConfig, MultitrackLibrary
from mixdaemon.train.loop import read_log
from mixdaemon.train.material import make_material
from mixdaemon.train.runs import train_automix
from tests.support.training import quick_loop

SEGMENT = 2 ** 17  # 3 s: the loss drops 30 STFT frames at each end, so it needs 1.5 s at least


def tiny_config(**overrides) -> AutomixTrainingConfig:
    return AutomixTrainingConfig(**{"model": AUTOMIX_PRESETS["tiny"].to_dict(), "steps": 4, "batch": 1,
                                    "segment": SEGMENT, "validation_items": 1, **overrides})


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> dict:
    """Two 4-s numpy-synth songs for training (one with a mixture.wav), one for validation."""
    root = tmp_path_factory.mktemp("material")
    make_material(root / "train", songs=2, seconds=4.0, seed=0, renderer="numpy")
    make_material(root / "val", songs=1, seconds=4.0, seed=1, renderer="numpy")
    first = sorted(p for p in (root / "train").iterdir() if p.is_dir())[0]
    stems = [sf.read(first / f"{s}.wav")[0] for s in ("drums", "bass", "other", "vocals")]
    sf.write(first / "mixture.wav", 0.5 * np.sum(stems, axis=0), 44100, subtype="FLOAT")
    return {"songs_dir": root / "train", "val_dir": root / "val", "cache_dir": root / "cache", "with_mixture": first}


def common(songs) -> dict:
    # one thread: under load, idle OpenMP threads spin and would count as CPU time of the run
    return {"val_dir": songs["val_dir"], "cache_dir": songs["cache_dir"], "threads": 1}


def test_library_keeps_stems_and_mix_aligned_and_uses_the_mixture_file(songs):
    library = MultitrackLibrary(songs["songs_dir"], default_stats_path("fxnorm"), songs["cache_dir"])
    song = library.songs.index(songs["with_mixture"].name)
    rng = np.random.default_rng(0)
    inputs, target = library.excerpt(rng, 44100, song)
    assert inputs.shape == (8, 44100) and target.shape == (2, 44100)
    _, full_target = library._song(song)
    mixture = sf.read(songs["with_mixture"] / "mixture.wav", dtype="float32")[0].T
    np.testing.assert_allclose(full_target, mixture, atol=1e-6)  # the file, not the sum of the stems
    # one start for every track; past the song's end the excerpt wraps around to its start
    full_inputs, n = np.array(library._song(song)[0]), full_target.shape[1]
    start = int(np.random.default_rng(1).integers(n))
    inputs, target = library.excerpt(np.random.default_rng(1), n - 1000, song)
    positions = (start + np.arange(n - 1000)) % n
    assert np.array_equal(inputs, full_inputs[:, positions]) and np.array_equal(target, full_target[:, positions])
    # a song shorter than the excerpt is zero-padded
    inputs, target = library.excerpt(rng, n + 500, song)
    assert np.array_equal(target[:, :n], full_target) and not target[:, n:].any() and not inputs[:, n:].any()
    # the cache is reused: a second library normalizes nothing
    started = time.process_time()
    MultitrackLibrary(songs["songs_dir"], default_stats_path("fxnorm"), songs["cache_dir"])
    assert time.process_time() - started < 1.0


def test_tiny_run_gives_a_model_that_mixes_real_stems(songs, real_stems, tmp_path):
    started = time.process_time()
    out = train_automix(tiny_config(), songs["songs_dir"], quick_loop(tmp_path / "run"), **common(songs),
                        out=tmp_path / "store" / "tiny-automix.safetensors")
    # CPU seconds of the process (all threads), so that a busy machine cannot fail it
    assert time.process_time() - started < 60
    info = read_automix_info(out)
    assert info.architecture == "automix" and info.training["steps"] == 4 and info.training["data"]["songs"] == 2
    assert info.normalization["order"] == "fxnorm"
    logged = read_log(tmp_path / "run", "val", "ratio_to_sum")
    assert sorted(logged) == [2, 4] and all(np.isfinite(v) and v > 0 for v in logged.values())

    stems = [real_stems / "song_a" / f"{s}.wav" for s in ("drums", "bass", "other", "vocals")]
    result = automix(stems, tmp_path / "mix.wav", AutomixSettings(model=str(out)))
    mix, _ = sf.read(tmp_path / "mix.wav")
    assert mix.shape == (sf.info(str(stems[0])).frames, 2) and np.isfinite(mix).all()
    assert result.model["weights_sha256"] == info.weights_sha256


def test_wave_u_net_baseline_trains_with_the_same_command(songs, tmp_path):
    cfg = tiny_config(architecture="wave-u-net", model=WAVEUNET_PRESETS["tiny"].to_dict(), steps=2)
    out = train_automix(cfg, songs["songs_dir"], quick_loop(tmp_path / "wun"), **common(songs))
    assert out == tmp_path / "wun" / "model.safetensors" and read_automix_info(out).architecture == "wave-u-net"


def test_resumed_run_follows_the_uninterrupted_loss_curve(songs, tmp_path):
    cfg = tiny_config(steps=3)
    train_automix(cfg, songs["songs_dir"], quick_loop(tmp_path / "straight"), **common(songs))
    stopped = train_automix(cfg, songs["songs_dir"], quick_loop(tmp_path / "resumed", stop_after=1), **common(songs))
    assert stopped.name == "checkpoint.pt" and max(read_log(tmp_path / "resumed")) == 1
    train_automix(cfg, songs["songs_dir"], quick_loop(tmp_path / "resumed", resume=True), **common(songs))
    for phase in ("train", "val"):
        straight = read_log(tmp_path / "straight", phase)
        assert read_log(tmp_path / "resumed", phase) == straight and len(straight) >= 2
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    with pytest.raises(ConfigError, match="different settings.*loss"):
        train_automix(tiny_config(steps=3, loss="La"), songs["songs_dir"], quick_loop(tmp_path / "resumed", resume=True),
                      **common(songs))


def test_settings_the_model_cannot_train_with_are_refused(songs, tmp_path):
    with pytest.raises(ConfigError, match="multiple of 16"):
        train_automix(tiny_config(segment=SEGMENT + 8), songs["songs_dir"], quick_loop(tmp_path / "a"), **common(songs))
    with pytest.raises(ConfigError, match="the loss needs at least"):
        train_automix(tiny_config(segment=2 ** 15), songs["songs_dir"], quick_loop(tmp_path / "b"), **common(songs))


def test_reverb_normalization_adds_a_tail_to_vocals_and_other_only(impulse_responses):
    from mixdaemon.fx.normalization import ReverbNormalization, add_reverb
    reverb = ReverbNormalization(impulse_responses)
    burst = np.zeros((44100, 2), np.float32)
    burst[:2205] = np.random.default_rng(0).standard_normal((2205, 2)).astype(np.float32) * 0.3
    stems = {name: burst.copy() for name in ("vocals", "bass", "drums", "other")}
    out = add_reverb(stems, reverb, seed=0)
    for name in ("bass", "drums"):
        assert out[name] is stems[name]
    for name in ("vocals", "other"):
        tail = out[name][4410:13230]
        assert np.sqrt(np.mean(tail ** 2)) > 1e-4, name  # the burst rings on after it stopped
    again = add_reverb(stems, reverb, seed=0)
    np.testing.assert_array_equal(again["vocals"], out["vocals"])  # same stem, same reverb


def test_a_run_with_impulse_responses_records_them_and_automix_applies_them(songs, real_stems, tmp_path,
                                                                            impulse_responses):
    irs = impulse_responses
    out = train_automix(tiny_config(steps=2, ir_folder=str(irs)), songs["songs_dir"], quick_loop(tmp_path / "run"),
                        val_dir=songs["val_dir"], cache_dir=tmp_path / "cache", threads=1,
                        out=tmp_path / "tiny-reverb.safetensors")
    assert read_automix_info(out).normalization["reverb_ir_folder"] == str(irs)
    stems = [real_stems / "song_a" / f"{s}.wav" for s in ("drums", "bass", "other", "vocals")]
    dry = automix([str(p) for p in stems], tmp_path / "dry.wav", AutomixSettings(model=str(out)))
    wet = automix([str(p) for p in stems], tmp_path / "wet.wav", AutomixSettings(model=str(out), ir_folder=str(irs)))
    a, b = sf.read(dry.outputs["mixture"])[0], sf.read(wet.outputs["mixture"])[0]
    assert a.shape == b.shape and not np.allclose(a, b, atol=1e-3)
