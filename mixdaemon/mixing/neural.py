"""The neural engine (MST): FX-normalize the input stems, embed each reference stem with the
FXencoder, and let the MixFXcloner convert each input stem toward its reference stem's embedding.

One engine object holds one loaded model pair on one inference backend (nets/backends.py: TensorRT,
ONNX Runtime or torch, `--backend`), so a daemon worker loads the models, and exports their ONNX
graphs or builds their TensorRT plans, once and converts many songs with them.

The user's controls (mixing/settings.py's Controls): `amount` a per stem blends the network's output
with the input stem, x + a·(y − x), so 0 returns the input untouched (and the network does not run
for that stem). The network moves every aspect of the mix at once; with `match` naming only some,
the network's output is what the input moves toward, in those aspects only, by the match engine's
steps (mixing/match.py's match_stem): `--match level` takes just the network's balance.
"""
from __future__ import annotations

import logging

import numpy as np

from mixdaemon import defaults
from mixdaemon.errors import MixdaemonError, ModelFileError
from mixdaemon.fx.normalization import normalize_stems
from mixdaemon.fx.stats import FxStats, default_stats_path
from mixdaemon.mixing.engine import REFERENCE_B, Conversion
from mixdaemon.mixing.match import match_stem
from mixdaemon.mixing.settings import Controls
from mixdaemon.nets.backends import Backend, create_backend
from mixdaemon.nets.inference import convert, embed_reference, interpolated_embedding
from mixdaemon.nets.store import load_pair
from mixdaemon.progress import Progress, no_progress, span

log = logging.getLogger(__name__)


class NeuralEngine:
    name = "neural"
    capabilities = frozenset({REFERENCE_B})

    def __init__(self, backend: Backend, pair_info, stats: FxStats, *, chunk_seconds: float = defaults.CHUNK_SECONDS,
                 batch_size: int = defaults.BATCH_SIZE, seed: int = defaults.SEED, controls: Controls = Controls()):
        self.backend = backend
        self.stats = stats
        self.chunk_seconds, self.batch_size, self.seed = chunk_seconds, batch_size, seed
        self.controls = controls
        self.info = {"name": pair_info.name, "path": str(pair_info.path),
                     "encoder_sha256": pair_info.encoder.weights_sha256,
                     "cloner_sha256": pair_info.cloner.weights_sha256, "backend": backend.describe()}

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
                                 batch_size=settings.batch_size)
        return cls(backend, info, stats, chunk_seconds=settings.chunk_seconds,
                   batch_size=settings.batch_size, seed=settings.seed, controls=controls)

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

    def convert(self, input_stems: dict[str, np.ndarray], reference_stems: dict[str, np.ndarray],
                progress: Progress = no_progress,
                reference_b_stems: dict[str, np.ndarray] | None = None) -> Conversion:
        # Only stems with something to move run through the network; the others (amount 0, a
        # silent input, no usable reference stem) are returned as they came.
        wanted = [name for name, x in input_stems.items() if self.controls.amount_for(name) > 0 and np.any(x)]
        progress("embedding reference", 0.02)
        embeddings = self.embed({name: reference_stems[name] for name in wanted if name in reference_stems})
        if reference_b_stems is not None:
            embeddings_b = self.embed({name: reference_b_stems[name] for name in wanted if name in reference_b_stems})
            embeddings = {name: interpolated_embedding(e, embeddings_b[name])
                          if e is not None and embeddings_b.get(name) is not None else e
                          for name, e in embeddings.items()}
        moving = {name: input_stems[name] for name in wanted if embeddings.get(name) is not None}
        progress("normalizing input", 0.1)
        normalized = normalize_stems(moving, self.stats, order="mst_inference", seed=self.seed) if moving else {}
        converted = {name: np.asarray(x, dtype=np.float32) for name, x in input_stems.items()}
        for i, name in enumerate(moving):
            # No clamp before the network (the authors clamp): the final loudness step can leave a
            # rare peak above full scale, and clipping it would distort what the cloner hears.
            e = embeddings[name]
            start, width = 0.15 + 0.8 * i / len(moving), 0.8 / len(moving)
            y = convert(self.backend, normalized[name].astype(np.float32), e,
                        chunk_seconds=None if callable(e) else self.chunk_seconds, batch_size=self.batch_size,
                        stream=None, progress=span(progress, start, width, f"converting {name}"))
            amount, x = self.controls.amount_for(name), converted[name]
            if self.controls.aspects != frozenset(defaults.ASPECTS):
                # Only some aspects move: the network's output is the sound to move toward, and the
                # match engine's steps take from it just those (its level, its EQ...), by the amount.
                y = match_stem(x, y, amount, self.controls.aspects)
            elif amount < 1:
                y = x + np.float32(amount) * (y - x)
            converted[name] = y
        return Conversion(converted)


class StyleEncoder:
    """The FXencoder of a model pair on its own: embeddings of whole tracks (mixes or stems), for
    `mixdaemon embed` and the evaluation's embedding distances."""

    def __init__(self, model: str | None = None):
        self.encoder, _, info = load_pair(model or defaults.DEFAULT_MODEL)
        self.source = {"name": info.name, "encoder_sha256": info.encoder.weights_sha256}

    def embed(self, audio: np.ndarray, name: str = "audio") -> np.ndarray:
        """The mean embedding over the track's unpadded, non-silent segments (nets/inference.py)."""
        return embed_reference(self.encoder, audio, name=name)
