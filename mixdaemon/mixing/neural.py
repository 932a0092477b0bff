"""The neural engine (MST): FX-normalize the input stems, embed each reference stem with the
FXencoder, and let the MixFXcloner convert each input stem toward its reference stem's embedding.

A job plans it (`plan`, mixing/engine.py's PLANS) so that a song of any length converts in memory
bounded by a block: each stem's FX normalization is fitted on the song's measurement of it (the
whole stem of a short song, excerpts of a long one), the cloner runs as a stream, and the landing
below is fitted on the network's output for that measurement; the job renders the chain block by
block. A fade to a second reference converts whole stems in memory (`convert` with reference B).

One engine object holds one loaded model pair on one inference backend (nets/backends.py: TensorRT,
ONNX Runtime or torch, `--backend`), so a daemon worker loads the models, and exports their ONNX
graphs or builds their TensorRT plans, once and converts many songs with them.

After the network, each stem is landed on its reference stem (docs/BENCHMARKS.md, "Style transfer
on unseen material"):
- its tone, dynamics, space and width by the match engine's measured steps (mixing/match.py's
  match_stem), which take the network's output where the network left it: on stems and effects unlike
  its training material the small default pair moves them only part of the way, or the wrong way;
- its loudness to the reference stem's (fx/matching.loudness_gain_db), so that the balance is the
  reference's: the network's output level follows the FX-normalized input more than the reference,
  and balance is what a listener hears first. With a second reference both landings fade from one
  reference to the other over the song, as the embedding does.

With `refine_steps` > 0 each reference embedding is first refined (nets/refine.py): gradient steps
that move the cloner's conversion of an excerpt of the input stem toward the reference stem's
measured spectral shape, width and level distribution (off by default: measured, it did not help).

The user's controls (mixing/settings.py's Controls): `amount` a per stem blends the landed output
with the input stem, x + a·(y − x), so 0 returns the input untouched (and the network does not run
for that stem), and moves the loudness by a times the way to the reference's. With `match` naming
only some aspects, the landed output is what the input moves toward, in those aspects only, by the
match engine's steps, and the level step runs only when `level` is named.
"""
from __future__ import annotations

import logging

import numpy as np

from mixdaemon import defaults
from mixdaemon.audio.dsp import WORKING_RATE, db_to_amp, loudness_lufs
from mixdaemon.audio.streams import Blend, ChainOf, Gain
from mixdaemon.errors import MixdaemonError, ModelFileError
from mixdaemon.fx.features import excerpt
from mixdaemon.fx.matching import loudness_gain_db
from mixdaemon.fx.normalization import fit_normalizer, normalize_stems
from mixdaemon.fx.stats import FxStats, default_stats_path
from mixdaemon.mixing.engine import PLANS, REFERENCE_B, Conversion, Measured, Plan
from mixdaemon.mixing.match import fit_stem, match_stem
from mixdaemon.mixing.measure import measured_whole
from mixdaemon.mixing.settings import Controls
from mixdaemon.nets.backends import Backend, create_backend
from mixdaemon.nets.inference import ClonerEffect, convert, embed_reference, interpolated_embedding
from mixdaemon.nets.mst import MixFXcloner
from mixdaemon.nets.refine import refine_embedding
from mixdaemon.nets.store import load_pair
from mixdaemon.progress import Progress, no_progress, span

log = logging.getLogger(__name__)

# What the landing after the network moves (the match engine's steps but the level, which comes last)
LANDING_ASPECTS = frozenset(defaults.ASPECTS) - {"level"}


