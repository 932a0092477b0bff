"""Audio files in and out — the only module that touches audio files on disk.

Reading accepts whatever a DAW bounces (WAV, FLAC, AIFF; any sample rate, any bit depth, mono or
stereo) and hands the pipeline float32 stereo at the 44.1 kHz working rate; anything unusable
(unreadable, truncated, empty, NaN/Inf, more than two channels) raises AudioFileError with a one-line
reason. A file is read whole (`read_audio`) or, for a job of any length, through an AudioReader:
block by block and by excerpts, in memory bounded by the block, with the same samples either way.
Writing goes through files.atomic_write (a hidden partial file renamed into place), so a DAW or a
watcher never sees a half-written file, and it refuses to replace any file the caller marked as an
input; an AudioWriter takes the samples block by block, `write_audio` a whole signal.
"""
from __future__ import annotations

import math
import os
import struct
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import soundfile as sf
import soxr

from mixdaemon.audio.dsp import WORKING_RATE
from mixdaemon.errors import AudioFileError
from mixdaemon.files import atomic_write

AUDIO_SUFFIXES = (".wav", ".wave", ".flac", ".aif", ".aiff", ".aifc")
DEFAULT_SUBTYPE = "PCM_24"
# Which subtypes a written file may use, per container (soundfile names).
_WAV_SUBTYPES = {"PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"}
_FLAC_SUBTYPES = {"PCM_16", "PCM_24"}
# A track whose two channels differ by less than this (half the step of 24-bit audio) is mono.
MONO_TOLERANCE = 2.0 ** -24


@dataclass(frozen=True)
class SourceInfo:
    """What the file on disk was, so outputs can be written back in kind."""

    path: str
    sample_rate: int
    channels: int
    frames: int
    subtype: str
    container: str


@dataclass
class LoadedAudio:
    """Samples at the working rate, float32 (n, 2), plus what the file originally was."""

    samples: np.ndarray
    source: SourceInfo

    @property
    def seconds(self) -> float:
        return self.samples.shape[0] / WORKING_RATE


