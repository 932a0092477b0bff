"""Folders as users have them: stems with their mix beside them (the MUSDB18 layout, a DAW bounce
with "Master Mix.wav"), stems at several sample rates, mono stems. The stems are used and the mix
is named in one log line; each track is written back at its own files' rate, mono where it was
and still is mono."""
import logging
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from mixdaemon.audio.stems import OutputFormat, load_song, open_song
from mixdaemon.errors import StemLayoutError

SR = 44100


def tone(rate=SR, seconds=1.0, channels=2, freq=220.0, amp=0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = amp * np.sin(2 * np.pi * freq * t)
    return np.repeat(x[:, None], channels, axis=1).astype(np.float32)


def test_musdb18_layout_uses_the_stems_and_says_once_that_the_mix_is_not_used(tmp_path, caplog):
    for k, name in enumerate(("drums", "bass", "other", "vocals")):
        sf.write(tmp_path / f"{name}.wav", tone(freq=110.0 * (k + 1)), SR)
    (tmp_path / "mixture.wav").write_bytes(b"not audio at all")  # not even read
    with caplog.at_level(logging.WARNING):
        song = load_song(tmp_path)
    assert song.mixture is None and set(song.sources) == {"drums", "bass", "other", "vocals"}
    assert np.allclose(song.stems["bass"], tone(freq=220.0), atol=1e-4)
    mix = str(tmp_path / "mixture.wav")
    assert song.ignored == [mix] and mix in song.input_files  # never overwritten
    assert song.notes == [f"{mix}: a full mix beside the stems; not used (the stems are)"]
    assert [r.getMessage() for r in caplog.records] == song.notes


def test_a_daw_bounce_with_its_master_mix_uses_the_stems(tmp_path):
    sf.write(tmp_path / "Kick.wav", tone(), SR)
    sf.write(tmp_path / "Bass DI.wav", tone(channels=1), SR)
    sf.write(tmp_path / "Lead Vox.wav", tone(), SR)
    sf.write(tmp_path / "Master Mix.wav", tone(), SR)
    song = load_song(tmp_path)
    assert song.mixture is None and [s.path for s in song.sources["bass"]] == [str(tmp_path / "Bass DI.wav")]
    assert song.ignored == [str(tmp_path / "Master Mix.wav")]
    listed = load_song(sorted(tmp_path.iterdir()))  # the daemon passes the files, not the folder
    assert listed.ignored == song.ignored and listed.notes == song.notes


def test_a_mix_alone_is_still_a_mixture_to_separate(tmp_path):
    sf.write(tmp_path / "Master Mix.wav", tone(), SR)
    song = load_song(tmp_path)
    assert song.mixture is not None and song.stems == {} and song.notes == []
    sf.write(tmp_path / "mixture.wav", tone(), SR)
    with pytest.raises(StemLayoutError, match="more than one full-mix file"):
        load_song(tmp_path)


def test_each_track_goes_back_at_its_own_rate_and_mono_where_it_still_is(tmp_path):
    sf.write(tmp_path / "Kick.wav", tone(48000), 48000)
    sf.write(tmp_path / "Snare.wav", tone(48000), 48000)
    sf.write(tmp_path / "Bass.wav", tone(SR, channels=1), SR)
    sf.write(tmp_path / "Pad.wav", tone(96000), 96000)
    sf.write(tmp_path / "Vocal.wav", tone(48000, channels=1), 48000)
    song = load_song(tmp_path)
    tracks = {name: x.copy() for name, x in song.stems.items()}
    tracks["vocals"][:, 1] *= 0.5  # panned by the processing
    tracks["mixture"] = sum(tracks.values())
    formats, notes = song.output_formats(tracks)
    assert formats == {"drums": OutputFormat(48000, 2), "bass": OutputFormat(SR, 1), "other": OutputFormat(96000, 2),
                       "vocals": OutputFormat(48000, 2), "mixture": OutputFormat(48000, 2)}
    assert notes == ["the input files are at 44100, 48000, 96000 Hz; written: each stem at the rate of its own "
                     "files, the mixture at 48000 Hz (the most common)",
                     "vocals: mono in the input, written in stereo because the processing panned or widened it"]
    mix_only = load_song([tmp_path / "Bass.wav", tmp_path / "Vocal.wav"]).output_formats({"mixture": tracks["bass"]})
    assert mix_only == ({"mixture": OutputFormat(48000, 1)},  # all mono and still mono; a tie of rates: the higher
                        ["the input files are at 44100, 48000 Hz; written: the mixture at 48000 Hz (the most common)"])


def _musdb(folder):
    for k, name in enumerate(("drums", "bass", "other", "vocals")):
        sf.write(folder / f"{name}.wav", tone(freq=110.0 * (k + 1), seconds=0.5 + 0.1 * k), SR)
    (folder / "mixture.wav").write_bytes(b"not audio at all")
    return folder


def _daw_bounce(folder):
    sf.write(folder / "Kick.wav", tone(48000, 0.7), 48000)
    sf.write(folder / "Snare.wav", tone(22050, 0.9, freq=330.0), 22050, subtype="PCM_16")
    sf.write(folder / "Bass DI.flac", tone(96000, 0.4, channels=1), 96000, subtype="PCM_24")
    sf.write(folder / "Lead Vox.wav", tone(SR, 1.1, channels=1), SR, subtype="FLOAT")
    sf.write(folder / "Master Mix.wav", tone(), SR)
    return sorted(folder.iterdir())  # the daemon passes the files, not the folder


def _lone_mix(folder):
    sf.write(folder / "Bounce 3.wav", tone(48000, 0.6, channels=1), 48000)
    return folder / "Bounce 3.wav"


@pytest.mark.parametrize("layout", [_musdb, _daw_bounce, _lone_mix])
def test_an_opened_song_is_the_loaded_song_block_by_block(tmp_path, layout):
    given = layout(tmp_path)
    source, song = open_song(given), load_song(given)
    assert (source.sources, source.ignored, source.notes, source.input_files, source.output_rate) == \
           (song.sources, song.ignored, song.notes, song.input_files, song.output_rate)
    assert source.n_samples == song.n_samples and source.names == list(song.stems)
    if song.mixture is not None:
        assert np.array_equal(source.mixture.read_all(), song.mixture)
        return
    formats, _ = song.output_formats(song.stems)
    assert {name: source.output_format(name) for name in song.stems} == \
           {name: {"out_rate": f.rate, "mono_if_same": f.channels == 1} for name, f in formats.items()}
    blocks = list(source.blocks(7919))
    assert [start for start, _ in blocks] == list(range(0, song.n_samples, 7919))
    for name, whole in song.stems.items():
        parts = [b[name] for _, b in blocks]
        assert all(p.shape == (7919, 2) and p.dtype == np.float32 for p in parts[:-1])
        assert np.array_equal(np.concatenate(parts), whole)


def test_excerpts_are_the_same_spans_of_the_loaded_stems(tmp_path):
    files = _daw_bounce(tmp_path)
    source, song = open_song(files), load_song(files)
    n = song.n_samples
    spans = [(0, 1000), (20000, 30011), (n - 500, n + 700)]
    for name, whole in song.stems.items():
        padded = np.concatenate([whole, np.zeros((700, 2), np.float32)])
        expected = np.concatenate([padded[a:b] for a, b in spans])
        got = source.excerpt(name, spans)
        assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-4
    assert np.abs(source.excerpt("drums", spans[1:2])).max() > 0.3  # the kick and snare summed
    assert source.excerpt("other", spans).shape == (sum(b - a for a, b in spans), 2)  # no file: silence


def test_a_long_stem_beside_short_ones_streams_in_memory_bounded_by_its_blocks(tmp_path):
    """A 20-minute drum stem (8 kHz mono, to keep the file small) beside three 15-s stems: the
    blocks cover the long one exactly, every stem in step, the short ones silent after their end;
    the song read never holds more than a few blocks (the whole of it would take 1.7 GB)."""
    rate, frames = 8000, 20 * 60 * 8000
    with sf.SoundFile(tmp_path / "drums.flac", "w", rate, 1, "PCM_24") as f:
        for start in range(0, frames, 1 << 20):
            t = np.arange(start, min(frames, start + (1 << 20))) / rate
            f.write((0.25 * np.sin(2 * np.pi * 100.0 * t)).astype(np.float32))
    sf.write(tmp_path / "bass.wav", tone(SR, 15.0), SR)
    sf.write(tmp_path / "vocals.wav", tone(48000, 15.0, channels=1), 48000)
    sf.write(tmp_path / "guitar.flac", tone(22050, 15.0), 22050)
    source = open_song(tmp_path)
    n, block = source.n_samples, 10 * SR
    assert n == round(frames * SR / rate)
    middle = (n // 2) // block * block
    covered = 0
    tracemalloc.start()
    try:
        for start, blocks in source.blocks(block):
            assert start == covered and len({x.shape for x in blocks.values()}) == 1
            covered += blocks["drums"].shape[0]
            if start == middle:
                kept = blocks["drums"].copy()
            if start >= 16 * SR:
                assert not any(np.any(blocks[name]) for name in ("bass", "other", "vocals"))
        tracemalloc_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert covered == n and tracemalloc_peak < 100e6
    t = (middle + np.arange(block)) / SR
    assert np.abs(kept[:, 0] - 0.25 * np.sin(2 * np.pi * 100.0 * t)).max() < 1e-3  # in place, at its level
    assert np.abs(source.excerpt("drums", [(middle, middle + block)]) - kept).max() < 1e-4
