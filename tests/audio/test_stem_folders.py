"""Folders as users have them: stems with their mix beside them (the MUSDB18 layout, a DAW bounce
with "Master Mix.wav"), stems at several sample rates, mono stems. The stems are used and the mix
is named in one log line; each track is written back at its own files' rate, mono where it was
and still is mono."""
import logging

import numpy as np
import pytest
import soundfile as sf

from mixdaemon.audio.stems import OutputFormat, load_song
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
