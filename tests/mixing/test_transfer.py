"""`mixdaemon transfer` and `mixdaemon demo` as a user runs them: real files in, real files out."""
import shutil

import numpy as np
import pytest
import soundfile as sf

from mixdaemon.audio.dsp import average_spectrum_db, integrated_loudness
from mixdaemon.audio.io import read_audio
from mixdaemon.audio.mastering import true_peak_dbtp
from mixdaemon.cli.main import main
from mixdaemon.mixing.settings import TransferSettings
from mixdaemon.mixing.transfer import transfer

STEMS = ("drums", "bass", "other", "vocals")


@pytest.fixture(scope="module")
def short_songs(tmp_path_factory, real_stems):
    """8-s excerpts of two real songs as stem folders (song_b's stems at their own rate)."""
    root = tmp_path_factory.mktemp("songs")
    for song, start in (("song_a", 2.0), ("song_b", 4.0)):
        (root / song).mkdir()
        for stem in STEMS:
            data, rate = sf.read(real_stems / song / f"{stem}.wav", dtype="float32")
            a = int(start * rate)
            sf.write(root / song / f"{stem}.wav", data[a:a + 8 * rate], rate, subtype="PCM_24")
    return root


def test_match_engine_moves_stems_toward_reference_and_never_clips(short_songs, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["transfer", str(short_songs / "song_a"), "--reference", str(short_songs / "song_b"),
                 "--out", str(out), "--engine", "match", "--quiet"])
    assert code == 0, capsys.readouterr().err
    written = sorted(p.name for p in out.iterdir())
    assert written == ["bass.wav", "drums.wav", "mixture.wav", "other.wav", "vocals.wav"]
    mix = read_audio(out / "mixture.wav").samples
    assert np.sqrt(np.mean(mix ** 2)) > 1e-3
    assert true_peak_dbtp(mix) <= -1.0
    closer = 0
    for stem in STEMS:
        x = read_audio(short_songs / "song_a" / f"{stem}.wav").samples
        y = read_audio(out / f"{stem}.wav").samples
        ref = read_audio(short_songs / "song_b" / f"{stem}.wav").samples
        assert y.shape == x.shape and true_peak_dbtp(y) <= -1.0
        # the balance between stems follows the reference: compare loudness relative to the mix
        rel = lambda s, m: integrated_loudness(s) - integrated_loudness(m)  # noqa: E731
        ref_mix = sum(read_audio(short_songs / "song_b" / f"{s}.wav").samples for s in STEMS)
        x_mix = sum(read_audio(short_songs / "song_a" / f"{s}.wav").samples for s in STEMS)
        closer += abs(rel(y, mix) - rel(ref, ref_mix)) < abs(rel(x, x_mix) - rel(ref, ref_mix))
    assert closer >= 3


def _within_60_db_of_the_top(curve: np.ndarray) -> np.ndarray:
    """The bands a report shows well: below that, 24-bit quantisation noise decides the level."""
    return curve > curve.max() - 60.0


def test_the_spectra_a_report_draws_are_those_of_the_inputs_outputs_and_reference(short_songs, tmp_path):
    out = tmp_path / "out"
    result = transfer(short_songs / "song_a", short_songs / "song_b", out, TransferSettings(engine="match"),
                      spectra=True)
    tracks = {*STEMS, "mixture"}
    assert {label: set(curves) for label, curves in result.spectra.items()} == {
        "before": tracks, "after": tracks, "reference": tracks}
    for label, folder in (("before", short_songs / "song_a"), ("after", out), ("reference", short_songs / "song_b")):
        files = {name: read_audio(folder / f"{name}.wav").samples for name in STEMS}
        files["mixture"] = read_audio(out / "mixture.wav").samples if label == "after" else sum(files.values())
        for name, samples in files.items():
            measured, on_disk = result.spectra[label][name], average_spectrum_db(samples)
            shown = _within_60_db_of_the_top(on_disk)
            np.testing.assert_allclose(measured[shown], on_disk[shown], atol=0.05, err_msg=f"{label} {name}")
    # The conversion changed the spectra it reports: the match engine's EQ moved every stem.
    for name in tracks:
        assert np.max(np.abs(result.spectra["after"][name] - result.spectra["before"][name])) > 1.0, name