class NeuralEngine:
    name = "neural"
    capabilities = frozenset({REFERENCE_B, PLANS})

    def __init__(self, backend: Backend, pair_info, stats: FxStats, *, chunk_seconds: float = defaults.CHUNK_SECONDS,
                 batch_size: int = defaults.BATCH_SIZE, seed: int = defaults.SEED, controls: Controls = Controls(),
                 cloner: MixFXcloner | None = None, refine_steps: int = 0):
        if refine_steps and cloner is None:
            raise ValueError("refine_steps needs the torch cloner")
        self.backend = backend
        self.cloner, self.refine_steps = cloner, refine_steps
        self.stats = stats
        self.chunk_seconds, self.batch_size, self.seed = chunk_seconds, batch_size, seed
        self.controls = controls
        self.info = {"name": pair_info.name, "path": str(pair_info.path),
                     "encoder_sha256": pair_info.encoder.weights_sha256,
                     "cloner_sha256": pair_info.cloner.weights_sha256, "backend": backend.describe(),
                     "refine_steps": refine_steps}

    @classmethod
    def from_settings(cls, settings) -> "NeuralEngine":
        controls = settings.controls()
        name = settings.model or defaults.DEFAULT_MODEL
        try:
            encoder, cloner, info = load_pair(name)
        except ModelFileError as exc:
            if settings.model is None:
                raise ModelFileError(f"{exc}; import the authors' models with `mixdaemon models import`, "
                                     "or use --engine match") from None
            raise
        stats = FxStats.load(settings.stats or default_stats_path("mst"))
        log.info("neural engine: model pair %s (%s)", info.name, info.path)
        backend = create_backend(settings.backend, encoder, cloner, info, chunk_seconds=settings.chunk_seconds,
                                 batch_size=settings.batch_size, precision=settings.precision)
        return cls(backend, info, stats, chunk_seconds=settings.chunk_seconds,
                   batch_size=settings.batch_size, seed=settings.seed, controls=controls,
                   cloner=cloner, refine_steps=settings.refine_steps)

    def embed(self, stems: dict[str, np.ndarray]) -> dict[str, np.ndarray | None]:
        """Embedding per reference stem; a silent reference stem (nothing above embed_reference's
        −60 dBFS) gives None: there is no style to copy, and its input stem keeps its sound."""
        out = {}
        for name, audio in stems.items():
            try:
                out[name] = embed_reference(self.backend, audio, name=f"reference {name}")
            except MixdaemonError as exc:  # embed_reference's one refusal: a silent reference
                log.info("%s; the input %s is kept as it is", exc, name)
                out[name] = None
        return out

    def plan(self, song: Measured, reference: Measured, progress: Progress = no_progress) -> Plan:
        """Each stem's conversion toward its reference stem, fitted on the song's measurement (the
        whole stems of a short song, excerpts of a long one: mixing/measure.py) and streamable over
        the whole song: the FX normalization fitted on the stem's excerpt, the cloner as a stream,
        the landing fitted on the network's output for the excerpt, and the level gain."""
        # Only stems with something to move run through the network; the others (amount 0, a
        # silent input, no usable reference stem) keep their sound.
        wanted = [name for name, x in song.excerpts.items()
                  if self.controls.amount_for(name) > 0 and np.any(x) and name in reference.excerpts]
        progress("embedding reference", 0.02)
        embedded = self.embed({name: reference.excerpts[name] for name in wanted})
        moving = [name for name in wanted if embedded[name] is not None]
        effects: dict[str, ChainOf | None] = dict.fromkeys(song.excerpts)
        rendered = {name: np.asarray(x, dtype=np.float32) for name, x in song.excerpts.items()} if song.whole else None
        for i, name in enumerate(moving):
            x, ref = np.asarray(song.excerpts[name], dtype=np.float32), reference.excerpts[name]
            start, width = 0.1 + 0.85 * i / len(moving), 0.85 / len(moving)
            progress(f"normalizing {name}", start)
            # No clamp before the network (the authors clamp): the final loudness step can leave a
            # rare peak above full scale, and clipping it would distort what the cloner hears.
            normalizer, x_normalized = fit_normalizer(name, x, self.stats, order="mst_inference", seed=self.seed,
                                                      lufs=song.loudness.get(name))
            if self.refine_steps:
                progress(f"refining {name}", start + 0.1 * width)
                e = self._refined(x_normalized, ref, embedded[name])
            else:
                e = embedded[name]
            y = convert(self.backend, x_normalized, e, chunk_seconds=self.chunk_seconds, batch_size=self.batch_size,
                        stream=None, progress=span(progress, start + 0.15 * width, 0.7 * width, f"converting {name}"))
            progress(f"landing {name}", start + 0.85 * width)
            chain = [normalizer, ClonerEffect(self.backend, e, round(self.chunk_seconds * WORKING_RATE))]
            landing = fit_stem(y, ref, 1.0, LANDING_ASPECTS)
            if landing is not None:
                chain.append(landing[0])
                y = landing[1]
            amount = self.controls.amount_for(name)
            if self.controls.aspects != frozenset(defaults.ASPECTS):
                # Only some aspects move: the landed output is the sound to move toward, and the
                # match engine's steps take from it just those (its EQ, its width...), by the amount;
                # the network then has no part in the render.
                partial = fit_stem(x, y, amount, self.controls.aspects - {"level"})
                chain, y = ([partial[0]], partial[1]) if partial is not None else ([], x)
            elif amount < 1:
                chain, y = [Blend(ChainOf(chain), amount)], x + np.float32(amount) * (y - x)
            if self.controls.moves("level"):
                x_lufs = song.loudness.get(name, loudness_lufs(x))
                reference_lufs = reference.loudness.get(name, loudness_lufs(ref))
                # the whole stem's loudness after the chain: the excerpt's change on the whole's level
                y_lufs = x_lufs + (loudness_lufs(y) - loudness_lufs(x))
                gain = Gain(loudness_gain_db(y_lufs, x_lufs + amount * loudness_gain_db(x_lufs, reference_lufs)))
                chain.append(gain)
                y = gain(y)
            effects[name] = ChainOf(chain) if chain else None
            if rendered is not None:
                rendered[name] = y
        return Plan(effects, rendered=rendered)

    def convert(self, input_stems: dict[str, np.ndarray], reference_stems: dict[str, np.ndarray],
                progress: Progress = no_progress,
                reference_b_stems: dict[str, np.ndarray] | None = None) -> Conversion:
        if reference_b_stems is None:
            return Conversion(self.plan(measured_whole(input_stems), measured_whole(reference_stems), progress).rendered)
        return self._faded(input_stems, [reference_stems, reference_b_stems], progress)

    def _faded(self, input_stems: dict[str, np.ndarray], references: list[dict[str, np.ndarray]],
               progress: Progress) -> Conversion:
        """convert() with a second reference, on whole stems in memory: the embedding, the landing
        and the level fade from the first reference to the second over the song."""
        wanted = [name for name, x in input_stems.items() if self.controls.amount_for(name) > 0 and np.any(x)]
        progress("embedding reference", 0.02)
        embedded = [self.embed({name: r[name] for name in wanted if name in r}) for r in references]
        # A stem moves when its first reference stem has a style; a silent second one is not faded to.
        moving = [name for name in wanted if embedded[0].get(name) is not None]
        progress("normalizing input", 0.1)
        normalized = normalize_stems({name: input_stems[name] for name in moving}, self.stats,
                                     order="mst_inference", seed=self.seed) if moving else {}
        converted = {name: np.asarray(x, dtype=np.float32) for name, x in input_stems.items()}
        for i, name in enumerate(moving):
            x_normalized = np.asarray(normalized[name], dtype=np.float32)  # no copy of a float32 stem
            start, width = 0.15 + 0.8 * i / len(moving), 0.8 / len(moving)
            styles = [(r[name], e[name]) for r, e in zip(references, embedded) if e.get(name) is not None]
            if self.refine_steps:
                progress(f"refining {name}", start)
                ends = [self._refined(x_normalized, reference, e) for reference, e in styles]
            else:
                ends = [e for _, e in styles]
            e = ends[0] if len(ends) == 1 else interpolated_embedding(*ends)
            y = convert(self.backend, x_normalized, e,
                        chunk_seconds=None if callable(e) else self.chunk_seconds, batch_size=self.batch_size,
                        stream=None, progress=span(progress, start, width, f"converting {name}"))
            progress(f"landing {name}", start + width)
            y = _landed(y, [reference for reference, _ in styles])
            amount, x = self.controls.amount_for(name), converted[name]
            if self.controls.aspects != frozenset(defaults.ASPECTS):
                y = match_stem(x, y, amount, self.controls.aspects - {"level"})  # as in plan()
            elif amount < 1:
                y = x + np.float32(amount) * (y - x)
            if self.controls.moves("level"):
                y = _balanced(y, loudness_lufs(x), [loudness_lufs(reference) for reference, _ in styles], amount)
            converted[name] = y
        return Conversion(converted)

    def _refined(self, x_normalized: np.ndarray, reference: np.ndarray, embedding: np.ndarray) -> np.ndarray:
        refined, distances = refine_embedding(self.cloner, excerpt(x_normalized, defaults.REFINE_SECONDS, windows=2),
                                              excerpt(reference, defaults.REFINE_REFERENCE_SECONDS), embedding,
                                              self.refine_steps)
        log.debug("refined embedding: style distance %.2f dB → %.2f dB", distances[0], min(distances))
        return refined


