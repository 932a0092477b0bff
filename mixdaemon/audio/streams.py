"""Effects fed block by block: how a job of any length runs in memory bounded by its block size.

A streamable effect (an EQ, a level map, a reverb send, the job's limiter...) is fitted once, on a
measurement of the song, and then rendered as a *stream*: `effect.stream(n)` starts one over a
signal of n samples, and `push(block, last)` feeds it the next consecutive block and returns the
output samples that are ready, in order — possibly none yet, while a look-ahead fills. After the
push with last=True everything has come out: the returns, concatenated, are the effect applied to
the whole signal (n samples, the same to float32 rounding whatever the blocks were). Each effect
keeps its own state between pushes (filter memories, a smoothed gain, a reverb tail) and its own
look-ahead, so that streams compose by simply feeding one's output to the next (`Chain`).

The whole-signal call of such an effect is its stream fed in one block (`whole`): one
implementation, however the audio comes.
"""
from __future__ import annotations

from typing import Callable, Iterable, Protocol

import numpy as np


class Stream(Protocol):
    def push(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        """Feed the next block (m ≥ 0 samples along axis 0); the output samples now ready."""


class Streamable(Protocol):
    def stream(self, n_samples: int) -> Stream:
        """A fresh stream over a signal of n_samples samples."""


class Chain:
    """Streams one after the other: each one's output is the next one's input."""

    def __init__(self, streams: Iterable[Stream]):
        self.streams = list(streams)

    def push(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        for stream in self.streams:
            block = stream.push(block, last)
        return block


class Samplewise:
    """The stream of an effect that needs no memory (a gain, a stereo matrix): each block as
    `apply` makes it."""

    def __init__(self, apply: Callable[[np.ndarray], np.ndarray]):
        self.apply = apply

    def push(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        return self.apply(block)


class Gain:
    """A fixed gain (dB): the level step's and the output gain's effect."""

    def __init__(self, gain_db: float):
        self.gain_db = float(gain_db)
        self.factor = np.float32(10.0 ** (self.gain_db / 20.0))

    def stream(self, n_samples: int) -> Samplewise:
        return Samplewise(self)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float32) * self.factor


class ChainOf:
    """Several streamable effects in order, itself streamable (and callable on a whole signal)."""

    def __init__(self, effects: Iterable[Streamable]):
        self.effects = list(effects)

    def stream(self, n_samples: int) -> Chain:
        return Chain(effect.stream(n_samples) for effect in self.effects)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return whole(self, x)


def whole(effect: Streamable, x: np.ndarray) -> np.ndarray:
    """The effect on a whole signal: its stream fed in one block."""
    x = np.asarray(x)
    return effect.stream(x.shape[0]).push(x, last=True)


def block_edges(n_samples: int, block: int) -> list[tuple[int, int]]:
    """(start, stop) of consecutive blocks of `block` samples covering n_samples (at least one)."""
    return [(start, min(n_samples, start + block)) for start in range(0, max(n_samples, 1), block)] or [(0, 0)]


def in_blocks(effect: Streamable, x: np.ndarray, sizes: Iterable[int]) -> np.ndarray:
    """The effect's stream over x fed in blocks of the given sizes in turn (cycled; the last block
    takes what is left): what a job's render does, for checking that a stream equals `whole`."""
    x = np.asarray(x)
    sizes = [int(s) for s in sizes]
    stream, out, start, i = effect.stream(x.shape[0]), [], 0, 0
    while True:
        stop = min(x.shape[0], start + sizes[i % len(sizes)])
        out.append(stream.push(x[start:stop], last=stop >= x.shape[0]))
        if stop >= x.shape[0]:
            return np.concatenate(out, axis=0)
        start, i = stop, i + 1


class History:
    """A stream's input kept by absolute sample position, for effects that look ahead or behind:
    blocks are appended as they come (kept, not copied: a pushed block is never changed after),
    `window(a, b)` reads any span still held (zeros before the signal's start), and
    `forget(position)` drops what no later output needs."""

    def __init__(self):
        self.start = 0          # absolute position of data[0]
        self.data: np.ndarray | None = None

    @property
    def end(self) -> int:
        """Absolute position just after the last sample appended."""
        return self.start + (0 if self.data is None else self.data.shape[0])

    def append(self, block: np.ndarray) -> None:
        block = np.asarray(block)
        self.data = block if self.data is None else np.concatenate([self.data, block], axis=0)

    def window(self, a: int, b: int) -> np.ndarray:
        """Samples a..b (absolute); positions before 0 read as zeros, positions not held raise."""
        if self.data is None:
            raise ValueError("nothing appended yet")
        if a < 0:
            pad = np.zeros((min(-a, b - a),) + self.data.shape[1:], dtype=self.data.dtype)
            return np.concatenate([pad, self.window(0, b)], axis=0) if b > 0 else pad
        if a < self.start or b > self.end:
            raise ValueError(f"samples {a}..{b} are not held ({self.start}..{self.end})")
        return self.data[a - self.start:b - self.start]

    def forget(self, position: int) -> None:
        """Drop the samples before `position` (absolute)."""
        if self.data is not None and position > self.start:
            cut = min(position, self.end) - self.start
            self.data = self.data[cut:]
            self.start += cut


class Blend:
    """x + amount·(effect(x) − x): an effect part of the way, the dry signal held until the effect's
    output for the same samples comes out of its look-ahead."""

    def __init__(self, effect: Streamable, amount: float):
        self.effect, self.amount = effect, np.float32(amount)

    def stream(self, n_samples: int) -> "_BlendStream":
        return _BlendStream(self.effect.stream(n_samples), self.amount)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return whole(self, x)


class _BlendStream:
    def __init__(self, wet: Stream, amount: np.float32):
        self.wet, self.amount = wet, amount
        self.dry, self.done = History(), 0

    def push(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        block = np.asarray(block, dtype=np.float32)
        self.dry.append(block)
        wet = self.wet.push(block, last)
        dry = self.dry.window(self.done, self.done + wet.shape[0])
        self.done += wet.shape[0]
        self.dry.forget(self.done)
        return dry + self.amount * (wet - dry)
