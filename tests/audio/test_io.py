"""Audio I/O: what a DAW bounces reads correctly, what is broken is refused with a clear reason,
and writes are atomic and never replace an input."""
import os

import numpy as np
import pytest
import soundfile as sf
import soxr

from mixdaemon.audio.io import MONO_TOLERANCE, AudioReader, AudioWriter, read_audio, resample, write_audio
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


def noise(n, channels=2, seed=0, amp=0.2):
    return (amp * np.random.default_rng(seed).standard_normal((n, channels))).astype(np.float32)


@pytest.mark.parametrize("rate,channels,subtype", [
    (48000, 2, "PCM_24"), (96000, 1, "PCM_24"), (22050, 2, "FLOAT"), (44100, 1, "PCM_16"), (8000, 2, "PCM_24"),
])
def test_reader_blocks_are_the_one_shot_resampling_of_the_file(tmp_path, rate, channels, subtype):
    """Read block by block (blocks of odd sizes, some longer than what the reader decodes at once),
    a file gives the samples of soxr's one-shot VHQ resampling of all of it, of the same length, and
    read_audio's samples exactly."""
    path = tmp_path / "in.wav"
    sf.write(path, noise(int(1.7 * rate) + 13, channels), rate, subtype=subtype)
    data, _ = sf.read(path, dtype="float32", always_2d=True)
    expected = data if rate == SR else soxr.resample(data, rate, SR, quality="VHQ")
    expected = np.repeat(expected, 2, axis=1) if channels == 1 else expected
    reader = AudioReader(path)
    assert reader.n_samples == expected.shape[0] and reader.source.sample_rate == rate
    for size in (1009, 4097, 70001):
        blocks = list(reader.blocks(size))
        assert all(b.shape == (size, 2) and b.dtype == np.float32 for b in blocks[:-1])
        got = np.concatenate(blocks)
        assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-5
    assert np.array_equal(read_audio(path).samples, got)


@pytest.mark.parametrize("rate", [48000, 8000, 32000, 44100])
def test_reader_excerpts_are_the_same_spans_of_the_whole(tmp_path, rate):
    path = tmp_path / "in.flac"
    sf.write(path, noise(3 * rate, 1), rate, subtype="PCM_24")
    reader = AudioReader(path)
    whole = read_audio(path).samples
    n = reader.n_samples
    for a, b in [(0, 500), (1, 2), (70000, 70000 + 44100), (n - 3000, n), (n - 100, n + 400), (n + 5, n + 10)]:
        span = reader.span(a, b)
        expected = np.zeros((b - a, 2), np.float32)
        expected[:max(0, min(b, n) - a)] = whole[a:b]
        assert span.shape == (b - a, 2) and np.abs(span - expected).max(initial=0.0) < 1e-4


def test_reader_refuses_a_bad_sample_when_it_reaches_it(tmp_path):
    path = tmp_path / "nan.wav"
    x = noise(200000)
    x[150000:150003, 1] = np.inf
    sf.write(path, x, SR, subtype="FLOAT")
    reader = AudioReader(path)  # the header is fine: the samples are checked as they are read
    blocks = reader.blocks(50000)
    assert next(blocks).shape == (50000, 2)
    with pytest.raises(AudioFileError, match=r"nan\.wav: contains 3 NaN or infinite sample values$"):
        list(blocks)
    with pytest.raises(AudioFileError, match="contains 3 NaN"):
        reader.span(149000, 151000)


def test_reader_refuses_a_truncated_flac(tmp_path):
    path = tmp_path / "cut.flac"
    sf.write(path, noise(200000), 48000, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[:-50000])
    with pytest.raises(AudioFileError, match=r"cut\.flac: corrupt or truncated audio data"):
        list(AudioReader(path).blocks(44100))


def _write_in_blocks(path, x, sizes, **kwargs):
    with AudioWriter(path, **kwargs) as writer:
        start = 0
        for size in sizes:
            writer.write(x[start:start + size])
            start += size
        writer.write(x[start:])
    return writer


