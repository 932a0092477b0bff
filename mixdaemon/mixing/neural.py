"""The neural engine (MST): FX-normalize the input stems, embed each reference stem with the
FXencoder, and let the MixFXcloner convert each input stem toward its reference stem's embedding.

One engine object holds one loaded model pair on one inference backend (nets/backends.py: TensorRT,
ONNX Runtime or torch, `--backend`), so a daemon worker loads the models, and exports their ONNX
graphs or builds their TensorRT plans, once and converts many songs with them.
"""
from __future__ import annotations

import logging

import numpy as np

from mixdaemon import defaults
from mixdaemon.errors import ModelFileError
from mixdaemon.fx.normalization import normalize_stems
from mixdaemon.fx.stats import FxStats, default_stats_path
from mixdaemon.mixing.engine import REFERENCE_B, Conversion
from mixdaemon.nets.backends import Backend, create_backend
from mixdaemon.nets.inference import convert, embed_reference, interpolated_embedding
from mixdaemon.nets.store import load_pair, store_dir
from mixdaemon.progress import Progress, no_progress, span

log = logging.getLogger(__name__)


class NeuralEngine:
    name = "neural"
    capabilities = frozenset({REFERENCE_B})

    def __init__(self, backend: Backend, pair_info, stats: FxStats, *, chunk_seconds: float = defaults.CHUNK_SECONDS,
                 batch_size: int = defaults.BATCH_SIZE, seed: int = defaults.SEED):
        self.backend = backend
        self.stats = stats
        self.chunk_seconds, self.batch_size, self.seed = chunk_seconds, batch_size, seed
        self.info = {"name": pair_info.name, "path": str(pair_info.path),
                     "encoder_sha256": pair_info.encoder.weights_sha256,
                     "cloner_sha256": pair_info.cloner.weights_sha256, "backend": backend.describe()}

    @classmethod
    def from_settings(cls, settings) -> "NeuralEngine":
        name = settings.model or defaults.DEFAULT_MODEL
        try:
            encoder, cloner, info = load_pair(name)
        except ModelFileError as exc:
            if settings.model is None:
                raise ModelFileError(f"{exc}; import the authors' models with `mixdaemon models import`, "
                                     "or use --engine match") from None
            raise
        stats = FxStats.load(settings.stats or default_stats_path("mst"))
        log.info("neural engine: model pair %s from %s", info.name, store_dir())
        backend = create_backend(settings.backend, encoder, cloner, info, chunk_seconds=settings.chunk_seconds,
                                 batch_size=settings.batch_size)
        return cls(backend, info, stats, chunk_seconds=settings.chunk_seconds,
                   batch_size=settings.batch_size, seed=settings.seed)

    def embed(self, stems: dict[str, np.ndarray]) -> dict[str, np.ndarray | None]:
        """Embedding per reference stem; a silent reference stem gives None (its input stem is
        passed through unconverted: there is no style to copy)."""
        out = {}
        for name, audio in stems.items():
            if np.max(np.abs(audio)) < 1e-3:  # −60 dBFS: the same silence rule as embed_reference
                out[name] = None
            else:
                out[name] = embed_reference(self.backend, audio, name=f"reference {name}")
        return out

    def convert(self, input_stems: dict[str, np.ndarray], reference_stems: dict[str, np.ndarray],
                progress: Progress = no_progress,
                reference_b_stems: dict[str, np.ndarray] | None = None) -> Conversion:
        progress("normalizing input", 0.02)
        normalized = normalize_stems(input_stems, self.stats, order="mst_inference", seed=self.seed)
        progress("embedding reference", 0.1)
        embeddings = self.embed(reference_stems)
        if reference_b_stems is not None:
            embeddings_b = self.embed(reference_b_stems)
        converted = {}
        names = list(input_stems)
        for i, name in enumerate(names):
            # No clamp before the network (the authors clamp): the final loudness step can leave a
            # rare peak above full scale, and clipping it would distort what the cloner hears.
            x = normalized[name].astype(np.float32)
            e = embeddings.get(name)
            if reference_b_stems is not None and e is not None and embeddings_b.get(name) is not None:
                e = interpolated_embedding(e, embeddings_b[name])
            if e is None or np.max(np.abs(x)) == 0:
                converted[name] = x
                continue
            start, width = 0.15 + 0.8 * i / len(names), 0.8 / len(names)
            converted[name] = convert(
                self.backend, x, e, chunk_seconds=None if callable(e) else self.chunk_seconds,
                batch_size=self.batch_size, stream=None,
                progress=span(progress, start, width, f"converting {name}"))
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