def test_progress_moves_with_the_work_and_its_stages_come_in_order(short_songs, tmp_path):
    calls = []
    transfer(short_songs / "song_a", short_songs / "song_b", tmp_path / "out",
             progress=lambda stage, fraction: calls.append((stage, fraction)))
    fractions = [f for _, f in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0        # never back, ends at 100 %
    assert len({round(f, 3) for f in fractions if f < 0.88}) >= 12          # reading and matching move, step by step
    stages = [stage.split()[0] for stage, _ in calls]
    order = [s for i, s in enumerate(stages) if i == 0 or s != stages[i - 1]]
    assert order == ["reading", "matching", "writing", "done"], order


def test_existing_outputs_are_not_replaced_without_overwrite(short_songs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "drums.wav").write_bytes(b"my precious take")
    code = main(["transfer", str(short_songs / "song_a"), "--reference", str(short_songs / "song_b"),
                 "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "already exists" in err and "--overwrite" in err
    assert (out / "drums.wav").read_bytes() == b"my precious take"


def test_output_folder_equal_to_input_folder_is_refused(short_songs, tmp_path, capsys):
    song = tmp_path / "song"
    shutil.copytree(short_songs / "song_a", song)
    before = {p.name: p.read_bytes() for p in song.iterdir()}
    code = main(["transfer", str(song), "--reference", str(short_songs / "song_b"), "--out", str(song),
                 "--overwrite", "--quiet"])
    assert code != 0 and "input" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in song.iterdir()} == before


@pytest.mark.parametrize("engine", ["match", "param"])
def test_a_second_reference_with_an_engine_that_cannot_fade_is_refused_in_one_line(short_songs, tmp_path, capsys,
                                                                                   engine):
    out = tmp_path / "out"
    code = main(["transfer", str(short_songs / "song_a"), "--reference", str(short_songs / "song_b"),
                 "--reference-b", str(short_songs / "song_a"), "--out", str(out), "--engine", engine, "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "cannot fade between two references" in err
    assert not out.exists() or not any(out.iterdir())


def test_a_fade_over_a_song_longer_than_the_in_memory_limit_is_refused_before_any_work(short_songs, tmp_path,
                                                                                      capsys, monkeypatch):
    # a fade converts whole stems in memory; without one the neural engine streams a song of any length
    from mixdaemon import defaults
    monkeypatch.setattr(defaults, "NEURAL_MAX_MINUTES", 0.1)  # 6 s: the 8-s song is too long
    out = tmp_path / "out"
    code = main(["transfer", str(short_songs / "song_a"), "--reference", str(short_songs / "song_b"),
                 "--reference-b", str(short_songs / "song_a"), "--out", str(out), "--engine", "neural", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "leave out --reference-b" in err
    assert not out.exists() or not any(out.iterdir())


def _corrupt(p):
    p.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(40)))


def _truncated(p):
    sf.write(p, np.full((44100, 2), 0.1, dtype=np.float32), 44100)
    p.write_bytes(p.read_bytes()[:20000])


def _zero_length(p):
    sf.write(p, np.zeros((0, 2), dtype=np.float32), 44100)


def _nan(p):
    x = np.full((44100, 2), 0.1, dtype=np.float32)
    x[5] = np.nan
    sf.write(p, x, 44100, subtype="FLOAT")


def _six_channels(p):
    sf.write(p, np.zeros((44100, 6), dtype=np.float32), 44100)


def _text(p):
    p.write_text("not audio at all")


@pytest.mark.parametrize("spoil", [_corrupt, _truncated, _zero_length, _nan, _six_channels, _text])
def test_bad_input_file_one_line_error_nothing_written(short_songs, tmp_path, capsys, spoil):
    song = tmp_path / "song"
    shutil.copytree(short_songs / "song_a", song)
    spoil(song / "vocals.wav")
    out = tmp_path / "out"
    code = main(["transfer", str(song), "--reference", str(short_songs / "song_b"), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "vocals.wav" in err and err.startswith("mixdaemon: error:")
    assert not out.exists() or not any(out.iterdir())


def test_demo_main_job_writes_non_silent_outputs(tmp_path, capsys):
    code = main(["demo", "--out", str(tmp_path), "--seconds", "6", "--engine", "match", "--quiet"])
    assert code == 0, capsys.readouterr().err
    for name in (*STEMS, "mixture"):
        x = read_audio(tmp_path / "converted" / f"{name}.wav").samples
        assert x.shape[0] == 6 * 44100 and np.sqrt(np.mean(x ** 2)) > 1e-3, name


def test_mixture_input_is_separated_and_flows_through(real_stems, short_songs, tmp_path, capsys):
    from tests.support.tiny_demucs import build_tiny_demucs_repo

    repo = build_tiny_demucs_repo(tmp_path / "models")
    data, rate = sf.read(real_stems / "song_b" / "mixture.wav", dtype="float32")  # 48 kHz
    sf.write(tmp_path / "My Song.wav", data[:5 * rate], rate, subtype="PCM_16")
    out = tmp_path / "out"
    code = main(["transfer", str(tmp_path / "My Song.wav"), "--reference", str(short_songs / "song_a"),
                 "--out", str(out), "--separation-model", "tiny", "--separation-dir", str(repo), "--quiet"])
    assert code == 0, capsys.readouterr().err
    for name in (*STEMS, "mixture"):
        info = sf.info(out / f"{name}.wav")
        assert info.samplerate == 48000 and info.frames == 5 * 48000, name  # back at the input's rate


def test_missing_separation_model_says_to_give_stems(real_stems, short_songs, tmp_path, capsys):
    data, rate = sf.read(real_stems / "song_a" / "mixture.wav", dtype="float32")
    sf.write(tmp_path / "mix.wav", data[: 3 * rate], rate)
    code = main(["transfer", str(tmp_path / "mix.wav"), "--reference", str(short_songs / "song_a"),
                 "--out", str(tmp_path / "out"), "--separation-dir", str(tmp_path / "nothing-here"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "stems" in err and len(err.strip().splitlines()) == 1
