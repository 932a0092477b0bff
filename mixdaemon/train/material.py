"""Procedural training material: songs in the MUSDB18 layout (song/{drums,bass,other,vocals}.wav)
written by the project's own code, because no licensed multitrack dataset ships with it.

Two renderers:

- "fluidsynth" (default when Debian's `fluidsynth` and `fluid-soundfont-gm` are installed): each
  song is composed here as MIDI — tempo, key, mode, chord progression, a drum pattern with fills
  and crashes, a bass line, one to three accompaniment parts (piano, organ, guitar, strings, pads,
  brass, mallets) as block chords, arpeggios or strums, and a phrased lead line — and each stem is
  rendered separately by FluidSynth with the FluidR3 General MIDI soundfont, whose sampled
  instruments have the broad, noisy, evolving spectra of recordings. A share of the vocal stems is
  the formant-synth voice of `mixdaemon.audio.examples` instead of the soundfont's choir/voice presets,
  which are the least voice-like part of the soundfont. The soundfont's own reverb and chorus are on
  in a share of the songs (seeded), so the material spans dry and wet sources.
- "numpy": `mixdaemon.audio.examples.synth_song` at a random tempo: no external program, used by the
  tests and wherever FluidSynth is missing.

Everything is seeded: song i of a run with seed s is composed from SeedSequence([s, i]) alone, so
the same command writes the same notes (FluidSynth's rendering of them is deterministic too), and
a run can be extended by asking for more songs. `material.json` records the renderer, the
soundfont and the seeds.

Training is a developer step: the README's main job never needs FluidSynth, the shipped model is
committed.
"""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mixdaemon.audio.dsp import WORKING_RATE
from mixdaemon.audio.examples import synth_song
from mixdaemon.audio.io import read_audio, write_audio
from mixdaemon.errors import ConfigError, MixdaemonError
from mixdaemon.files import atomic_write
from mixdaemon.progress import Progress, no_progress

STEMS = ("drums", "bass", "other", "vocals")
SOUNDFONTS = (Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"), Path("/usr/share/sounds/sf2/default-GM.sf2"))
RENDERERS = ("auto", "fluidsynth", "numpy")
MANIFEST = "material.json"

TICKS_PER_BEAT = 480
DRUM_CHANNEL = 9
# FluidR3 drum kits (bank 128): standard, room, power, electronic, TR-808, jazz, brush
DRUM_KITS = (0, 8, 16, 24, 25, 32, 40)
BASS_PROGRAMS = (32, 33, 34, 35, 36, 37, 38, 39)
ACCOMPANIMENT_PROGRAMS = {
    "piano": (0, 1, 2, 4, 5), "organ": (16, 17, 18), "guitar": (24, 25, 26, 27, 28, 29, 30),
    "strings": (48, 49, 50), "pad": (88, 89, 90, 91, 94), "brass": (61, 62), "mallets": (11, 12),
    "synth": (80, 81),
}
VOCAL_PROGRAMS = (52, 53, 54, 85)  # choir aahs, voice oohs, synth voice, lead "voice"
FORMANT_VOICE_SHARE = 0.4  # vocal stems taken from the examples' formant synth instead
SOUNDFONT_EFFECTS_SHARE = 0.3  # songs rendered with FluidSynth's reverb and chorus on

MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)
PROGRESSIONS = {  # scale degrees (0-based), one chord per bar
    "major": ((0, 4, 5, 3), (5, 3, 0, 4), (0, 3, 4, 3), (1, 4, 0, 0), (0, 5, 3, 4), (0, 3, 0, 4)),
    "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 5, 3, 4), (0, 2, 6, 3)),
}
# 16th-note grids of one bar: (kick steps, snare steps, hat steps, open-hat steps)
DRUM_PATTERNS = {
    "rock": ((0, 8, 10), (4, 12), tuple(range(0, 16, 2)), ()),
    "four_on_floor": ((0, 4, 8, 12), (4, 12), tuple(range(16)), (2, 6, 10, 14)),
    "half_time": ((0, 6), (8,), tuple(range(0, 16, 2)), (14,)),
    "breakbeat": ((0, 10, 11), (4, 12, 7), tuple(range(16)), (14,)),
    "shuffle": ((0, 9), (4, 12), (0, 3, 4, 7, 8, 11, 12, 15), ()),
}
KICK, SNARE, CLOSED_HAT, OPEN_HAT, CRASH, RIDE = 36, 38, 42, 46, 49, 51
TOMS = (50, 48, 47, 45, 43, 41)


