"""Audio I/O: what a DAW bounces reads correctly, what is broken is refused with a clear reason,
and writes are atomic and never replace an input."""
import os

import numpy as np
import pytest
import soundfile as sf

from mixdaemon.audio.io import read_audio, resample, write_audio
from mixdaemon.audio.mastering import true_peak_dbtp
from mixdaemon.audio.stems import load_song, role_for_name
from mixdaemon.errors import AudioFileError

SR = 44100


def sine(seconds=1.0, freq=1000.0, rate=SR, channels=2, amp=0.5):
    t = np.arange(int(seconds * rate)) / rate
    x = amp * np.sin(2 * np.pi * freq * t)
    return np.repeat(x[:, None], channels, axis=1).astype(np.float32)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000, 96000, 192000])
@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_32", "FLOAT"])
def test_any_rate_and_depth_reads_as_44k1_stereo(tmp_path, rate, subtype):
    path = tmp_path / "in.wav"
    sf.write(path, sine(0.5, 440, rate, channels=1), rate, subtype=subtype)
    audio = read_audio(path)
    assert audio.samples.dtype == np.float32
    assert audio.samples.shape == (int(round(0.5 * SR)), 2)
    assert audio.source.sample_rate == rate and audio.source.channels == 1
    # mono is duplicated, and the 440 Hz sine survives resampling at its level
    assert np.array_equal(audio.samples[:, 0], audio.samples[:, 1])
    mid = audio.samples[2000:-2000, 0]
    assert abs(np.sqrt(np.mean(mid ** 2)) - 0.5 / np.sqrt(2)) < 0.005


@pytest.mark.parametrize("fmt,ext", [("FLAC", ".flac"), ("AIFF", ".aiff")])
def test_flac_and_aiff(tmp_path, fmt, ext):
    path = tmp_path / f"in{ext}"
    sf.write(path, sine(0.3), SR, format=fmt, subtype="PCM_16")
    assert read_audio(path).samples.shape == (int(0.3 * SR), 2)


def test_8bit_wav(tmp_path):
    path = tmp_path / "in.wav"
    sf.write(path, sine(0.3), SR, subtype="PCM_U8")
    assert np.abs(read_audio(path).samples).max() > 0.4


def _truncated(tmp_path):
    path = tmp_path / "cut.wav"
    sf.write(path, sine(1.0), SR, subtype="PCM_24")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _header_only(tmp_path):
    path = tmp_path / "header.wav"
    sf.write(path, sine(1.0), SR)
    path.write_bytes(path.read_bytes()[:30])
    return path


def _zero_length(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros((0, 2), dtype=np.float32), SR)
    return path


def _zero_bytes(tmp_path):
    path = tmp_path / "zero.wav"
    path.write_bytes(b"")
    return path


def _nan(tmp_path):
    path = tmp_path / "nan.wav"
    x = sine(0.5)
    x[1000, 0] = np.nan
    sf.write(path, x, SR, subtype="FLOAT")
    return path


def _six_channels(tmp_path):
    path = tmp_path / "surround.wav"
    sf.write(path, np.zeros((SR, 6), dtype=np.float32), SR)
    return path


def _text(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("these are my lyrics, not audio\n")
    return path


@pytest.mark.parametrize("make,words", [
    (_truncated, "truncated"), (_header_only, "not a readable"), (_zero_length, "zero length"),
    (_zero_bytes, "empty"), (_nan, "NaN"), (_six_channels, "6 channels"), (_text, "not a readable"),
])
def test_bad_files_give_one_line_reason_naming_the_file(tmp_path, make, words):
    path = make(tmp_path)
    with pytest.raises(AudioFileError) as err:
        read_audio(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(str(path)) and words in message
    assert message.count(path.name) == 1  # named once, in our words: not again in the library's "b'...'"


def test_write_is_atomic_and_resamples_back(tmp_path):
    x = sine(1.0)
    out = write_audio(tmp_path / "out" / "a.wav", x, out_rate=48000)
    info = sf.info(out)
    assert (info.samplerate, info.subtype, info.channels) == (48000, "PCM_24", 2)
    assert [p.name for p in out.parent.iterdir()] == ["a.wav"]  # no temp file left behind
    back = read_audio(out).samples
    assert np.abs(back[1000:-1000] - x[1000:-1000]).max() < 1e-3


def test_write_refuses_to_replace_an_input(tmp_path):
    src = tmp_path / "drums.wav"
    sf.write(src, sine(0.2), SR)
    before = src.read_bytes()
    with pytest.raises(AudioFileError, match="overwrite an input"):
        write_audio(src, np.zeros((100, 2)), protected=[src])
    # also through another spelling of the same path
    with pytest.raises(AudioFileError):
        write_audio(tmp_path / "." / "drums.wav", np.zeros((100, 2)), protected=[str(src)])
    assert src.read_bytes() == before


def test_failed_write_leaves_no_partial_file(tmp_path):
    with pytest.raises(AudioFileError):
        write_audio(tmp_path / "x.wav", np.full((10, 2), np.nan))
    assert os.listdir(tmp_path) == []


def test_resample_identity_and_length():
    x = np.random.default_rng(0).standard_normal((48000, 2)).astype(np.float32)
    assert resample(x, 48000, 48000) is x
    assert resample(x, 48000, 44100).shape == (44100, 2)


@pytest.mark.parametrize("name,role", [
    ("Lead Vox 2.wav", "vocals"), ("BV_choir.flac", "vocals"), ("Kick In.wav", "drums"),
    ("Bass Drum.wav", "drums"), ("OH L.wav", "drums"), ("Bass DI.wav", "bass"), ("808.wav", "bass"),
    ("Synth Pad.wav", "other"), ("Guitar.wav", "other"), ("Mix.wav", "mixture"), ("Drum Mix.wav", "drums"),
    ("drums.wav", "drums"), ("other.wav", "other"), ("vocals.wav", "vocals"), ("mixture.wav", "mixture"),
])
def test_stem_roles_from_file_names(name, role):
    assert role_for_name(name) == role


def test_song_folder_sums_same_role_and_pads_lengths(tmp_path):
    sf.write(tmp_path / "Kick.wav", sine(1.0, amp=0.1), SR)
    sf.write(tmp_path / "Snare.wav", sine(0.5, amp=0.2, rate=48000), 48000)
    sf.write(tmp_path / "Vocal.wav", sine(1.0, channels=1), SR)
    sf.write(tmp_path / "reference.wav", sine(1.0), SR)  # a reference is not a stem
    song = load_song(tmp_path)
    assert set(song.stems) == {"drums", "bass", "other", "vocals"}
    assert song.stems["drums"].shape == (SR, 2)
    assert np.abs(song.stems["bass"]).max() == 0
    assert len(song.sources["drums"]) == 2 and song.output_rate == SR  # the mix: the most common input rate
    assert abs(song.stems["drums"][1000, 0] - (0.1 + 0.2) * np.sin(2 * np.pi * 1000 * 1000 / SR)) < 0.02


def test_true_peak_of_intersample_peak():
    n = np.arange(SR)
    x = np.sin(2 * np.pi * n / 4 + np.pi / 4)  # samples at ±0.707, true peak 1.0
    assert abs(true_peak_dbtp(x) - 0.0) < 0.15
