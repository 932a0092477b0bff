"""Separating a real mixture with a tiny random HTDemucs loaded by demucs from a local model folder:
four stems of the mixture's shape, the content-keyed cache, and clear errors without a model."""
import importlib.util
import random
import time
import urllib.error

import huggingface_hub.constants
import numpy as np
import pytest
import soundfile as sf
import torch
from demucs.apply import apply_model
from demucs.htdemucs import HTDemucs

import mixdaemon.mixing.separation as separation
from mixdaemon.audio.stems import STEM_NAMES
from mixdaemon.errors import SeparationUnavailable
from mixdaemon.mixing.separation import Separator
from tests.support import tiny_demucs
from tests.support.tiny_demucs import build_tiny_demucs_repo

tiny_demucs_repo = tiny_demucs.tiny_demucs_repo  # the fixture, under the name the tests ask for

SECONDS = 3


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tiny model gains nothing from a second thread, and on a busy 2-core test machine two
    spinning torch threads made these tests ~10x slower (4 min instead of 25 s)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def mixture(real_stems) -> np.ndarray:
    """The first seconds of a real song's mixture, float32 (n, 2) at 44.1 kHz."""
    audio, rate = sf.read(real_stems / "song_a" / "mixture.wav", dtype="float32", frames=SECONDS * 44100)
    assert rate == 44100 and audio.shape == (SECONDS * 44100, 2)
    return audio


def count_calls(monkeypatch, name: str) -> list:
    """Records each call the separator makes of the demucs function it imported as `name` (which
    still runs)."""
    calls, original = [], getattr(separation, name)

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(separation, name, counting)
    return calls


@pytest.fixture
def count_model_runs(monkeypatch) -> list:
    """Records each apply_model call the separator makes."""
    return count_calls(monkeypatch, "apply_model")


@pytest.fixture
def count_model_loads(monkeypatch) -> list:
    """Records each demucs model load the separator asks for (the slow part of a first job)."""
    return count_calls(monkeypatch, "get_model")


def test_real_mixture_gives_four_distinct_stems_of_its_shape(tiny_demucs_repo, mixture, tmp_path):
    calls = []
    stems = Separator("tiny", model_dir=tiny_demucs_repo, cache_dir=tmp_path).separate(
        mixture, progress=lambda stage, fraction: calls.append((stage, fraction)))
    assert torch.get_num_threads() == 1  # the caller's thread setting stands
    assert list(stems) == list(STEM_NAMES)
    for name, stem in stems.items():
        assert stem.shape == mixture.shape and stem.dtype == np.float32, name
        assert np.isfinite(stem).all() and np.abs(stem).max() > 1e-4, name
    assert not np.allclose(stems["drums"], stems["vocals"])
    # 3 s in 2 s chunks overlapping by 25 %: passes start at 0 and 1.5 s.
    assert calls == [("separating", 0.5), ("separating", 1.0)]


def test_same_model_and_audio_give_the_same_stems(tiny_demucs_repo, mixture, tmp_path):
    first = Separator("tiny", model_dir=tiny_demucs_repo, cache_dir=tmp_path / "a").separate(mixture)
    rebuilt = build_tiny_demucs_repo(tmp_path / "rebuilt")  # same seed: the same weights
    second = Separator("tiny", model_dir=rebuilt, cache_dir=tmp_path / "b").separate(mixture)
    for name in STEM_NAMES:
        np.testing.assert_array_equal(first[name], second[name])


def test_second_separation_reads_the_cache_without_loading_the_model(tiny_demucs_repo, mixture, tmp_path,
                                                                     count_model_runs, count_model_loads):
    first = Separator("tiny", model_dir=tiny_demucs_repo, cache_dir=tmp_path).separate(mixture)
    assert len(count_model_runs) == len(count_model_loads) == 1
    assert len(list(tmp_path.glob("*.npz"))) == 1

    fresh = Separator("tiny", model_dir=tiny_demucs_repo, cache_dir=tmp_path)
    calls = []
    again = fresh.separate(mixture.copy(), progress=lambda stage, fraction: calls.append((stage, fraction)))
    assert len(count_model_loads) == len(count_model_runs) == 1
    assert calls == [("separating", 1.0)]
    for name in STEM_NAMES:
        np.testing.assert_array_equal(again[name], first[name])  # bit-exact