@dataclass
class _Part:
    """One MIDI channel of a stem: program, pan, volume and its (tick, duration, note, velocity) notes."""

    channel: int
    program: int
    pan: int
    volume: int
    notes: list[tuple[int, int, int, int]] = field(default_factory=list)
    expression: list[tuple[int, int]] = field(default_factory=list)  # (tick, CC11 value)


# --- MIDI -------------------------------------------------------------------------------------------

def _vlq(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes(reversed(out))


def midi_file(parts: list[_Part], tempo_bpm: float) -> bytes:
    """A type-0 Standard MIDI File holding the parts (one track, events merged in time order)."""
    events: list[tuple[int, int, bytes]] = [(0, 0, b"\xff\x51\x03" + round(60e6 / tempo_bpm).to_bytes(3, "big"))]
    for p in parts:
        c = p.channel
        events += [(0, 1, bytes([0xB0 | c, 7, p.volume])), (0, 1, bytes([0xB0 | c, 10, p.pan])),
                   (0, 1, bytes([0xB0 | c, 11, 127])), (0, 2, bytes([0xC0 | c, p.program]))]
        events += [(tick, 3, bytes([0xB0 | c, 11, value])) for tick, value in p.expression]
        for tick, duration, note, velocity in p.notes:
            # note-offs sort before note-ons at the same tick, so a repeated note is re-struck
            events.append((tick + max(duration, 1), 4, bytes([0x80 | c, note, 0])))
            events.append((tick, 5, bytes([0x90 | c, note, velocity])))
    events.sort(key=lambda e: (e[0], e[1]))
    track, now = bytearray(), 0
    for tick, _, data in events:
        track += _vlq(tick - now) + data
        now = tick
    track += _vlq(0) + b"\xff\x2f\x00"
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, TICKS_PER_BEAT) + b"MTrk" + struct.pack(">I", len(track)) + track


# --- composition ------------------------------------------------------------------------------------

