"""From a folder (or a list) of bounced files to one song's four stems.

The models work on four stems: drums, bass, other, vocals. DAW bounces are named freely, so each
file gets a role by a documented rule on its name (see `role_for_name`); several files with the same
role ("Kick.wav", "Snare.wav") are summed into that stem. A file named like a full mix ("mixture",
"mix", "master") is a mixture and goes to separation. `reference.*` files are references, not
stems, and are skipped here.

Stems of one song may differ in rate or length: each is read at the working rate and shorter ones
are zero-padded at the end to the longest, because DAWs bounce every track from the same start.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from mixdaemon.audio.io import LoadedAudio, SourceInfo, is_audio_file, read_audio
from mixdaemon.errors import StemLayoutError

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


@dataclass
class Song:
    """One song as the pipeline sees it: either four stems or a mixture still to separate."""

    stems: dict[str, np.ndarray] = field(default_factory=dict)
    mixture: np.ndarray | None = None
    sources: dict[str, list[SourceInfo]] = field(default_factory=dict)

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
        return [s.path for infos in self.sources.values() for s in infos]

    @property
    def output_rate(self) -> int:
        """Outputs go back at the inputs' sample rate (the highest, if the bounce mixed rates)."""
        return max(s.sample_rate for infos in self.sources.values() for s in infos)

    @property
    def output_subtype(self) -> str:
        subtypes = [s.subtype for infos in self.sources.values() for s in infos]
        return max(set(subtypes), key=subtypes.count)


def list_audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and is_audio_file(p) and not is_reference_name(p))


def _pad_to(x: np.ndarray, n: int) -> np.ndarray:
    return x if x.shape[0] == n else np.pad(x, ((0, n - x.shape[0]), (0, 0)))


def load_song(path_or_files: str | Path | Iterable[str | Path]) -> Song:
    """Load a song from a folder of stems, a list of stem files, or a single mixture file."""
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

    by_role: dict[str, list[LoadedAudio]] = {}
    for f in files:
        by_role.setdefault(role_for_name(f.name), []).append(read_audio(f))
    if MIXTURE in by_role:
        stem_roles = [r for r in by_role if r != MIXTURE]
        if stem_roles:
            names = ", ".join(Path(a.source.path).name for r in stem_roles for a in by_role[r])
            raise StemLayoutError(f"{files[0].parent}: holds both a full mix "
                                  f"({Path(by_role[MIXTURE][0].source.path).name}) and stems ({names}); "
                                  "give one or the other")
        if len(by_role[MIXTURE]) > 1:
            raise StemLayoutError(f"{files[0].parent}: more than one full-mix file; give one")
        mix = by_role[MIXTURE][0]
        return Song(mixture=mix.samples, sources={MIXTURE: [mix.source]})

    length = max(a.samples.shape[0] for items in by_role.values() for a in items)
    song = Song()
    for role in STEM_NAMES:
        items = by_role.get(role, [])
        if items:
            song.stems[role] = np.sum([_pad_to(a.samples, length) for a in items], axis=0, dtype=np.float32)
            song.sources[role] = [a.source for a in items]
        else:
            song.stems[role] = np.zeros((length, 2), dtype=np.float32)
    return song