def test_one_separator_runs_the_model_once_per_distinct_audio(tiny_demucs_repo, mixture, tmp_path,
                                                              count_model_runs):
    sep = Separator("tiny", model_dir=tiny_demucs_repo, cache_dir=tmp_path)
    sep.separate(mixture)
    sep.separate(mixture)
    assert len(count_model_runs) == 1
    quieter = mixture * np.float32(0.5)
    sep.separate(quieter)
    assert len(count_model_runs) == 2
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_replaced_model_files_do_not_reuse_old_stems(tiny_demucs_repo, mixture, tmp_path, count_model_runs):
    old = Separator("tiny", model_dir=tiny_demucs_repo, cache_dir=tmp_path).separate(mixture)
    other_weights = build_tiny_demucs_repo(tmp_path / "models", "tiny", seed=1)
    new = Separator("tiny", model_dir=other_weights, cache_dir=tmp_path).separate(mixture)
    assert len(count_model_runs) == 2
    assert not np.allclose(old["vocals"], new["vocals"])


def test_corrupt_cache_entry_is_recomputed_and_rewritten(tiny_demucs_repo, mixture, tmp_path, count_model_runs,
                                                          count_model_loads):
    good = Separator("tiny", model_dir=tiny_demucs_repo, cache_dir=tmp_path).separate(mixture)
    (entry,) = tmp_path.glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:1000])  # as if the disk had lost its end
    redone = Separator("tiny", model_dir=tiny_demucs_repo, cache_dir=tmp_path).separate(mixture)
    assert len(count_model_runs) == 2
    np.testing.assert_array_equal(redone["bass"], good["bass"])
    Separator("tiny", model_dir=tiny_demucs_repo, cache_dir=tmp_path).separate(mixture)
    assert len(count_model_loads) == len(count_model_runs) == 2  # the rewritten entry is read, no model loaded
    assert not list(tmp_path.glob(".*.part"))  # no temporary file left behind


def test_cache_folder_follows_mixdaemon_cache(tiny_demucs_repo, mixture, tmp_path, monkeypatch):
    monkeypatch.setenv("MIXDAEMON_CACHE", str(tmp_path / "cache root"))
    sep = Separator("tiny", model_dir=tiny_demucs_repo)
    assert sep.cache_dir == tmp_path / "cache root" / "separation"
    sep.separate(mixture[:44100])
    assert len(list(sep.cache_dir.glob("*.npz"))) == 1


def test_shift_trick_is_repeatable_and_leaves_the_global_random_stream_alone(tiny_demucs_repo, mixture, tmp_path):
    short = mixture[:44100]
    random.seed(7)
    expected_next = random.random()
    random.seed(7)
    calls = []
    a = Separator("tiny", model_dir=tiny_demucs_repo, cache_dir=tmp_path / "a", shifts=2).separate(
        short, progress=lambda stage, fraction: calls.append((stage, fraction)))
    assert random.random() == expected_next
    assert calls[-1] == ("separating", 1.0) and all(0 < fraction <= 1 for _, fraction in calls)
    b = Separator("tiny", model_dir=tiny_demucs_repo, cache_dir=tmp_path / "b", shifts=2).separate(short)
    unshifted = Separator("tiny", model_dir=tiny_demucs_repo, cache_dir=tmp_path / "c").separate(short)
    np.testing.assert_array_equal(a["drums"], b["drums"])
    assert not np.allclose(a["drums"], unshifted["drums"])


def test_model_at_another_rate_gives_stems_at_the_working_rate(mixture, tmp_path):
    models = build_tiny_demucs_repo(tmp_path / "models", "tiny22k", samplerate=22050)
    stems = Separator("tiny22k", model_dir=models, cache_dir=tmp_path).separate(mixture)
    for stem in stems.values():
        assert stem.shape == mixture.shape and np.isfinite(stem).all()


def test_six_source_model_folds_guitar_and_piano_into_other(mixture, tmp_path):
    six = ("drums", "bass", "other", "vocals", "guitar", "piano")
    models = build_tiny_demucs_repo(tmp_path / "models", "tiny6", sources=six)
    stems = Separator("tiny6", model_dir=models, cache_dir=tmp_path).separate(mixture)
    assert list(stems) == list(STEM_NAMES)
    # The same model run directly through demucs, on the mixture standardised as the demucs CLI does.
    model = separation.get_model("tiny6", repo=models)
    mix = torch.from_numpy(mixture.T.copy())
    mean, std = mix.mean(0).mean(), mix.mean(0).std(correction=0) + 1e-8
    with torch.inference_mode():
        out = (apply_model(model, ((mix - mean) / std)[None], shifts=0, overlap=0.25)[0] * std + mean).numpy()
    expected_other = out[2] + out[4] + out[5]
    np.testing.assert_allclose(stems["other"], expected_other.T, atol=1e-6)
    np.testing.assert_allclose(stems["vocals"], out[3].T, atol=1e-6)