@pytest.mark.parametrize("out_rate,subtype", [(44100, "PCM_24"), (48000, "PCM_16"), (22050, "FLOAT")])
def test_writer_fed_in_blocks_writes_what_write_audio_writes(tmp_path, out_rate, subtype):
    x = noise(100000)
    writer = _write_in_blocks(tmp_path / "blocks.wav", x, [1, 999, 30011, 0, 4097], out_rate=out_rate, subtype=subtype)
    assert writer.channels == 2 and not writer.widened
    write_audio(tmp_path / "whole.wav", x, out_rate=out_rate, subtype=subtype)
    assert (tmp_path / "blocks.wav").read_bytes() == (tmp_path / "whole.wav").read_bytes()
    assert sf.info(tmp_path / "blocks.wav").frames == round(100000 * out_rate / SR)


def test_writer_shows_nothing_until_done_and_nothing_after_an_error(tmp_path):
    target = tmp_path / "mix.wav"
    target.write_bytes(b"the previous render")
    with AudioWriter(target) as writer:
        writer.write(noise(50000))
        assert target.read_bytes() == b"the previous render"  # the partial file is hidden beside it
        assert [p.name.startswith(".mix.wav.") for p in tmp_path.iterdir() if p != target] == [True]
    assert sf.info(target).frames == 50000 and sorted(os.listdir(tmp_path)) == ["mix.wav"]

    fresh = tmp_path / "new.wav"
    with pytest.raises(RuntimeError, match="the job failed"):
        with AudioWriter(fresh, out_rate=48000) as writer:
            writer.write(noise(50000))
            raise RuntimeError("the job failed")
    with pytest.raises(AudioFileError, match="NaN"):
        with AudioWriter(target) as writer:
            writer.write(noise(50000))
            writer.write(np.full((10, 2), np.nan, np.float32))
    assert sorted(os.listdir(tmp_path)) == ["mix.wav"] and sf.info(target).frames == 50000


def test_writer_refuses_an_input_before_writing(tmp_path):
    src = tmp_path / "drums.wav"
    sf.write(src, sine(0.2), SR)
    with pytest.raises(AudioFileError, match="overwrite an input"):
        AudioWriter(tmp_path / "." / "drums.wav", protected=[src])
    assert sf.info(src).frames == int(0.2 * SR)


@pytest.mark.parametrize("subtype,lsb", [("PCM_24", 2.0 ** -23), ("PCM_16", 2.0 ** -15), ("FLOAT", 1e-6)])
def test_writer_writes_mono_what_stayed_mono(tmp_path, subtype, lsb):
    """A track whose files were mono goes back mono when its channels stayed the same (within
    MONO_TOLERANCE), the mono file the channels' mean as write_audio(channels=1) writes it."""
    x = np.repeat(noise(90000, 1), 2, axis=1)
    x[:, 1] += MONO_TOLERANCE / 2  # below the tolerance: still mono
    writer = _write_in_blocks(tmp_path / "bass.wav", x, [4410, 12345], out_rate=48000, subtype=subtype,
                              mono_if_same=True)
    assert writer.channels == 1 and not writer.widened
    assert sorted(os.listdir(tmp_path)) == ["bass.wav"]
    written, rate = sf.read(tmp_path / "bass.wav", dtype="float64")
    assert written.ndim == 1 and rate == 48000 and sf.info(tmp_path / "bass.wav").subtype == subtype
    write_audio(tmp_path / "expected.wav", x, out_rate=48000, subtype=subtype, channels=1)
    expected, _ = sf.read(tmp_path / "expected.wav", dtype="float64")
    assert written.shape == expected.shape and np.abs(written - expected).max() <= lsb


def test_writer_keeps_stereo_what_processing_widened(tmp_path):
    x = np.repeat(noise(90000, 1), 2, axis=1)
    x[60000:, 1] *= 0.5  # panned late in the track
    writer = _write_in_blocks(tmp_path / "vocals.wav", x, [30000, 20000], mono_if_same=True)
    assert writer.channels == 2 and writer.widened and writer.max_side > MONO_TOLERANCE
    write_audio(tmp_path / "expected.wav", x)
    assert (tmp_path / "vocals.wav").read_bytes() == (tmp_path / "expected.wav").read_bytes()


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
