"""Audio files in and out — the only module that touches audio files on disk.

Reading accepts whatever a DAW bounces (WAV, FLAC, AIFF; any sample rate, any bit depth, mono or
stereo) and hands the pipeline float32 stereo at the 44.1 kHz working rate; anything unusable
(unreadable, truncated, empty, NaN/Inf, more than two channels) raises AudioFileError with a one-line
reason. Writing goes through files.atomic_write (a hidden partial file renamed into place), so a DAW
or a watcher never sees a half-written file, and it refuses to replace any file the caller marked
as an input.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

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


def resample(x: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """High-quality (soxr VHQ, linear phase) resampling along axis 0; identity when rates match."""
    if from_rate == to_rate:
        return x
    y = soxr.resample(np.ascontiguousarray(x, dtype=np.float32), from_rate, to_rate, quality="VHQ")
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


def read_audio(path: str | os.PathLike) -> LoadedAudio:
    """Read an audio file as float32 stereo at 44.1 kHz (mono is duplicated to both channels)."""
    path = Path(path)
    if not path.exists():
        raise AudioFileError(path, "file not found")
    if path.is_dir():
        raise AudioFileError(path, "is a folder, not an audio file")
    if path.stat().st_size == 0:
        raise AudioFileError(path, "empty file (0 bytes)")
    try:
        info = sf.info(_native_path(path))
    except Exception as exc:  # libsndfile's messages vary by version; keep its words after ours
        detail = str(exc).splitlines()[-1] if str(exc) else type(exc).__name__
        # soundfile prefixes "Error opening <path>: ", the path as it was passed (bytes here); ours
        # names the file already
        detail = detail.strip().removeprefix(f"Error opening {_native_path(path)!r}: ")
        raise AudioFileError(path, f"not a readable WAV/FLAC/AIFF audio file ({detail.strip()})") from None
    if info.channels > 2:
        raise AudioFileError(path, f"{info.channels} channels: only mono or stereo stems are supported "
                                   "(bounce each stem as mono or stereo)")
    if info.format == "WAV":
        _check_wav_not_truncated(path)
    try:
        data, rate = sf.read(_native_path(path), dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioFileError(path, f"corrupt or truncated audio data ({str(exc).strip() or type(exc).__name__})") from None
    if data.shape[0] == 0:
        raise AudioFileError(path, "contains no audio (zero length)")
    if info.frames > 0 and data.shape[0] < info.frames:
        raise AudioFileError(path, f"truncated file: {data.shape[0]} of {info.frames} frames could be read")
    if not np.isfinite(data).all():
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise AudioFileError(path, f"contains {bad} NaN or infinite sample values")
    if data.shape[1] == 1:
        data = np.repeat(data, 2, axis=1)
    source = SourceInfo(str(path), int(rate), int(info.channels), int(data.shape[0]), info.subtype, info.format)
    return LoadedAudio(np.ascontiguousarray(resample(data, rate, WORKING_RATE)), source)


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


def write_audio(path: str | os.PathLike, samples: np.ndarray, *, out_rate: int = WORKING_RATE,
                subtype: str | None = None, protected: Iterable[str | os.PathLike] = (), channels: int = 2) -> Path:
    """Write working-rate samples to `path` atomically, resampled to `out_rate`; with channels=1,
    the mean of the channels (for a track whose channels are the same: stems.Song.output_formats).

    The file appears complete or not at all: it is written to a hidden temporary file in the same
    folder, flushed to disk and renamed over the destination. `protected` lists the job's input
    files: a destination that is one of them is refused, so an input can never be overwritten.
    """
    path = Path(path)
    for p in protected:
        if path.resolve() == Path(p).resolve() or _same_file(path, Path(p)):
            raise AudioFileError(path, "refusing to overwrite an input file; choose another output folder")
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 1:
        samples = samples[:, None]
    if channels == 1:
        samples = samples.mean(axis=1, keepdims=True)
    if not np.isfinite(samples).all():
        raise AudioFileError(path, "refusing to write NaN or infinite samples (internal error)")
    data = resample(samples, WORKING_RATE, out_rate)
    fmt = "FLAC" if path.suffix.lower() == ".flac" else ("AIFF" if path.suffix.lower() in (".aif", ".aiff") else "WAV")
    with atomic_write(path) as f:
        sf.write(f, data, out_rate, subtype=output_subtype(path, subtype), format=fmt)
    return path