def _landed(y: np.ndarray, references: list[np.ndarray]) -> np.ndarray:
    """The network's output moved onto the reference stem's measured tone, dynamics, space and
    width by the match engine's steps (the level is _balanced's); with two references, the two
    landings crossfaded over the song as the embedding fades."""
    landed = [match_stem(y, reference, 1.0, LANDING_ASPECTS) for reference in references]
    if len(landed) == 1:
        return landed[0]
    fade = np.linspace(0.0, 1.0, len(y), dtype=np.float32)[:, None]
    return landed[0] + fade * (landed[1] - landed[0])


def _balanced(y: np.ndarray, x_lufs: float, reference_lufs: list[float], amount: float) -> np.ndarray:
    """y with the loudness x_lufs + amount·(reference − x_lufs), the reference's loudness fading
    from the first to the second in dB over the song when there are two (a gain ramp)."""
    y_lufs = loudness_lufs(y)
    gains_db = [loudness_gain_db(y_lufs, x_lufs + amount * loudness_gain_db(x_lufs, r)) for r in reference_lufs]
    if len(gains_db) == 1 or gains_db[0] == gains_db[1]:
        return y * np.float32(db_to_amp(gains_db[0]))
    ramp_db = np.linspace(gains_db[0], gains_db[1], len(y), dtype=np.float32)
    return y * db_to_amp(ramp_db)[:, None].astype(np.float32)


class StyleEncoder:
    """The FXencoder of a model pair on its own: embeddings of whole tracks (mixes or stems), for
    `mixdaemon embed` and the evaluation's embedding distances."""

    def __init__(self, model: str | None = None):
        self.encoder, _, info = load_pair(model or defaults.DEFAULT_MODEL)
        self.source = {"name": info.name, "encoder_sha256": info.encoder.weights_sha256}

    def embed(self, audio: np.ndarray, name: str = "audio") -> np.ndarray:
        """The mean embedding over the track's unpadded, non-silent segments (nets/inference.py)."""
        return embed_reference(self.encoder, audio, name=name)