def is_audio_file(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_SUFFIXES and not path.name.startswith(".")


def _resampler(from_rate: int, to_rate: int, channels: int) -> soxr.ResampleStream:
    """soxr's VHQ (linear phase) resampler as a stream: fed consecutive chunks, its output
    concatenated is the one-shot resampling of the whole signal, bit for bit."""
    return soxr.ResampleStream(from_rate, to_rate, channels, dtype="float32", quality="VHQ")


def resampled_length(n: int, from_rate: int, to_rate: int) -> int:
    """How many samples resampling n samples gives: n·to/from rounded half up, as soxr does."""
    return (2 * n * to_rate + from_rate) // (2 * from_rate)


def resample(x: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """High-quality (soxr VHQ, linear phase) resampling along axis 0; identity when rates match."""
    if from_rate == to_rate:
        return x
    frames = np.ascontiguousarray(x, dtype=np.float32).reshape(x.shape[0], -1)
    y = _resampler(from_rate, to_rate, frames.shape[1]).resample_chunk(frames, last=True)
    return np.asarray(y, dtype=np.float32).reshape((-1,) + x.shape[1:])


@dataclass(frozen=True)
class WavLayout:
    """What a RIFF/WAVE file's headers declare, beside how long the file is. None fields: that
    header is not in the file (yet)."""

    file_size: int
    riff_size: int | None    # the RIFF chunk's declared size (the file's length minus 8, when final)
    data_offset: int | None  # where the first data chunk's samples start
    data_size: int | None    # the size that data chunk declares


def wav_layout(path: str | os.PathLike) -> WavLayout | None:
    """Walk a RIFF/WAVE file's chunk headers (RIFX too) up to its first data chunk, reading nothing
    else; None for a file that is not RIFF/WAVE and cannot become one (RF64, W64, FLAC, text...).
    A file shorter than the 12-byte RIFF header whose bytes begin one is a WAV being written:
    a layout with nothing declared."""
    size = os.stat(path).st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12:
            starts_riff = b"RIFF".startswith(head[:4]) or b"RIFX".startswith(head[:4])
            return WavLayout(size, None, None, None) if starts_riff else None
        if head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return None
        endian = "<" if head[:4] == b"RIFF" else ">"
        riff_size = struct.unpack(endian + "I", head[4:8])[0]
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, chunk_size = struct.unpack(endian + "4sI", f.read(8))
            if chunk_id == b"data":
                return WavLayout(size, riff_size, pos + 8, chunk_size)
            pos += 8 + chunk_size + (chunk_size & 1)
        return WavLayout(size, riff_size, None, None)


def _check_wav_not_truncated(path: Path) -> None:
    """libsndfile silently reads a WAV whose data chunk is cut short; users must hear about it.
    A data size of 0xFFFFFFFF is a streaming writer's "unknown", not a claim."""
    layout = wav_layout(path)
    if layout is None or layout.data_size is None:
        return  # not plain RIFF/WAVE (RF64, W64...), or no data chunk: libsndfile judges it
    present = layout.file_size - layout.data_offset
    if layout.data_size > present and layout.data_size != 0xFFFFFFFF:
        raise AudioFileError(path, f"truncated file: the header declares {layout.data_size} bytes "
                                   f"of audio but only {present} are present")


def _native_path(path: Path) -> str | bytes:
    """path as libsndfile must be given it: a file name that is not valid UTF-8 (Python holds its
    bytes as lone surrogates) only as its file-system bytes, which soundfile passes on unchanged;
    Windows names are always Unicode."""
    return str(path) if os.name == "nt" else os.fsencode(path)


def _open_for_reading(path: Path) -> sf.SoundFile:
    try:
        return sf.SoundFile(_native_path(path))
    except Exception as exc:  # libsndfile's messages vary by version; keep its words after ours
        detail = str(exc).splitlines()[-1] if str(exc) else type(exc).__name__
        # soundfile prefixes "Error opening <path>: ", the path as it was passed (bytes here); ours
        # names the file already
        detail = detail.strip().removeprefix(f"Error opening {_native_path(path)!r}: ")
        raise AudioFileError(path, f"not a readable WAV/FLAC/AIFF audio file ({detail.strip()})") from None


# Input frames decoded at a time: what bounds a reader's memory, whatever its blocks.
_DECODE_FRAMES = 1 << 16
# Working-rate samples read before (and after) an excerpt so that the resampler, started there,
# has settled by the excerpt's first sample (and still runs on past its last): its VHQ filter
# needs about 128 from 48 or 96 kHz, about 1024 from 8 kHz, hence the margin times the upsampling ratio.
_SPAN_MARGIN = 1024


class AudioReader:
    """An audio file opened for reading at the working rate without holding its samples: what
    `read_audio` checks is checked on opening (file, header, channels, a WAV's declared length) or,
    for what only the samples show (NaN/Inf, a file shorter than its header says, corrupt data),
    as they are read. `blocks` reads it from the start in blocks, `span` any excerpt; both give
    float32 stereo (mono duplicated) at the working rate, resampled as `resample` does, so that any
    way of reading gives the same samples. Each call opens the file afresh: a reader holds no file
    open between calls."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        if not path.exists():
            raise AudioFileError(path, "file not found")
        if path.is_dir():
            raise AudioFileError(path, "is a folder, not an audio file")
        if path.stat().st_size == 0:
            raise AudioFileError(path, "empty file (0 bytes)")
        with _open_for_reading(path) as f:
            if f.channels > 2:
                raise AudioFileError(path, f"{f.channels} channels: only mono or stereo stems are supported "
                                           "(bounce each stem as mono or stereo)")
            if f.format == "WAV":
                _check_wav_not_truncated(path)
            if f.frames <= 0:
                raise AudioFileError(path, "contains no audio (zero length)")
            self.path = path
            self.source = SourceInfo(str(path), int(f.samplerate), int(f.channels), int(f.frames), f.subtype, f.format)
        self.n_samples = resampled_length(self.source.frames, self.source.sample_rate, WORKING_RATE)

    def blocks(self, block_samples: int) -> Iterator[np.ndarray]:
        """The file from its start in consecutive (block_samples, 2) blocks, the last one shorter:
        n_samples in all."""
        with _open_for_reading(self.path) as f:
            yield from self._resampled(f, 0, self.source.frames, self.n_samples, block_samples)

    def read_all(self) -> np.ndarray:
        """The whole file, (n_samples, 2): the reader read in one block."""
        return next(self.blocks(max(self.n_samples, 1)), np.zeros((0, 2), dtype=np.float32))

    def span(self, start: int, stop: int) -> np.ndarray:
        """Samples start..stop (0 ≤ start ≤ stop) of what `blocks` reads, (stop − start, 2); zeros
        past the end. The file is read from a frame shortly before `start` where the resampler's
        phase is the same as in the whole read, so the excerpt matches the whole read's samples (to
        float32 rounding where the rates have no small common period)."""
        out = np.zeros((stop - start, 2), dtype=np.float32)
        a, b = start, min(stop, self.n_samples)
        if a >= b:
            return out
        rate, frames = self.source.sample_rate, self.source.frames
        common = math.gcd(rate, WORKING_RATE)
        period_in, period_out = rate // common, WORKING_RATE // common  # the resampler repeats itself
        margin = _SPAN_MARGIN * max(1, -(-WORKING_RATE // rate))
        periods = max(0, a - margin) // period_out
        first_frame, first = periods * period_in, periods * period_out
        last_frame = min(frames, -(-(b + margin) * rate // WORKING_RATE))
        n = resampled_length(last_frame - first_frame, rate, WORKING_RATE)
        with _open_for_reading(self.path) as f:
            read = next(self._resampled(f, first_frame, last_frame, n, n))
        out[:b - a] = read[a - first:b - first]
        return out

    def _resampled(self, f: sf.SoundFile, first_frame: int, last_frame: int, n: int,
                   block_samples: int) -> Iterator[np.ndarray]:
        """Frames first_frame..last_frame of the open file at the working rate, n samples (the
        resampler's count: zeros should it give fewer) in stereo blocks of block_samples."""
        channels, rate = self.source.channels, self.source.sample_rate
        resampler = _resampler(rate, WORKING_RATE, channels) if rate != WORKING_RATE else None
        f.seek(first_frame)
        position, ready = first_frame, np.zeros((0, channels), dtype=np.float32)  # ready: resampled, not yet given
        for start in range(0, n, block_samples):
            block = np.zeros((min(block_samples, n - start), channels), dtype=np.float32)
            filled = 0
            while True:
                take = min(block.shape[0] - filled, ready.shape[0])
                block[filled:filled + take] = ready[:take]
                ready, filled = ready[take:], filled + take
                if filled == block.shape[0] or position >= last_frame:
                    break
                data = self._decode(f, position, min(_DECODE_FRAMES, last_frame - position))
                position += data.shape[0]
                ready = data if resampler is None else resampler.resample_chunk(data, last=position >= last_frame)
            yield np.repeat(block, 2, axis=1) if channels == 1 else block

    def _decode(self, f: sf.SoundFile, position: int, count: int) -> np.ndarray:
        """The next `count` frames (from `position`) as float32, refused when they are not all there
        or not all finite."""
        try:
            data = f.read(count, dtype="float32", always_2d=True)
        except Exception as exc:
            raise AudioFileError(self.path, f"corrupt or truncated audio data ({str(exc).strip() or type(exc).__name__})") from None
        if data.shape[0] < count:
            raise AudioFileError(self.path, f"truncated file: {position + data.shape[0]} of {self.source.frames} "
                                            "frames could be read")
        if not np.isfinite(data).all():
            bad = int(np.count_nonzero(~np.isfinite(data)))
            raise AudioFileError(self.path, f"contains {bad} NaN or infinite sample values")
        return data


def read_audio(path: str | os.PathLike) -> LoadedAudio:
    """Read an audio file as float32 stereo at 44.1 kHz (mono is duplicated to both channels)."""
    reader = AudioReader(path)
    return LoadedAudio(reader.read_all(), reader.source)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def output_subtype(path: Path, subtype: str | None) -> str:
    """The subtype to write: the requested one if the container supports it, else 24-bit PCM."""
    wanted = subtype or DEFAULT_SUBTYPE
    allowed = _FLAC_SUBTYPES if path.suffix.lower() == ".flac" else _WAV_SUBTYPES
    return wanted if wanted in allowed else DEFAULT_SUBTYPE


def _container(path: Path) -> str:
    suffix = path.suffix.lower()
    return "FLAC" if suffix == ".flac" else ("AIFF" if suffix in (".aif", ".aiff") else "WAV")


class AudioWriter:
    """A context manager writing working-rate blocks to `path` atomically, resampled to
    `out_rate`: `write(block)` takes the next (m, channels) float32 block (1-D for mono).

    The file appears complete or not at all: it is written to a hidden partial file in the same
    folder (files.atomic_write), renamed over the destination when the block ends without an error
    and removed when it ends with one. `protected` lists the job's input files: a destination that
    is one of them is refused, so an input can never be overwritten.

    With mono_if_same (a track whose input files were all mono), a stereo track is written in
    stereo while its largest |L − R| is tracked; if that stayed within MONO_TOLERANCE, the file is
    rewritten as mono (the channels' mean) on closing, the stereo partial read back block by block.
    `channels` then says which was written, and `widened` is True where a mono input stayed stereo.
    """

    def __init__(self, path: str | os.PathLike, *, out_rate: int = WORKING_RATE, subtype: str | None = None,
                 protected: Iterable[str | os.PathLike] = (), channels: int = 2, mono_if_same: bool = False):
        self.path = Path(path)
        for p in protected:
            if self.path.resolve() == Path(p).resolve() or _same_file(self.path, Path(p)):
                raise AudioFileError(self.path, "refusing to overwrite an input file; choose another output folder")
        self.out_rate, self.channels = int(out_rate), int(channels)
        self.subtype, self.format = output_subtype(self.path, subtype), _container(self.path)
        self.mono_if_same = mono_if_same and self.channels == 2
        self.max_side = 0.0  # the largest |L − R| written so far

    @property
    def widened(self) -> bool:
        return self.mono_if_same and self.channels == 2

    def __enter__(self) -> AudioWriter:
        with ExitStack() as files:
            self._partial = files.enter_context(atomic_write(self.path))
            self._file = files.enter_context(sf.SoundFile(self._partial, "w", self.out_rate, self.channels,
                                                          self.subtype, format=self.format))
            self._files = files.pop_all()
        self._resampler = _resampler(WORKING_RATE, self.out_rate, self.channels) \
            if self.out_rate != WORKING_RATE else None
        return self

    def write(self, block: np.ndarray) -> None:
        block = np.asarray(block, dtype=np.float32)
        block = np.ascontiguousarray(block[:, None] if block.ndim == 1 else block)
        if not np.isfinite(block).all():
            raise AudioFileError(self.path, "refusing to write NaN or infinite samples (internal error)")
        if self.mono_if_same and block.size:
            self.max_side = max(self.max_side, float(np.max(np.abs(block[:, 0] - block[:, 1]))))
        self._file.write(block if self._resampler is None else self._resampler.resample_chunk(block))

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            return self._files.__exit__(exc_type, exc, tb)  # the partial file is removed
        with self._files:
            if self._resampler is not None:
                self._file.write(self._resampler.resample_chunk(np.zeros((0, self.channels), np.float32), last=True))
            self._file.close()
            if self.mono_if_same and self.max_side <= MONO_TOLERANCE:
                self._rewrite_as_mono()
        return False

    def _rewrite_as_mono(self) -> None:
        """Replace the stereo partial file by its channels' mean, under the same name (which the
        atomic write then renames into place). PCM is read as integers, so equal channels come back
        exactly."""
        self._partial.flush()
        stereo = self._partial.name
        dtype = "int32" if self.subtype.startswith("PCM") else "float64"
        with sf.SoundFile(stereo) as src, atomic_write(stereo) as out, \
                sf.SoundFile(out, "w", self.out_rate, 1, self.subtype, format=self.format) as dst:
            for block in src.blocks(_DECODE_FRAMES, dtype=dtype, always_2d=True):
                if dtype == "int32":
                    dst.write(((block[:, 0].astype(np.int64) + block[:, 1]) // 2).astype(np.int32))
                else:
                    dst.write(block.mean(axis=1))
        self.channels = 1


def write_audio(path: str | os.PathLike, samples: np.ndarray, *, out_rate: int = WORKING_RATE,
                subtype: str | None = None, protected: Iterable[str | os.PathLike] = (), channels: int = 2) -> Path:
    """Write working-rate samples to `path` atomically, resampled to `out_rate` (an AudioWriter fed
    one block); with channels=1, the mean of the channels (for a track whose channels are the same:
    stems.Song.output_formats)."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 1:
        samples = samples[:, None]
    if channels == 1:
        samples = samples.mean(axis=1, keepdims=True)
    with AudioWriter(path, out_rate=out_rate, subtype=subtype, protected=protected,
                     channels=samples.shape[1]) as writer:
        writer.write(samples)
    return writer.path