def _choice(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _velocity(rng: np.random.Generator, base: float, spread: float = 12.0) -> int:
    return int(np.clip(round(rng.normal(base, spread)), 20, 127))


def _humanize(rng: np.random.Generator, tick: int, amount: int = 10) -> int:
    return max(0, tick + int(rng.integers(-amount, amount + 1)))


@dataclass
class SongPlan:
    """The musical frame every stem of a song shares."""

    tempo_bpm: float
    bars: int
    tonic: int              # MIDI note of the key's tonic in the bass octave (40–51)
    scale: tuple[int, ...]
    progression: tuple[int, ...]
    swing: bool

    @property
    def bar_ticks(self) -> int:
        return 4 * TICKS_PER_BEAT

    def chord(self, bar: int, size: int = 3) -> list[int]:
        """Stacked thirds on the bar's scale degree, as semitones above the tonic."""
        degree = self.progression[bar % len(self.progression)]
        return [12 * ((degree + 2 * k) // 7) + self.scale[(degree + 2 * k) % 7] for k in range(size)]

    def step_tick(self, bar: int, step: int) -> int:
        """Tick of 16th-note step `step` of `bar`; swing delays the off-beat 16ths."""
        delay = TICKS_PER_BEAT // 12 if self.swing and step % 2 else 0
        return bar * self.bar_ticks + step * TICKS_PER_BEAT // 4 + delay


def plan_song(rng: np.random.Generator, seconds: float) -> SongPlan:
    mode = "major" if rng.random() < 0.55 else "minor"
    tempo = float(rng.uniform(72.0, 164.0))
    bars = int(np.ceil(seconds * tempo / 240.0)) + 1
    return SongPlan(tempo_bpm=tempo, bars=bars, tonic=int(rng.integers(40, 52)),
                    scale=MAJOR if mode == "major" else MINOR, progression=_choice(rng, PROGRESSIONS[mode]),
                    swing=bool(rng.random() < 0.2))


def compose_drums(plan: SongPlan, rng: np.random.Generator) -> list[_Part]:
    kick, snare, hats, open_hats = DRUM_PATTERNS[_choice(rng, tuple(DRUM_PATTERNS))]
    use_ride = rng.random() < 0.25
    fill_every = int(_choice(rng, (4, 8)))
    part = _Part(DRUM_CHANNEL, int(_choice(rng, DRUM_KITS)), 64, int(rng.integers(90, 120)))
    loudness = rng.uniform(70, 105)
    sixteenth = TICKS_PER_BEAT // 4
    for bar in range(plan.bars):
        fill = bar % fill_every == fill_every - 1 and rng.random() < 0.8
        if bar % fill_every == 0 and rng.random() < 0.7:
            part.notes.append((plan.step_tick(bar, 0), TICKS_PER_BEAT, CRASH, _velocity(rng, loudness + 10)))
        extra_kick = (int(rng.integers(16)),) if rng.random() < 0.3 else ()
        for step in range(16):
            tick = _humanize(rng, plan.step_tick(bar, step))
            if fill and step >= 8:
                if step % 2 == 0 or rng.random() < 0.5:
                    tom = TOMS[min(len(TOMS) - 1, (step - 8) * len(TOMS) // 8)]
                    part.notes.append((tick, sixteenth, tom, _velocity(rng, loudness + 5)))
                continue
            if step in kick or step in extra_kick:
                part.notes.append((tick, sixteenth, KICK, _velocity(rng, loudness + 10)))
            if step in snare:
                ghost = step % 4 != 0
                part.notes.append((tick, sixteenth, SNARE, _velocity(rng, loudness - 30 if ghost else loudness + 8)))
            if step in hats:
                accent = 10 if step % 4 == 0 else -8
                part.notes.append((tick, sixteenth, RIDE if use_ride else CLOSED_HAT,
                                   _velocity(rng, loudness + accent - 10)))
            if step in open_hats:
                part.notes.append((tick, 2 * sixteenth, OPEN_HAT, _velocity(rng, loudness - 12)))
    return [part]


def compose_bass(plan: SongPlan, rng: np.random.Generator) -> list[_Part]:
    part = _Part(0, int(_choice(rng, BASS_PROGRAMS)), int(rng.integers(54, 75)), int(rng.integers(90, 120)))
    style = _choice(rng, ("whole", "eighths", "root_fifth", "syncopated", "walking"))
    loudness = rng.uniform(70, 110)
    octave_down = 12 if plan.tonic > 45 else 0
    for bar in range(plan.bars):
        chord = [plan.tonic - octave_down + n for n in plan.chord(bar)]
        root, fifth = chord[0], chord[0] + 7
        if style == "whole":
            steps = [(0, 16, root)]
        elif style == "eighths":
            steps = [(s, 2, root) for s in range(0, 16, 2)]
        elif style == "root_fifth":
            steps = [(0, 4, root), (4, 4, fifth), (8, 4, root + 12), (12, 4, fifth)]
        elif style == "syncopated":
            steps = [(0, 3, root), (3, 3, root), (6, 2, fifth), (10, 2, root), (12, 3, root + 12)]
        else:
            walk = [root, chord[1], fifth, fifth + 2 if rng.random() < 0.5 else chord[1] + 12]
            steps = [(4 * k, 4, n) for k, n in enumerate(walk)]
        for step, length, note in steps:
            tick = _humanize(rng, plan.step_tick(bar, step))
            part.notes.append((tick, int(length * TICKS_PER_BEAT / 4 * rng.uniform(0.6, 0.95)),
                               int(np.clip(note, 28, 60)), _velocity(rng, loudness)))
    return [part]


def compose_accompaniment(plan: SongPlan, rng: np.random.Generator) -> list[_Part]:
    parts = []
    groups = rng.permutation(list(ACCOMPANIMENT_PROGRAMS))[: int(rng.integers(1, 4))]
    for channel, group in enumerate(groups):
        style = _choice(rng, ("block", "arpeggio", "strum", "sustain") if group != "pad" else ("sustain",))
        part = _Part(channel, int(_choice(rng, ACCOMPANIMENT_PROGRAMS[str(group)])), int(rng.integers(20, 109)),
                     int(rng.integers(70, 115)))
        loudness = rng.uniform(55, 100)
        base = plan.tonic + 12 * int(rng.integers(1, 3))
        per_beat = int(_choice(rng, (2, 4)))
        for bar in range(plan.bars):
            chord = [base + n for n in plan.chord(bar, size=4 if rng.random() < 0.3 else 3)]
            if style == "sustain":
                for note in chord:
                    part.notes.append((plan.step_tick(bar, 0), plan.bar_ticks - 20, note, _velocity(rng, loudness)))
                part.expression += [(plan.step_tick(bar, s), int(np.clip(60 + 60 * np.sin(np.pi * s / 16)
                                                                         + rng.normal(0, 5), 30, 127)))
                                    for s in range(0, 16, 2)]
            elif style == "block":
                hits = _choice(rng, ((0, 8), (0, 4, 8, 12), (0, 6, 10), (0,)))
                for step in hits:
                    tick = _humanize(rng, plan.step_tick(bar, step))
                    length = int(TICKS_PER_BEAT * rng.uniform(0.5, 2.0))
                    velocity = _velocity(rng, loudness)
                    part.notes += [(tick, length, n, velocity) for n in chord]
            elif style == "arpeggio":
                notes = chord + [chord[0] + 12]
                step_size = 4 // per_beat  # in 16ths
                for k, step in enumerate(range(0, 16, step_size)):
                    tick = _humanize(rng, plan.step_tick(bar, step), 5)
                    part.notes.append((tick, step_size * TICKS_PER_BEAT // 4 * 2, notes[k % len(notes)],
                                       _velocity(rng, loudness, 8)))
            else:  # strum: notes staggered by a few ms, down- and up-strokes
                for step in (0, 4, 6, 8, 12, 14):
                    down = step % 4 == 0
                    order = chord if down else chord[::-1]
                    velocity = _velocity(rng, loudness + (6 if down else -10))
                    for k, note in enumerate(order):
                        part.notes.append((plan.step_tick(bar, step) + 12 * k, TICKS_PER_BEAT, note, velocity))
        parts.append(part)
    return parts


def compose_lead(plan: SongPlan, rng: np.random.Generator) -> list[_Part]:
    part = _Part(0, int(_choice(rng, VOCAL_PROGRAMS)), int(rng.integers(52, 77)), int(rng.integers(95, 125)))
    loudness = rng.uniform(70, 110)
    low = plan.tonic + 12 + int(rng.integers(5, 12))
    pitches = [low + 12 * o + s for o in range(3) for s in plan.scale if low + 12 * o + s <= low + 19]
    index = len(pitches) // 2
    tick = 0
    end = plan.bars * plan.bar_ticks
    while tick < end:
        phrase_end = tick + plan.bar_ticks * int(rng.integers(1, 3))
        part.expression.append((tick, int(rng.integers(70, 128))))
        while tick < min(phrase_end, end):
            length = int(_choice(rng, (1, 2, 2, 3, 4, 6, 8))) * TICKS_PER_BEAT // 4
            index = int(np.clip(index + rng.integers(-2, 3), 0, len(pitches) - 1))
            part.notes.append((_humanize(rng, tick), int(length * rng.uniform(0.8, 1.0)), pitches[index],
                               _velocity(rng, loudness)))
            tick += length
        tick += TICKS_PER_BEAT * int(rng.integers(1, 5))  # breathe
    return [part]


# --- rendering --------------------------------------------------------------------------------------

def find_soundfont() -> Path | None:
    return next((p for p in SOUNDFONTS if p.is_file()), None)


def fluidsynth_available() -> bool:
    return shutil.which("fluidsynth") is not None and find_soundfont() is not None


def _fit_length(x: np.ndarray, n: int) -> np.ndarray:
    return x[:n] if len(x) >= n else np.pad(x, ((0, n - len(x)), (0, 0)))


def _render_midi(parts: list[_Part], tempo: float, soundfont: Path, effects: bool, workdir: Path) -> np.ndarray:
    midi, wav = workdir / "stem.mid", workdir / "stem.wav"
    midi.write_bytes(midi_file(parts, tempo))
    switch = "1" if effects else "0"
    cmd = ["fluidsynth", "-ni", "-q", "-g", "0.4", "-r", str(WORKING_RATE), "-O", "float", "-T", "wav",
           "-o", f"synth.reverb.active={switch}", "-o", f"synth.chorus.active={switch}",
           "-F", str(wav), str(soundfont), str(midi)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not wav.is_file():
        raise MixdaemonError(f"fluidsynth failed on {midi} ({(done.stderr or done.stdout).strip()[:200]})")
    return read_audio(wav).samples


def _peak_normalized(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    peak = float(np.max(np.abs(x)))
    return (x * (10 ** (rng.uniform(-12.0, -1.0) / 20.0) / peak)).astype(np.float32) if peak > 0 else x


def render_song(seed: tuple[int, int], seconds: float, renderer: str = "fluidsynth") -> dict[str, np.ndarray]:
    """The four stems of procedural song `seed` = (run seed, song index), float32 (n, 2) at 44.1 kHz."""
    rng = np.random.default_rng(np.random.SeedSequence(list(seed)))
    n = int(round(seconds * WORKING_RATE))
    if renderer == "numpy":
        tempo = float(rng.uniform(80.0, 150.0))
        stems = synth_song(seconds, seed=int(rng.integers(2 ** 31)), tempo_bpm=tempo)
        return {name: _peak_normalized(_fit_length(x, n), rng) for name, x in stems.items()}
    soundfont = find_soundfont()
    if soundfont is None or shutil.which("fluidsynth") is None:
        raise ConfigError("renderer 'fluidsynth': needs the fluidsynth program and a GM soundfont "
                          "(apt-get install fluidsynth fluid-soundfont-gm), or use renderer 'numpy'")
    plan = plan_song(rng, seconds)
    effects = bool(rng.random() < SOUNDFONT_EFFECTS_SHARE)
    formant_voice = bool(rng.random() < FORMANT_VOICE_SHARE)
    composers = {"drums": compose_drums, "bass": compose_bass, "other": compose_accompaniment, "vocals": compose_lead}
    stems = {}
    with tempfile.TemporaryDirectory(prefix="mixdaemon-material-") as tmp:
        for name, compose in composers.items():
            parts = compose(plan, rng)  # composed even when replaced, so the other stems' draws stay put
            if name == "vocals" and formant_voice:
                audio = synth_song(seconds, seed=int(rng.integers(2 ** 31)), tempo_bpm=plan.tempo_bpm)["vocals"]
            else:
                audio = _render_midi(parts, plan.tempo_bpm, soundfont, effects, Path(tmp))
            stems[name] = _peak_normalized(_fit_length(audio, n), rng)
    return stems


def make_material(out_dir: str | Path, songs: int, seconds: float = 30.0, seed: int = 0,
                  renderer: str = "auto", first: int = 0,
                  progress: Progress = no_progress) -> list[Path]:
    """Write songs first … first+songs−1 as out_dir/song_NNNN/{drums,bass,other,vocals}.wav (24-bit)
    and out_dir/material.json; songs already present are kept (so an interrupted run resumes).
    Returns the song folders."""
    if renderer not in RENDERERS:
        raise ConfigError(f"renderer {renderer!r}: expected one of {', '.join(RENDERERS)}")
    if renderer == "auto":
        renderer = "fluidsynth" if fluidsynth_available() else "numpy"
    if songs < 1 or seconds <= 0:
        raise ConfigError(f"material: need songs ≥ 1 and seconds > 0 (got {songs}, {seconds})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST
    manifest = {"generator": "mixdaemon.train.material", "renderer": renderer, "seed": seed, "seconds": seconds,
                "soundfont": str(find_soundfont()) if renderer == "fluidsynth" else None, "songs": {}}
    if manifest_path.is_file():
        previous = json.loads(manifest_path.read_text())
        if any(previous.get(k) != manifest[k] for k in ("renderer", "seed", "seconds")):
            raise ConfigError(f"{manifest_path}: this folder holds material made with renderer "
                              f"{previous.get('renderer')!r}, seed {previous.get('seed')}, {previous.get('seconds')} s; "
                              "use another folder or the same settings")
        manifest["songs"] = previous.get("songs", {})
    folders = []
    for k, index in enumerate(range(first, first + songs)):
        folder = out_dir / f"song_{index:04d}"
        if not all((folder / f"{name}.wav").is_file() for name in STEMS):
            for name, audio in render_song((seed, index), seconds, renderer).items():
                write_audio(folder / f"{name}.wav", audio, subtype="PCM_24")
            manifest["songs"][folder.name] = {"seed": [seed, index]}
            with atomic_write(manifest_path, "w") as f:  # an interrupted run resumes from it
                json.dump(manifest, f, indent=1)
        folders.append(folder)
        progress("rendering songs", (k + 1) / songs)
    return folders


def material_settings(songs_dir: str | Path, keys: tuple[str, ...]) -> dict | None:
    """Those settings of make_material that made the songs in songs_dir, from its material.json
    (None for songs it did not make)."""
    manifest = Path(songs_dir) / MANIFEST
    if not manifest.is_file():
        return None
    material = json.loads(manifest.read_text())
    return {k: material.get(k) for k in keys}
