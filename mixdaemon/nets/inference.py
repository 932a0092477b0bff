"""Running the MST networks on whole songs (docs/ALGORITHMS.md §5, fixing the weaknesses of §5.2).

- ``embed_reference``: FXencoder embedding of a reference track, averaged over segments with no
  zero padding and no silent segments in the average.
- ``convert``: MixFXcloner over a song of any length in chunks whose result equals processing the
  whole song in one call (overlap-save with enough context, or a stream that carries the context
  from chunk to chunk), in bounded memory.

Both run the networks through a backend (nets/backends.py: torch, ONNX Runtime or TensorRT); a bare
FXencoder or MixFXcloner is run with torch.

Audio is numpy float32 (n_samples, 2) at 44.1 kHz.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from mixdaemon import defaults
from mixdaemon.audio.dsp import WORKING_RATE, db_to_amp
from mixdaemon.errors import MixdaemonError
from mixdaemon.nets.backends import Backend, as_backend
from mixdaemon.nets.mst import FXencoder, MixFXcloner
from mixdaemon.nets.shapes import (
    INTERPOLATION_CHUNK_SECONDS,
    REFERENCE_BATCH,
    REFERENCE_SEGMENT,
)
from mixdaemon.progress import Progress, no_progress

SILENCE_DBFS = -60.0
STREAM_ABOVE_OVERLAP = 0.25  # convert(stream=None): stream when overlap-save recomputes more (see there)

EmbeddingAt = Callable[[float], np.ndarray]


def _check_audio(audio: np.ndarray) -> None:
    if audio.ndim != 2 or audio.shape[1] != 2:
        raise ValueError(f"expected audio of shape (n_samples, 2), got {audio.shape}")


def _to_batch(windows: list[np.ndarray]) -> np.ndarray:
    """(n, 2) float arrays of one length → [B, 2, n] float32."""
    return np.ascontiguousarray(np.stack(windows).transpose(0, 2, 1), dtype=np.float32)


def _trim_silence(audio: np.ndarray, threshold: float) -> np.ndarray:
    loud = np.flatnonzero(np.abs(audio).max(axis=1) >= threshold)
    return audio[loud[0]:loud[-1] + 1] if loud.size else audio[:0]


def _segments(n: int, segment: int) -> list[tuple[int, float]]:
    """(start, weight) of the segments that cover [0, n): whole segments, then the final `segment`
    samples, weighted by the share of samples they add beyond the previous segments."""
    if n <= segment:
        return [(0, 1.0)]
    starts = [(s, 1.0) for s in range(0, n - segment + 1, segment)]
    rest = n - (starts[-1][0] + segment)
    return starts + [(n - segment, rest / segment)] if rest else starts


def embed_reference(encoder: FXencoder | Backend, audio: np.ndarray, segment: int = REFERENCE_SEGMENT, *,
                    batch_size: int = REFERENCE_BATCH, silence_dbfs: float = SILENCE_DBFS,
                    name: str = "reference") -> np.ndarray:
    """The reference's mixing-style embedding [D] (float32): a weighted mean of segment embeddings.

    Unlike the authors' code (§5.2.2), no segment is zero-padded, because the encoder would read the
    padding as part of the style and bias the mean towards silence. Instead:
    - leading and trailing samples below `silence_dbfs` (peak of both channels) are dropped, so
      silence before or after the music changes nothing;
    - a signal longer than `segment` is cut into whole segments; the last one is the final `segment`
      samples of the signal (it overlaps its neighbour rather than running past the end), weighted
      by the share of new samples it adds. Reflecting the tail instead would feed the encoder
      time-reversed audio, whose envelopes (decays turned into swells) are not the song's;
    - segments whose RMS over both channels is below `silence_dbfs` (breaks, gaps) are left out;
    - a signal shorter than the encoder's minimum input (8193 samples by default) is looped until
      long enough: repetition keeps the sound of the clip, where reflection would reverse it.

    Raises MixdaemonError naming `name` when nothing is left above the silence threshold.
    """
    _check_audio(audio)
    backend = as_backend(encoder)
    config = backend.encoder_config
    min_length = config.min_input_length
    if segment < min_length:
        raise ValueError(f"segment {segment} is shorter than the encoder's minimum input {min_length}")
    threshold = float(db_to_amp(silence_dbfs))
    music = _trim_silence(audio, threshold)
    if len(music) == 0:
        raise MixdaemonError(f"{name}: the reference is silent (no sample above {silence_dbfs:g} dBFS)")
    if len(music) < min_length:
        music = np.resize(music, (min_length, 2))  # np.resize repeats the rows cyclically
    length = min(segment, len(music))
    kept = [(start, weight) for start, weight in _segments(len(music), segment)
            if np.sqrt(np.mean(np.square(music[start:start + length], dtype=np.float64))) >= threshold]
    if not kept:
        raise MixdaemonError(f"{name}: the reference is silent (every segment is below {silence_dbfs:g} dBFS RMS)")
    total = np.zeros(config.embedding_dim, dtype=np.float64)
    for i in range(0, len(kept), batch_size):
        batch = kept[i:i + batch_size]
        e = backend.embed(_to_batch([music[s:s + length] for s, _ in batch])).astype(np.float64)
        total += np.asarray([w for _, w in batch]) @ e
    return (total / sum(w for _, w in kept)).astype(np.float32)


def interpolated_embedding(e_a: np.ndarray, e_b: np.ndarray) -> EmbeddingAt:
    """For `convert`: the embedding at song position p ∈ [0, 1] is (1−p)·e_a + p·e_b, a fade from
    reference A at the start to reference B at the end (the authors' interpolation mode)."""
    e_a, e_b = np.asarray(e_a, dtype=np.float64), np.asarray(e_b, dtype=np.float64)
    return lambda position: ((1.0 - position) * e_a + position * e_b).astype(np.float32)


def convert(cloner: MixFXcloner | Backend, audio: np.ndarray, embedding: np.ndarray | EmbeddingAt, *,
            chunk_seconds: float | None = None, batch_size: int = 1, progress: Progress = no_progress,
            sample_rate: int = WORKING_RATE, stream: bool | None = False) -> np.ndarray:
    """The audio in the embedding's mixing style, same shape, float32, clamped to [−1, 1] by the model
    (a later stage limits the sum of the stems; the clamp only matters for stems that already clip).

    embedding: a [D] array for one style, or a function from song position p ∈ [0, 1] to [D], e.g.
    `interpolated_embedding(e_a, e_b)`. Chunk i of N gets the embedding at p = i/(N−1): FiLM
    conditions a whole cloner call, so the style is piecewise constant per chunk and the chunk
    length is the time resolution of a fade (default INTERPOLATION_CHUNK_SECONDS = 1 s). Each chunk
    is computed with full context, so the steps are small gain/EQ changes without edge artefacts.
    The price: each 1-s chunk costs a window of 1 s + one receptive field (≈ 6× the compute of a
    plain conversion with the full-size cloner).

    How the chunks are exact (overlap-save). An output sample depends on the input within
    context = receptive_field // 2 samples on either side, and on nothing else: the cloner
    zero-pads every layer at the ends of whatever it is given. Each chunk of `chunk_seconds` of output
    is therefore computed from a window that extends `context` samples beyond it on both sides, and
    only the chunk's own samples are kept: the window edges' zero padding reaches no kept sample.
    Windows are never padded beyond the signal; at the ends of the song a window is shifted inwards
    instead (it keeps its length so chunks batch together), so that the model's own zero padding
    falls exactly at the song's ends, as in a whole-song call. The output equals
    ``cloner(whole_song, embedding)`` up to float rounding, with no crossfade, which would only be
    needed if neighbouring chunks disagreed. Memory holds the audio, the output and one batch of
    windows, whatever the song length.

    stream (one style only): a song longer than one window can instead be streamed through the
    cloner in chunks of `chunk_seconds` (nets/onnx_export.py's ClonerStream), each layer keeping the input
    its next chunk needs, so that no sample is computed twice; `batch_size` does not apply. With
    12-s chunks and the full-size cloner, overlap-save computes 1.43× as many samples for the same
    output; on 2 CPU threads with ONNX Runtime the stream converts it in 1.24 s per audio second
    against 1.85 s (docs/BENCHMARKS.md). The stream's own bookkeeping (joining each layer's kept
    input to the new one, masking the song's ends) costs next to nothing beside the full-size
    cloner's convolutions but ~10 % beside the small default cloner's, whose context is short
    (4 % overlap with 12-s chunks). stream=True always streams such a song, None streams it when
    overlap-save would recompute more than STREAM_ABOVE_OVERLAP of it, False never does.

    progress("converting", fraction of the output done) is called after each batch; an exception
    raised in it stops the conversion (a way to cancel).
    """
    _check_audio(audio)
    n = len(audio)
    per_chunk = callable(embedding)
    if chunk_seconds is None:
        chunk_seconds = INTERPOLATION_CHUNK_SECONDS if per_chunk else defaults.CHUNK_SECONDS
    backend = as_backend(cloner)
    context = backend.cloner_config.receptive_field // 2
    chunk = max(1, round(chunk_seconds * sample_rate))
    if not per_chunk and n <= chunk + 2 * context:
        chunk = max(n, 1)  # one call on the whole signal costs no more than one window
    overlap = 2 * context / chunk
    if not per_chunk and chunk < n and (stream or (stream is None and overlap > STREAM_ABOVE_OVERLAP)):
        return _convert_stream(backend, audio, np.asarray(embedding, np.float32).reshape(1, -1), chunk, progress)
    window = min(chunk + 2 * context, n)
    starts = range(0, n, chunk)
    out = np.empty((n, 2), dtype=np.float32)
    for first in range(0, len(starts), batch_size):
        batch = starts[first:first + batch_size]
        offsets = [min(max(s - context, 0), n - window) for s in batch]
        if per_chunk:
            last = max(len(starts) - 1, 1)
            cond = np.stack([embedding(i / last) for i in range(first, first + len(batch))]).astype(np.float32)
        else:
            cond = np.asarray(embedding, dtype=np.float32).reshape(1, -1)
        y = backend.convert(_to_batch([audio[o:o + window] for o in offsets]), cond)
        for k, (s, o) in enumerate(zip(batch, offsets)):
            e = min(s + chunk, n)
            out[s:e] = y[k, :, s - o:e - o].T
        progress("converting", min(batch[-1] + chunk, n) / n)
    return out


def _convert_stream(backend: Backend, audio: np.ndarray, embedding: np.ndarray, chunk: int,
                    progress: Progress) -> np.ndarray:
    """convert(stream=True): ClonerEffect's stream fed blocks of `chunk` samples."""
    n = len(audio)
    stream, out, done = ClonerEffect(backend, embedding, chunk).stream(n), np.empty((n, 2), np.float32), 0
    for position in range(0, n, chunk):
        y = stream.push(audio[position:position + chunk], last=position + chunk >= n)
        out[done:done + len(y)] = y
        done += len(y)
        if len(y):
            progress("converting", done / n)
    return out


class ClonerEffect:
    """The MixFXcloner toward one embedding as a streamable effect (audio/streams.py): a song of any
    length fed block by block comes out as the whole-song conversion, in memory bounded by the
    block. The stream (the backend's ClonerStream) delays its output by receptive_field // 2
    samples, so the first pushes return less than they take, and the last push feeds that many
    zeros, the padding after the song, to flush the rest. Blocks longer than `chunk` samples go
    through the network `chunk` at a time (its activations scale with the call's length)."""

    def __init__(self, backend: Backend, embedding: np.ndarray, chunk: int = round(defaults.CHUNK_SECONDS * WORKING_RATE)):
        self.backend, self.chunk = backend, max(1, int(chunk))
        self.embedding = np.asarray(embedding, np.float32).reshape(1, -1)

    def stream(self, n_samples: int) -> "_ClonerStream":
        return _ClonerStream(self, n_samples)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.stream(len(x)).push(x, last=True)


class _ClonerStream:
    def __init__(self, effect: ClonerEffect, n_samples: int):
        self.effect, self.n = effect, n_samples
        self.delay = effect.backend.cloner_config.receptive_field // 2
        self.states = effect.backend.stream_states()
        self.position = 0  # input samples fed to the network so far (the song's, then the flush's zeros)

    def _feed(self, block: np.ndarray) -> np.ndarray:
        """block [2, m] through the network: the outputs it makes at song times inside the song."""
        y, self.states = self.effect.backend.stream(block[None], self.effect.embedding, self.position, self.n,
                                                    self.states)
        first = self.position - self.delay  # song time of y's first sample
        self.position += block.shape[-1]
        keep_from, keep_to = max(0, -first), max(0, min(block.shape[-1], self.n - first))
        return y[0, :, keep_from:keep_to].T

    def push(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        _check_audio(block)
        channels = np.ascontiguousarray(np.asarray(block, np.float32).T)
        if last:  # the padding after the song flushes the outputs still inside the network
            channels = np.concatenate([channels, np.zeros((2, self.delay), np.float32)], axis=1)
        chunk = self.effect.chunk
        parts = [self._feed(channels[:, i:i + chunk]) for i in range(0, channels.shape[1], chunk)]
        return np.concatenate(parts, axis=0) if parts else np.zeros((0, 2), np.float32)
