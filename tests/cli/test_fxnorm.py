"""`mixdaemon fxnorm apply` / `fit` as a user runs them."""
import numpy as np
import soundfile as sf

from mixdaemon.audio.dsp import integrated_loudness, mid_energy_fraction
from mixdaemon.audio.io import read_audio
from mixdaemon.cli.main import main
from mixdaemon.fx.stats import FxStats

STEMS = ("drums", "bass", "other", "vocals")


def _excerpt(real_stems, song, folder, seconds=6.0):
    folder.mkdir(parents=True)
    for stem in STEMS:
        data, rate = sf.read(real_stems / song / f"{stem}.wav", dtype="float32")
        sf.write(folder / f"{stem}.wav", data[rate:rate + int(seconds * rate)], rate, subtype="PCM_16")


def test_apply_with_the_papers_statistics_hits_targets_and_is_repeatable(real_stems, mst_stats_path, tmp_path):
    _excerpt(real_stems, "song_a", tmp_path / "in")
    for run in ("one", "two"):
        assert main(["fxnorm", "apply", str(tmp_path / "in"), "--out", str(tmp_path / run),
                     "--stats", str(mst_stats_path), "-q"]) == 0
    stats = FxStats.load(mst_stats_path)
    for stem in STEMS:
        assert (tmp_path / "one" / f"{stem}.wav").read_bytes() == (tmp_path / "two" / f"{stem}.wav").read_bytes()
        y = read_audio(tmp_path / "one" / f"{stem}.wav").samples
        assert abs(integrated_loudness(y) - stats.stems[stem].loudness) < 0.5, stem
        assert abs(mid_energy_fraction(y) - stats.stems[stem].imager) < 0.02, stem


def test_fit_then_apply_with_own_statistics(real_stems, tmp_path):
    songs = tmp_path / "songs"
    _excerpt(real_stems, "song_a", songs / "a", 5.0)
    _excerpt(real_stems, "song_c", songs / "c", 5.0)
    assert main(["fxnorm", "fit", str(songs), "--out", str(tmp_path / "stats.npz")]) == 0
    assert main(["fxnorm", "apply", str(songs / "a"), "--out", str(tmp_path / "norm"),
                 "--stats", str(tmp_path / "stats.npz"), "-q"]) == 0
    stats = FxStats.load(tmp_path / "stats.npz")
    y = read_audio(tmp_path / "norm" / "vocals.wav").samples
    assert abs(integrated_loudness(y) - stats.stems["vocals"].loudness) < 0.5
    assert np.isfinite(y).all()


def test_apply_with_impulse_responses_adds_reverb_to_vocals_and_other_only(real_stems, mst_stats_path, tmp_path,
                                                                            impulse_responses):
    _excerpt(real_stems, "song_a", tmp_path / "in")
    for run, extra in (("dry", []), ("wet", ["--ir-folder", str(impulse_responses)])):
        assert main(["fxnorm", "apply", str(tmp_path / "in"), "--out", str(tmp_path / run),
                     "--stats", str(mst_stats_path), "-q", *extra]) == 0
    for stem in STEMS:
        dry = read_audio(tmp_path / "dry" / f"{stem}.wav").samples
        wet = read_audio(tmp_path / "wet" / f"{stem}.wav").samples
        if stem in ("vocals", "other"):
            assert np.sqrt(np.mean((wet - dry) ** 2)) > 0.01 * np.sqrt(np.mean(dry ** 2)), stem
        else:
            np.testing.assert_array_equal(wet, dry)


def test_apply_with_a_missing_impulse_response_folder_says_so(real_stems, tmp_path, capsys):
    _excerpt(real_stems, "song_a", tmp_path / "in")
    assert main(["fxnorm", "apply", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                 "--ir-folder", str(tmp_path / "nowhere"), "-q"]) != 0
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