def test_model_missing_from_the_folder_names_it_and_suggests_stems(tiny_demucs_repo, mixture, tmp_path):
    sep = Separator("htdemucs", model_dir=tiny_demucs_repo, cache_dir=tmp_path)
    with pytest.raises(SeparationUnavailable) as err:
        sep.separate(mixture)
    message = str(err.value)
    assert "\n" not in message
    assert "'htdemucs'" in message and str(tiny_demucs_repo) in message
    assert "holds tiny, tiny_model" in message
    assert "give a folder of stems (drums/bass/other/vocals) instead" in message
    assert "or set separation_dir ([transfer] in the config, --separation-dir)" in message


def test_model_folder_that_does_not_exist_is_a_clear_error_not_an_exit(mixture, tmp_path):
    with pytest.raises(SeparationUnavailable, match="no such folder: give a folder of stems"):
        Separator("htdemucs", model_dir=tmp_path / "nowhere", cache_dir=tmp_path).separate(mixture)


def test_quantized_model_without_diffq_is_a_clear_error_not_an_exit(mixture, tmp_path):
    # demucs calls sys.exit when a quantized package (mdx_extra_q) needs the missing diffq package.
    if importlib.util.find_spec("diffq") is not None:
        pytest.skip("diffq is installed here")
    models = tmp_path / "models"
    models.mkdir()
    torch.save({"klass": HTDemucs, "args": (), "kwargs": {"sources": list(STEM_NAMES)},
                "state": {"__quantized": True}}, models / "quantized.th")
    with pytest.raises(SeparationUnavailable, match="'quantized' could not be loaded .*demucs exited"):
        Separator("quantized", model_dir=models, cache_dir=tmp_path).separate(mixture)


def test_download_failure_is_a_clear_error(mixture, tmp_path, monkeypatch, count_model_loads):
    # The download server took a connection, then the HuggingFace hub failed and so did demucs's
    # legacy download server.
    monkeypatch.setattr(separation, "_download_server_reachable", lambda: True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    sep = Separator("htdemucs", cache_dir=tmp_path)
    assert count_model_loads == []  # constructing touches nothing
    with pytest.raises(SeparationUnavailable) as err:
        sep.separate(mixture)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("demucs model 'htdemucs' could not be loaded from the demucs download servers")
    assert "Name or service not known" in message and "give a folder of stems" in message


def test_offline_without_a_downloaded_model_fails_at_once_without_trying_to_download(mixture, tmp_path,
                                                                                      monkeypatch, count_model_loads):
    """No connection to the download server (here: a closed local port) and nothing in the download
    cache: one line naming both, in a few seconds, and no download is attempted."""
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    downloads, offline_mode = [], huggingface_hub.constants.HF_HUB_OFFLINE
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: downloads.append(a))
    t0 = time.monotonic()
    with pytest.raises(SeparationUnavailable) as err:
        Separator("htdemucs", cache_dir=tmp_path).separate(mixture)
    assert time.monotonic() - t0 < 5.0
    assert str(err.value) == (f"demucs model 'htdemucs': not downloaded yet (not in {tmp_path / 'hub'}) and "
                              f"127.0.0.1 cannot be reached to download it: {separation.STEMS_INSTEAD}")
    assert count_model_loads == [] and downloads == [] and not (tmp_path / "hub").exists()
    assert huggingface_hub.constants.HF_HUB_OFFLINE == offline_mode  # the switch is put back


@pytest.mark.parametrize("shape", [(100,), (100, 1), (0, 2), (100, 6)])
def test_non_stereo_input_is_refused(tiny_demucs_repo, tmp_path, shape):
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        Separator("tiny", model_dir=tiny_demucs_repo, cache_dir=tmp_path).separate(np.zeros(shape, np.float32))


def test_unwritable_cache_folder_still_gives_the_stems(tiny_demucs_repo, mixture, tmp_path, caplog):
    blocked = tmp_path / "a file"
    blocked.write_text("not a folder")
    stems = Separator("tiny", model_dir=tiny_demucs_repo, cache_dir=blocked / "cache").separate(mixture[:22050])
    assert stems["drums"].shape == (22050, 2)
    assert "could not write the separation cache entry" in caplog.text
