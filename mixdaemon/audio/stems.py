"""From a folder (or a list) of bounced files to one song's four stems.

The models work on four stems: drums, bass, other, vocals. DAW bounces are named freely, so each
file gets a role by a documented rule on its name (see `role_for_name`); several files with the same
role ("Kick.wav", "Snare.wav") are summed into that stem. A file named like a full mix ("mixture",
"mix", "master") is a mixture: alone, it goes to separation; beside stems (the MUSDB18 layout, a
DAW bounce with its "Master Mix.wav") it is not used, and the song says so in its `notes`.
`reference.*` files are references, not stems, and are skipped here.

Stems of one song may differ in rate, length and channel count: each is read as stereo at the
working rate and shorter ones are zero-padded at the end to the longest, because DAWs bounce every
track from the same start. Each track goes back at its own files' rate, and mono where they were
mono and the track still is (`output_format`, `Song.output_formats`).

`open_song` decides all that from the files' headers and reads no samples: its SongSource reads
the song block by block or by excerpts, in memory bounded by the block whatever the song's length
(a job of any length). `load_song` is the same song read whole, for callers that want the arrays.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from mixdaemon.audio.io import MONO_TOLERANCE, AudioReader, SourceInfo, is_audio_file
from mixdaemon.audio.streams import block_edges
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


def _most_common_rate(infos: list[SourceInfo]) -> int:
    """The rate most of these files have (the highest, between equally common ones)."""
    rates = [s.sample_rate for s in infos]
    return max(set(rates), key=lambda rate: (rates.count(rate), rate))


@dataclass
class SongFiles:
    """What a song's files are and how its tracks go back out, whether its samples are in memory
    (Song) or still in the files (SongSource)."""

    sources: dict[str, list[SourceInfo]] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)  # files given but not used (a full mix beside stems)
    notes: list[str] = field(default_factory=list)    # one line each: how the input was read otherwise than given

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

    def output_format(self, track: str) -> dict[str, int | bool]:
        """How a track (a stem, "mixture") of this song goes back, as AudioWriter's keywords:
        `out_rate`, a stem's own files' rate (the mixture's, and a stem's that had no file:
        `output_rate`), and `mono_if_same`, whether all its files (the mixture: all the song's) were
        mono, so that it is written mono if its channels are still the same."""
        own = self.sources.get(track) if track in STEM_NAMES else None
        given = own or self._infos
        return {"out_rate": _most_common_rate(own) if own else self.output_rate,
                "mono_if_same": all(s.channels == 1 for s in given)}

    def output_notes(self, widened: list[str], tracks: Iterable[str] = (*STEM_NAMES, MIXTURE)) -> list[str]:
        """A note (logged too) for each way the written tracks differ from the input files: rates
        that differ between the files, and `widened`, tracks whose files were mono that processing
        made stereo (folding them down would undo the processing)."""
        tracks = set(tracks)
        notes = []
        rates = sorted({s.sample_rate for s in self._infos})
        if len(rates) > 1:
            written = (["each stem at the rate of its own files"] if tracks & set(STEM_NAMES) else []) + \
                      ([f"the mixture at {self.output_rate} Hz (the most common)"] if MIXTURE in tracks else [])
            notes.append(f"the input files are at {', '.join(map(str, rates))} Hz; written: {', '.join(written)}")
        if widened:
            them = "it" if len(widened) == 1 else "them"
            notes.append(f"{', '.join(widened)}: mono in the input, written in stereo because the processing "
                         f"panned or widened {them}")
        for note in notes:
            log.warning("%s", note)
        return notes


@dataclass
class Song(SongFiles):
    """One song as the pipeline sees it: either four stems or a mixture still to separate."""

    stems: dict[str, np.ndarray] = field(default_factory=dict)
    mixture: np.ndarray | None = None

    @property
    def n_samples(self) -> int:
        arrays = list(self.stems.values()) or ([self.mixture] if self.mixture is not None else [])
        return arrays[0].shape[0] if arrays else 0

    @property
    def is_silent(self) -> bool:
        arrays = list(self.stems.values()) + ([self.mixture] if self.mixture is not None else [])
        return all(float(np.max(np.abs(a), initial=0.0)) < 10 ** (SILENCE_DBFS / 20) for a in arrays)

    def output_formats(self, tracks: dict[str, np.ndarray]) -> tuple[dict[str, OutputFormat], list[str]]:
        """How to write each of these tracks (stems, "mixture") of this song (`output_format`,
        mono only where the track's channels are still the same), and the notes (`output_notes`)."""
        formats, widened = {}, []
        for name, samples in tracks.items():
            given = self.output_format(name)
            still_mono = float(np.max(np.abs(samples[:, 0] - samples[:, 1]), initial=0.0)) <= MONO_TOLERANCE
            formats[name] = OutputFormat(given["out_rate"], 1 if given["mono_if_same"] and still_mono else 2)
            if given["mono_if_same"] and not still_mono:
                widened.append(name)
        return formats, self.output_notes(widened, tracks)


def list_audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and is_audio_file(p) and not is_reference_name(p))


def _pad_to(x: np.ndarray, n: int) -> np.ndarray:
    return x if x.shape[0] == n else np.pad(x, ((0, n - x.shape[0]), (0, 0)))


def _sum_padded(tracks: list[np.ndarray], length: int) -> np.ndarray:
    """The stereo tracks' sum, each padded to `length` (none: silence): one track as it is, more
    added into one buffer (a stacked copy of them first costs more than reading the files)."""
    if len(tracks) == 1:
        return _pad_to(tracks[0], length)
    total = np.zeros((length, 2), dtype=np.float32)
    for track in tracks:
        total[:track.shape[0]] += track
    return total


_NOTHING = np.zeros((0, 2), dtype=np.float32)


@dataclass
class SongSource(SongFiles):
    """A song opened from its files, its samples left in them: the four stems (`names`), each the
    sum of its files (AudioReaders, per role in `readers`), or a mixture still to separate
    (`mixture`, and no stems). Every way of reading gives the samples `load` gives."""

    path: Path = field(default_factory=Path)  # what was given: a folder or a file (for a list, its first file's folder)
    readers: dict[str, list[AudioReader]] = field(default_factory=dict)
    mixture: AudioReader | None = None

    @property
    def names(self) -> list[str]:
        return [] if self.mixture is not None else list(STEM_NAMES)

    @property
    def n_samples(self) -> int:
        """The song's length at the working rate: its longest file's."""
        readers = [r for files in self.readers.values() for r in files] + ([self.mixture] if self.mixture is not None else [])
        return max(r.n_samples for r in readers)

    def blocks(self, block_samples: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(start, {stem: (m, 2) float32}) over the whole song, m = block_samples except in the
        last block: each stem the sum of its files, a shorter file continued by zeros, a stem with
        no file zeros."""
        streams = {name: [r.blocks(block_samples) for r in self.readers.get(name, [])] for name in self.names}
        for start, stop in block_edges(self.n_samples, block_samples):
            yield start, {name: _sum_padded([next(s, _NOTHING) for s in files], stop - start)
                          for name, files in streams.items()}

    def excerpt(self, name: str, spans: list[tuple[int, int]]) -> np.ndarray:
        """A stem's samples at these (start, stop) spans, concatenated: the same samples as its
        blocks there (zeros past a file's end)."""
        files = self.readers.get(name, [])
        return np.concatenate([_NOTHING, *(_sum_padded([r.span(a, b) for r in files], b - a) for a, b in spans)])

    def load(self, progress: Progress = no_progress) -> Song:
        """The song read whole; `progress` after each file read."""
        if self.mixture is not None:
            return Song(mixture=self.mixture.read_all(), sources=dict(self.sources))
        song = Song(sources=dict(self.sources), ignored=list(self.ignored), notes=list(self.notes))
        count, done = sum(len(files) for files in self.readers.values()), 0
        for name in STEM_NAMES:
            read = []
            for reader in self.readers.get(name, []):
                read.append(reader.read_all())
                done += 1
                progress(f"reading {reader.path.name}", done / count)
            song.stems[name] = _sum_padded(read, self.n_samples)
        return song


def open_song(path_or_files: str | Path | Iterable[str | Path]) -> SongSource:
    """Open a song from a folder of stems, a list of stem files, or a single mixture file: each
    file's role and header checked (AudioReader), no samples read."""
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
        path = files[0].parent if files else Path()
    if single_file and role_for_name(files[0].name) in (MIXTURE, "other"):
        # A lone file that is not named like a stem is a full mix, whatever it is called.
        return _mixture_song(path, files[0])

    roles = {f: role_for_name(f.name) for f in files}
    mixes = [f for f in files if roles[f] == MIXTURE]
    if len(mixes) == len(files):
        if len(mixes) > 1:
            raise StemLayoutError(f"{files[0].parent}: more than one full-mix file; give one")
        return _mixture_song(path, mixes[0])
    song = SongSource(path=path, ignored=[str(f) for f in mixes])
    if mixes:
        # The stems are what the user mixed from; the mix beside them would only be separated back.
        song.notes.append(f"{', '.join(str(f) for f in mixes)}: a full mix beside the stems; "
                          "not used (the stems are)")
        log.warning("%s", song.notes[-1])
    for f in files:
        if f not in mixes:
            song.readers.setdefault(roles[f], []).append(AudioReader(f))
    song.readers = {role: song.readers[role] for role in STEM_NAMES if role in song.readers}
    song.sources = {role: [r.source for r in readers] for role, readers in song.readers.items()}
    return song


def _mixture_song(path: Path, file: Path) -> SongSource:
    mixture = AudioReader(file)
    return SongSource(path=path, mixture=mixture, sources={MIXTURE: [mixture.source]})


def load_song(path_or_files: str | Path | Iterable[str | Path], progress: Progress = no_progress) -> Song:
    """Load a song from a folder of stems, a list of stem files, or a single mixture file (open_song
    read whole); `progress` after each file read."""
    return open_song(path_or_files).load(progress)
