"""`mixdaemon transfer | fxnorm apply | automix` on folders as users have them: the MUSDB18 layout
(mixture.wav beside the four stems) and a DAW bounce with "Master Mix.wav", with stems at several
sample rates and in mono; and a mixture reference with no demucs model on an offline machine."""
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from mixdaemon.audio.examples import synth_song
from mixdaemon.audio.io import resample, write_audio
from mixdaemon.cli.main import main
from mixdaemon.mixing.settings import TransferSettings
from mixdaemon.mixing.transfer import transfer

STEMS = ("drums", "bass", "other", "vocals")
SR = 44100


def _format(path) -> tuple[int, int, float]:
    info = sf.info(path)
    return info.samplerate, info.channels, round(info.duration, 2)


def _mix_lines(caplog, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if name in r.getMessage()]


@pytest.mark.parametrize("engine", ["match", "param"])
def test_transfer_between_musdb18_layout_folders_uses_their_stems(real_stems, tmp_path, caplog, engine):
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        assert main(["transfer", str(real_stems / "song_a"), "--reference", str(real_stems / "song_b"),
                     "--out", str(out), "--engine", engine, "-q"]) == 0
    assert all(_format(out / f"{name}.wav") == (SR, 2, 15.0) for name in (*STEMS, "mixture"))
    for song in ("song_a", "song_b"):
        assert _mix_lines(caplog, str(real_stems / song / "mixture.wav")) == [
            f"{real_stems / song / 'mixture.wav'}: a full mix beside the stems; not used (the stems are)"]


def test_fxnorm_apply_and_automix_on_a_musdb18_layout_folder(real_stems, tmp_path, caplog):
    song = real_stems / "song_a"
    with caplog.at_level(logging.WARNING):
        assert main(["fxnorm", "apply", str(song), "--out", str(tmp_path / "norm"), "-q"]) == 0
        assert main(["automix", str(song), "--out", str(tmp_path / "mix.wav"), "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "norm").iterdir()) == sorted(f"{s}.wav" for s in STEMS)
    assert _format(tmp_path / "mix.wav") == (SR, 2, 15.0)
    assert len(_mix_lines(caplog, str(song / "mixture.wav"))) == 2  # one line per command


@pytest.fixture
def bounce(tmp_path):
    """A DAW bounce: drums at 48 kHz, a mono bass DI at 44.1 kHz, a pad at 96 kHz, a mono lead
    vocal at 48 kHz, and the master mix beside them; 2 s each. The reference's bass and vocals are
    panned."""
    folder = tmp_path / "bounce"
    folder.mkdir()
    song = synth_song(2.0, seed=0)
    for name, stem, rate, mono in (("Kick.wav", "drums", 48000, False), ("Bass DI.wav", "bass", SR, True),
                                   ("Synth Pad.wav", "other", 96000, False), ("Lead Vox.wav", "vocals", 48000, True)):
        x = resample(song[stem], SR, rate)
        sf.write(folder / name, x.mean(axis=1) if mono else x, rate)
    sf.write(folder / "Master Mix.wav", resample(sum(song.values()), SR, 48000), 48000)
    for name, x in synth_song(2.0, seed=1).items():
        pan = [1.0, 0.5] if name in ("bass", "vocals") else [1.0, 1.0]  # off the centre, as the input is not
        write_audio(tmp_path / "reference" / f"{name}.wav", x * pan)
    return folder


def test_a_bounce_with_its_master_mix_keeps_each_stems_rate_and_mono(bounce, tmp_path, caplog):
    master = (bounce / "Master Mix.wav").read_bytes()
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        assert main(["transfer", str(bounce), "--reference", str(tmp_path / "reference"), "--out", str(out),
                     "--match", "level,eq", "-q"]) == 0  # neither moves a mono stem off the centre
    assert {name: _format(out / f"{name}.wav") for name in (*STEMS, "mixture")} == {
        "drums": (48000, 2, 2.0), "bass": (SR, 1, 2.0), "other": (96000, 2, 2.0), "vocals": (48000, 1, 2.0),
        "mixture": (48000, 2, 2.0)}
    assert (bounce / "Master Mix.wav").read_bytes() == master
    assert len(_mix_lines(caplog, "Master Mix.wav")) == 1
    assert _mix_lines(caplog, "Hz") == ["the input files are at 44100, 48000, 96000 Hz; written: each stem at the "
                                        "rate of its own files, the mixture at 48000 Hz (the most common)"]


def test_what_a_transfer_did_not_keep_is_in_its_result(bounce, tmp_path):
    """The result (which the daemon writes into manifest.json) names the unused mix, the rates and
    the mono stems that the conversion made stereo."""
    result = transfer(bounce, tmp_path / "reference", tmp_path / "out", TransferSettings(engine="match"))
    assert result.notes == [
        f"{bounce / 'Master Mix.wav'}: a full mix beside the stems; not used (the stems are)",
        "the input files are at 44100, 48000, 96000 Hz; written: each stem at the rate of its own files, "
        "the mixture at 48000 Hz (the most common)",
        "bass, vocals: mono in the input, written in stereo because the processing panned or widened them"]
    assert _format(tmp_path / "out" / "vocals.wav") == (48000, 2, 2.0)


def test_a_mixture_reference_offline_fails_at_once_in_one_line(tmp_path):
    """No demucs model on the machine and no connection to the download server: one line, in a few
    seconds (it used to retry for half a minute, logging every try), exit status 2."""
    stems = tmp_path / "stems"
    for name, x in synth_song(1.0, seed=0).items():
        write_audio(stems / f"{name}.wav", x)
    write_audio(tmp_path / "reference mix.wav", np.sum(list(synth_song(1.0, seed=1).values()), axis=0))
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": str(tmp_path / "hub"),
           "TORCH_HOME": str(tmp_path / "torch")}
    env.pop("HF_HUB_OFFLINE", None)
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "mixdaemon", "transfer", str(stems), "--reference",
                           str(tmp_path / "reference mix.wav"), "--out", str(tmp_path / "out"), "-q"],
                          capture_output=True, text=True, env=env, timeout=120)
    seconds = time.monotonic() - t0
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"mixdaemon: error: demucs model 'htdemucs': not downloaded yet (not in {tmp_path / 'hub'}) and 127.0.0.1 "
        "cannot be reached to download it: give a folder of stems (drums/bass/other/vocals) instead, or set "
        "separation_dir ([transfer] in the config, --separation-dir) to a folder with demucs models"]
    assert seconds < 15.0  # mostly the start of Python and torch; the old retries alone took 23 s
    assert not (tmp_path / "out").exists() and not (tmp_path / "torch").exists()
