"""From a folder (or a list) of bounced files to one song's four stems.

The models work on four stems: drums, bass, other, vocals. DAW bounces are named freely, so each
file gets a role by a documented rule on its name (see `role_for_name`); several files with the same
role ("Kick.wav", "Snare.wav") are summed into that stem. A file named like a full mix ("mixture",
"mix", "master") is a mixture: alone, it goes to separation; beside stems (the MUSDB18 layout, a
DAW bounce with its "Master Mix.wav") it is not used, and the song says so in its `notes`.
`reference.*` files are references, not stems, and are skipped here.

Stems of one song may differ in rate, length and channel count: each is read as stereo at the
working rate and shorter ones are zero-padded at the end to the longest, because DAWs bounce every
track from the same start. `Song.output_formats` gives each track back its own files' rate, and
mono where they were mono and the track still is.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from mixdaemon.audio.io import LoadedAudio, SourceInfo, is_audio_file, read_audio
from mixdaemon.errors import StemLayoutError
from mixdaemon.progress import Progress, no_progress

log = logging.getLogger(__name__)

STEM_NAMES = ("drums", "bass", "other", "vocals")
SILENCE_DBFS = -100.0  # a song below this everywhere is a silent bounce (a muted track, an empty render)
MIXTURE = "mixture"

# Checked in this order on the lower-cased file stem split into words; the first role whose
# keywords match wins, anything unmatched is "other". Drums come before bass so that "Bass Drum" is
# a drum; the full-mix words come last so that "Drum Mix" is drums, not a mixture.
_ROLE_KEYWORDS = (
    ("vocals", ("vocals", "vocal", "vox", "voice", "voices", "lead", "leadvox", "bv", "bvs", "backing",
                "choir", "sing", "singer", "adlib", "adlibs", "harmony", "harmonies")),
    ("drums", ("drums", "drum", "kick", "kicks", "snare", "snares", "hat", "hats", "hihat", "hihats",
               "tom", "toms", "cymbal", "cymbals", "overhead", "overheads", "oh", "ride", "crash",
               "perc", "percussion", "clap", "claps", "kit")),
    ("bass", ("bass", "sub", "808", "subbass", "bassline")),
    (MIXTURE, ("mixture", "mix", "master", "mixdown", "bounce")),
)


def role_for_name(filename: str) -> str:
    """The stem role of a bounced file, from its name: 'Lead Vox 2.wav' → vocals, 'Kick In.flac' →
    drums, 'Bass DI.wav' → bass, 'Mix.wav' → mixture, 'Synth Pad.wav' → other."""
    words = [w for w in re.split(r"[^a-z0-9]+", Path(filename).stem.lower()) if w]
    joined = "".join(words)
    for role, keywords in _ROLE_KEYWORDS:
        if any(w in keywords for w in words) or joined in keywords:
            return role
    return "other"


def is_reference_name(path: Path) -> bool:
    return path.stem.lower() == "reference" or path.stem.lower().startswith("reference.")


@dataclass(frozen=True)
class OutputFormat:
    """How a track is written back: its sample rate and channel count."""

    rate: int
    channels: int


# A track whose two channels differ by less than this (half the step of 24-bit audio) is mono.
_MONO_TOLERANCE = 2.0 ** -24


def _most_common_rate(infos: list[SourceInfo]) -> int:
    """The rate most of these files have (the highest, between equally common ones)."""
    rates = [s.sample_rate for s in infos]
    return max(set(rates), key=lambda rate: (rates.count(rate), rate))


@dataclass
class Song:
    """One song as the pipeline sees it: either four stems or a mixture still to separate."""

    stems: dict[str, np.ndarray] = field(default_factory=dict)
    mixture: np.ndarray | None = None
    sources: dict[str, list[SourceInfo]] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)  # files given but not used (a full mix beside stems)
    notes: list[str] = field(default_factory=list)    # one line each: how the input was read otherwise than given

    @property
    def n_samples(self) -> int:
        arrays = list(self.stems.values()) or ([self.mixture] if self.mixture is not None else [])
        return arrays[0].shape[0] if arrays else 0

    @property
    def is_silent(self) -> bool:
        arrays = list(self.stems.values()) + ([self.mixture] if self.mixture is not None else [])
        return all(float(np.max(np.abs(a), initial=0.0)) < 10 ** (SILENCE_DBFS / 20) for a in arrays)

    @property
    def input_files(self) -> list[str]:
        """Every file given, used or not: none of them may be overwritten."""
        return [s.path for s in self._infos] + self.ignored

    @property
    def _infos(self) -> list[SourceInfo]:
        return [s for infos in self.sources.values() for s in infos]

    @property
    def output_rate(self) -> int:
        """The mix goes back at the most common sample rate of the input files (the highest of
        equally common ones)."""
        return _most_common_rate(self._infos)

    def output_formats(self, tracks: dict[str, np.ndarray]) -> tuple[dict[str, OutputFormat], list[str]]:
        """How to write each of these tracks (stems, "mixture") of this song, and a note (logged
        too) for each way that differs from the input files. A stem goes back at the rate of its own files; the
        mixture, and a stem that had no file, at `output_rate`. A track is written mono when all
        its files were mono and its channels are still the same; one that processing made stereo
        stays stereo (folding it down would undo the processing), and the note names it."""
        infos = self._infos
        formats, widened = {}, []
        for name, samples in tracks.items():
            own = self.sources.get(name) if name in STEM_NAMES else None
            given = own or infos
            rate = _most_common_rate(own) if own else self.output_rate
            mono_given = all(s.channels == 1 for s in given)
            still_mono = float(np.max(np.abs(samples[:, 0] - samples[:, 1]), initial=0.0)) <= _MONO_TOLERANCE
            formats[name] = OutputFormat(rate, 1 if mono_given and still_mono else 2)
            if mono_given and not still_mono:
                widened.append(name)
        notes = []
        rates = sorted({s.sample_rate for s in infos})
        if len(rates) > 1:
            written = (["each stem at the rate of its own files"] if set(tracks) & set(STEM_NAMES) else []) + \
                      ([f"the mixture at {self.output_rate} Hz (the most common)"] if MIXTURE in tracks else [])
            notes.append(f"the input files are at {', '.join(map(str, rates))} Hz; written: {', '.join(written)}")
        if widened:
            them = "it" if len(widened) == 1 else "them"
            notes.append(f"{', '.join(widened)}: mono in the input, written in stereo because the processing "
                         f"panned or widened {them}")
        for note in notes:
            log.warning("%s", note)
        return formats, notes


def list_audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and is_audio_file(p) and not is_reference_name(p))


def _pad_to(x: np.ndarray, n: int) -> np.ndarray:
    return x if x.shape[0] == n else np.pad(x, ((0, n - x.shape[0]), (0, 0)))


def _sum_padded(tracks: list[np.ndarray], length: int) -> np.ndarray:
    """The tracks' sum, each padded to `length`: one track as it is, more added into one buffer (a
    stacked copy of them first costs more than reading the files)."""
    if len(tracks) == 1:
        return _pad_to(tracks[0], length)
    total = np.zeros((length, tracks[0].shape[1]), dtype=np.float32)
    for track in tracks:
        total[:track.shape[0]] += track
    return total


def load_song(path_or_files: str | Path | Iterable[str | Path], progress: Progress = no_progress) -> Song:
    """Load a song from a folder of stems, a list of stem files, or a single mixture file;
    `progress` after each file read."""
    single_file = False
    if isinstance(path_or_files, (str, Path)):
        path = Path(path_or_files)
        if path.is_dir():
            files = list_audio_files(path)
            if not files:
                raise StemLayoutError(f"{path}: no WAV/FLAC/AIFF stems found in this folder")
        elif path.exists():
            files, single_file = [path], True
        else:
            raise StemLayoutError(f"{path}: no such file or folder")
    else:
        files = [Path(p) for p in path_or_files]
    if single_file and role_for_name(files[0].name) in (MIXTURE, "other"):
        # A lone file that is not named like a stem is a full mix, whatever it is called.
        loaded = read_audio(files[0])
        return Song(mixture=loaded.samples, sources={MIXTURE: [loaded.source]})

    roles = {f: role_for_name(f.name) for f in files}
    mixes = [f for f in files if roles[f] == MIXTURE]
    if len(mixes) == len(files):
        if len(mixes) > 1:
            raise StemLayoutError(f"{files[0].parent}: more than one full-mix file; give one")
        mix = read_audio(mixes[0])
        return Song(mixture=mix.samples, sources={MIXTURE: [mix.source]})
    song = Song(ignored=[str(f) for f in mixes])
    if mixes:
        # The stems are what the user mixed from; the mix beside them would only be separated back.
        song.notes.append(f"{', '.join(str(f) for f in mixes)}: a full mix beside the stems; "
                          "not used (the stems are)")
        log.warning("%s", song.notes[-1])
    by_role: dict[str, list[LoadedAudio]] = {}
    stems = [f for f in files if f not in mixes]
    for i, f in enumerate(stems):
        by_role.setdefault(roles[f], []).append(read_audio(f))
        progress(f"reading {f.name}", (i + 1) / len(stems))

    length = max(a.samples.shape[0] for items in by_role.values() for a in items)
    for role in STEM_NAMES:
        items = by_role.get(role, [])
        if items:
            song.stems[role] = _sum_padded([a.samples for a in items], length)
            song.sources[role] = [a.source for a in items]
        else:
            song.stems[role] = np.zeros((length, 2), dtype=np.float32)
    return song
