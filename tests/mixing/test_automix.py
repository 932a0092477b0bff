"""`mixdaemon automix`: real stems in, one clip-safe mix out, any length, clear errors."""

import numpy as np
import pytest
import soundfile as sf
import torch

from mixdaemon.audio.dsp import average_spectrum_db, integrated_loudness
from mixdaemon.audio.io import read_audio
from mixdaemon.audio.mastering import true_peak_dbtp
from mixdaemon.cli.main import build_parser
from mixdaemon.errors import (
    ConfigError,
    MixdaemonError,
    ModelFileError,
    StemLayoutError,
)
from mixdaemon.files import file_sha256
from mixdaemon.fx.stats import FxStats, default_stats_path
from mixdaemon.mixing.automix import Automixer, automix
from mixdaemon.mixing.settings import AutomixSettings
from mixdaemon.nets.automix import (
    AUTOMIX_PRESETS,
    WAVEUNET_PRESETS,
    AutomixNet,
    WaveUNet,
)
from mixdaemon.nets.store import load_automix_model, save_automix_model

STEMS = ("drums", "bass", "other", "vocals")
NORMALIZATION = {"order": "fxnorm", "stats_sha256": file_sha256(default_stats_path("fxnorm"))}


def _save(path, model, architecture="automix", normalization=NORMALIZATION):
    return save_automix_model(path, model.eval(), architecture, normalization=normalization)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A model store with a tiny automix model (random weights, fixed seed) and a Wave-U-Net."""
    folder = tmp_path_factory.mktemp("engines")
    torch.manual_seed(0)
    model = AutomixNet(AUTOMIX_PRESETS["tiny"])
    with torch.no_grad():  # loud enough that the limiter has work to do
        model.conv1.weight.mul_(8.0)
    _save(folder / "automix-test.safetensors", model)
    _save(folder / "wun-test.safetensors", WaveUNet(WAVEUNET_PRESETS["tiny"]), "wave-u-net")
    return folder


@pytest.fixture
def engines(store, monkeypatch):
    monkeypatch.setenv("MIXDAEMON_ENGINES", str(store))
    return store


def _stem_files(real_stems, song):
    return [real_stems / song / f"{name}.wav" for name in STEMS]


def test_real_stems_become_one_mix_at_their_rate_and_length_that_never_clips(engines, real_stems, tmp_path):
    stems = _stem_files(real_stems, "song_b")  # 20 s: several 3-s chunks
    stages = []
    settings = AutomixSettings(model="automix-test", chunk_seconds=3.0, loudness="model")
    result = automix(stems, tmp_path / "mix.wav", settings, progress=lambda stage, fraction: stages.append((stage, fraction)), spectra=True)
    info, source = sf.info(str(tmp_path / "mix.wav")), sf.info(str(stems[0]))
    assert info.samplerate == source.samplerate and info.frames == source.frames and info.channels == 2
    mix, rate = sf.read(tmp_path / "mix.wav")
    assert rate == 44100 and true_peak_dbtp(mix) <= -1.0 and result.true_peak_dbtp <= -1.0
    assert np.abs(mix).max() > 0.1  # loud, so the ceiling was the limiter's doing
    assert result.outputs == {"mixture": str(tmp_path / "mix.wav")} and result.model["name"] == "automix-test"
    assert set(result.loudness_before) == {*STEMS, "mixture"} and result.seconds_audio == pytest.approx(20.0, abs=0.1)
    fractions = [f for _, f in stages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(stage.startswith("normalizing vocals") for stage, _ in stages)
    assert sum(stage == "mixing" for stage, _ in stages) == 7  # 20 s in 3-s chunks
    # What the report draws: the stems and their sum before, the mix after, no reference.
    assert {label: set(curves) for label, curves in result.spectra.items()} == {
        "before": {*STEMS, "mixture"}, "after": {"mixture"}}
    on_disk = average_spectrum_db(read_audio(tmp_path / "mix.wav").samples)
    shown = on_disk > on_disk.max() - 60.0  # below, 24-bit quantisation noise decides the level
    np.testing.assert_allclose(result.spectra["after"]["mixture"][shown], on_disk[shown], atol=0.05)
    vocals = average_spectrum_db(read_audio(stems[3]).samples)
    np.testing.assert_allclose(result.spectra["before"]["vocals"], vocals, atol=1e-9)


def test_the_mix_lands_at_the_loudness_of_the_stems_sum_or_the_one_asked_for(engines, real_stems, tmp_path):
    stems = _stem_files(real_stems, "song_a")  # a quiet song (-25 LUFS): the limiter does not act
    as_bounced = integrated_loudness(np.sum([read_audio(f).samples for f in stems], axis=0))
    landed = automix(stems, tmp_path / "stems.wav", AutomixSettings(model="automix-test"))
    assert landed.loudness_after["mixture"] == pytest.approx(as_bounced, abs=0.3)
    assert integrated_loudness(read_audio(tmp_path / "stems.wav").samples) == pytest.approx(as_bounced, abs=0.3)
    own = automix(stems, tmp_path / "model.wav", AutomixSettings(model="automix-test", loudness="model"))
    assert own.loudness_after["mixture"] > as_bounced + 5.0  # the test network mixes loud
    assert _cli([*map(str, stems), "--out", str(tmp_path / "lufs.wav"), "--model", "automix-test",
                 "--loudness", "-30", "-q"]) == 0
    assert integrated_loudness(read_audio(tmp_path / "lufs.wav").samples) == pytest.approx(-30.0, abs=0.3)
    with pytest.raises(ConfigError, match="loudness"):
        _cli([*map(str, stems), "--out", str(tmp_path / "x.wav"), "--model", "automix-test", "--loudness", "loud"])


def _normalized_song(seconds, seed=0, silent_intro=0.0):
    """Stand-ins for normalized stems: noise bursts, optionally silent at the start."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 44100)
    envelope = (np.sin(np.arange(n) / 44100 * 2 * np.pi * 0.7) > 0).astype(np.float32)[:, None]
    envelope[:int(silent_intro * 44100)] = 0.0
    return {name: (0.1 * rng.standard_normal((n, 2)) * envelope).astype(np.float32) for name in STEMS}


def _mixer(name, store, chunk_seconds):
    model, info = load_automix_model(name, store)
    return Automixer(model, info, FxStats.load(default_stats_path("fxnorm")), chunk_seconds)


@pytest.mark.parametrize("name", ["automix-test", "wun-test"])
def test_chunks_with_context_sound_like_one_pass_over_the_song(store, name):
    # Not bit-identical: GroupNorm statistics span whatever window the network sees, and the
    # BiLSTM sees beyond any guard; the context keeps the difference small and the seams inaudible.
    song = _normalized_song(7.3)
    whole = _mixer(name, store, 60.0).mix_normalized(song)
    chunked = _mixer(name, store, 2.0).mix_normalized(song)
    assert chunked.shape == whole.shape == (len(song["drums"]), 2)
    assert np.sqrt(np.mean((chunked - whole) ** 2)) < 0.3 * np.sqrt(np.mean(whole ** 2))


def test_a_silent_intro_stays_silent_no_wrap_around_from_the_song_end(store):
    song = _normalized_song(6.0, silent_intro=2.0)
    mix = _mixer("automix-test", store, 2.5).mix_normalized(song)
    intro = mix[:int(1.9 * 44100)]  # the filterbank spreads the onset by a few ms at most
    assert np.abs(intro).max() == 0.0 and np.abs(mix[int(2.1 * 44100):]).max() > 0.01


def test_refuses_to_overwrite_inputs_or_existing_files_unless_told(engines, real_stems, tmp_path):
    stems = _stem_files(real_stems, "song_a")
    settings = AutomixSettings(model="automix-test")
    with pytest.raises(MixdaemonError, match="is one of the input files"):
        automix(stems, stems[0], settings, overwrite=True)
    (tmp_path / "mix.wav").write_bytes(b"keep")
    with pytest.raises(MixdaemonError, match="already exists"):
        automix(stems, tmp_path / "mix.wav", settings)
    assert (tmp_path / "mix.wav").read_bytes() == b"keep"
    with pytest.raises(MixdaemonError, match="is a folder"):
        automix(stems, tmp_path, settings)


def test_unusable_inputs_and_models_are_refused_with_the_reason(engines, real_stems, tmp_path):
    with pytest.raises(StemLayoutError, match="is a full mix; automix needs the stems"):
        automix(real_stems / "song_a" / "mixture.wav", tmp_path / "mix.wav", AutomixSettings(model="automix-test"))
    stems = _stem_files(real_stems, "song_a")
    with pytest.raises(ModelFileError, match=r"no automix model named 'nothing'.*available: automix-test, wun-test"):
        automix(stems, tmp_path / "mix.wav", AutomixSettings(model="nothing"))
    other_stats = _save(tmp_path / "other-stats.safetensors", AutomixNet(AUTOMIX_PRESETS["tiny"]),
                        normalization={"order": "fxnorm", "stats_sha256": "0" * 64})
    with pytest.raises(ConfigError, match="trained on inputs normalized with other statistics"):
        automix(stems, tmp_path / "mix.wav", AutomixSettings(model=str(other_stats.path)))
    assert not (tmp_path / "mix.wav").exists()


def _cli(argv):
    args = build_parser(["automix", *argv]).parse_args(["automix", *argv])
    return args.func(args)


def test_command_line_writes_the_mix_and_reports_it(engines, real_stems, tmp_path, capsys):
    folder = tmp_path / "bounce"
    folder.mkdir()
    for f in _stem_files(real_stems, "song_a"):
        (folder / f.name).symlink_to(f)
    out = tmp_path / "mix.wav"
    assert _cli([str(folder), "--out", str(out), "--model", "automix-test", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "mixed 15.0 s of audio with automix-test" in printed and str(out) in printed
    assert sf.info(str(out)).samplerate == 44100
    with pytest.raises(MixdaemonError, match="pass --overwrite"):
        _cli([str(folder), "--out", str(out), "--model", "automix-test", "-q"])
    assert _cli([str(folder), "--out", str(out), "--model", "automix-test", "-q", "--overwrite"]) == 0


def test_automix_models_share_the_model_store_with_mst_pairs_without_being_mistaken_for_them(store, tmp_path,
                                                                                             caplog):
    import safetensors.torch

    from mixdaemon.nets.store import list_pairs, load_pair
    with pytest.raises(ModelFileError, match="an automix model, not an MST model pair"):
        load_pair("automix-test", store=store)
    assert [p for p in list_pairs(store) if p.path.parent == store] == [] and "skipping" not in caplog.text
    # edited weights are refused by their recorded hash
    tensors = safetensors.torch.load_file(store / "automix-test.safetensors")
    with safetensors.safe_open(store / "automix-test.safetensors", framework="pt") as f:
        metadata = f.metadata()
    tensors["conv1.weight"] = tensors["conv1.weight"] * 2
    safetensors.torch.save_file(tensors, tmp_path / "edited.safetensors", metadata=metadata)
    with pytest.raises(ModelFileError, match="do not match their recorded sha256"):
        load_automix_model(tmp_path / "edited.safetensors")
