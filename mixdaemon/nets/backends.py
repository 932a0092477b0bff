"""Inference backends: one protocol, three runtimes that run it, and the choice between them.

The protocol (``Backend``) is what nets/inference.py needs from the two networks, on numpy float32:

- ``embed(segments [B, 2, T]) → [B, D]``: FXencoder embeddings of reference segments;
- ``convert(chunks [B, 2, T], embedding [B or 1, D]) → [B, 2, T]``: the MixFXcloner on whole windows;
- ``stream(block [1, 2, L], embedding [1, D], position, length, states) → (block out, states)``:
  one block of a song streamed through the cloner (nets/onnx_export.py's ClonerStream), so that long songs
  are converted without recomputing the context that overlap-save chunks share.

inference.embed_reference and inference.convert take a Backend, or a bare FXencoder / MixFXcloner
(wrapped in a TorchBackend), and keep all the song-level logic (segments, windows, streaming).

Backends:

- ``torch``: the nn.Modules, on CUDA when torch sees a GPU, else on the CPU.
- ``onnxruntime``: the exported graphs (nets/onnx_export.py, cached in the model store), with every
  graph optimization, sequential execution and ``threads`` intra-op threads (default: ONNX
  Runtime's, one per physical core); the CUDA execution provider when the installed onnxruntime
  has one. On 2 CPU threads the full-size cloner runs 1.8× faster than eager torch (1.10 against
  2.02 s per audio second, docs/BENCHMARKS.md).
- ``tensorrt``: TensorRT plans built per GPU (nets/tensorrt.py), FP16 by default.

``auto`` picks TensorRT when it is importable and torch sees a CUDA GPU, else ONNX Runtime, else
torch, and logs which and why; naming a backend that cannot run here raises EngineUnavailable
with the reason.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mixdaemon import defaults
from mixdaemon.errors import ConfigError, EngineUnavailable
from mixdaemon.nets.mst import ClonerConfig, EncoderConfig, FXencoder, MixFXcloner
from mixdaemon.nets.onnx_export import (
    GRAPHS,
    PRECISIONS,
    ClonerStream,
    ensure_onnx,
    list_artifacts,
    output_names,
    stream_state_shapes,
)
from mixdaemon.nets.precision import PRECISIONS as CLONER_PRECISIONS
from mixdaemon.nets.precision import bf16_cloner, resolve_precision
from mixdaemon.nets.store import weights_sha256
from mixdaemon.progress import Progress, no_progress

log = logging.getLogger(__name__)

BACKENDS = tuple(b for b in defaults.BACKENDS if b != "auto")  # the runtimes; "auto" picks one
DEFAULT_TENSORRT_PRECISION = "fp16"


class Backend(ABC):
    """Runs the encoder and cloner of one model pair; see the module docstring for the protocol.
    A backend built for the cloner only (or the encoder only) refuses the other model's calls."""

    name: str

    def __init__(self, encoder_config: EncoderConfig | None, cloner_config: ClonerConfig | None, device: str):
        self.encoder_config, self.cloner_config, self.device = encoder_config, cloner_config, device

    def describe(self) -> str:
        return f"{self.name} on {self.device}"

    @abstractmethod
    def embed(self, segments: np.ndarray) -> np.ndarray:
        """[B, 2, T] float32 → [B, D] float32 embeddings."""

    @abstractmethod
    def convert(self, chunks: np.ndarray, embedding: np.ndarray) -> np.ndarray:
        """[B, 2, T] float32 and [B or 1, D] → [B, 2, T] float32, each chunk zero-padded at its ends."""

    @abstractmethod
    def stream(self, block: np.ndarray, embedding: np.ndarray, position: int, length: int,
               states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One ClonerStream step: ([1, 2, L] output block, next states)."""

    def stream_states(self) -> list[np.ndarray]:
        """The states a stream starts from: zeros, the padding before the song."""
        return [np.zeros(shape, np.float32) for shape in stream_state_shapes(self._cloner_config())]

    def _encoder_config(self) -> EncoderConfig:
        if self.encoder_config is None:
            raise ValueError(f"this {self.name} backend holds no FXencoder")
        return self.encoder_config

    def _cloner_config(self) -> ClonerConfig:
        if self.cloner_config is None:
            raise ValueError(f"this {self.name} backend holds no MixFXcloner")
        return self.cloner_config


def as_backend(model: Backend | FXencoder | MixFXcloner) -> Backend:
    """A Backend as it is, or a bare model wrapped in a TorchBackend on the model's device."""
    if isinstance(model, Backend):
        return model
    if isinstance(model, FXencoder):
        return TorchBackend(encoder=model)
    if isinstance(model, MixFXcloner):
        return TorchBackend(cloner=model)
    raise TypeError(f"expected a Backend, an FXencoder or a MixFXcloner, got {type(model).__name__}")


def _batch_embedding(embedding: np.ndarray, batch: int) -> np.ndarray:
    """[1 or B, D] → [B, D]: the exported graphs take one embedding per chunk."""
    return np.ascontiguousarray(np.broadcast_to(np.asarray(embedding, np.float32), (batch, embedding.shape[-1])))


# --- torch ----------------------------------------------------------------------------------------

class TorchBackend(Backend):
    name = "torch"

    def __init__(self, encoder: FXencoder | None = None, cloner: MixFXcloner | None = None,
                 device: str | torch.device | None = None, precision: str = "fp32"):
        """precision: what the cloner computes in, "fp32" or "bf16" (nets/precision.py); the encoder is fp32."""
        models = [m for m in (encoder, cloner) if m is not None]
        if not models:
            raise ValueError("TorchBackend needs an encoder, a cloner or both")
        self.torch_device = torch.device(device) if device is not None else next(models[0].parameters()).device
        self.encoder = encoder.to(self.torch_device).eval() if encoder is not None else None
        self.cloner = cloner.to(self.torch_device).eval() if cloner is not None else None
        if precision not in CLONER_PRECISIONS:
            raise ConfigError(f"TorchBackend precision {precision!r}: expected one of {', '.join(CLONER_PRECISIONS)}")
        self._whole = self.cloner
        self._stream = ClonerStream(self.cloner).eval() if cloner is not None else None
        if cloner is not None and precision == "bf16":
            self._whole, self._stream = bf16_cloner(self.cloner)
        device_text = str(self.torch_device) + ("" if precision == "fp32" else f", {precision} convolutions")
        super().__init__(encoder.config if encoder is not None else None,
                         cloner.config if cloner is not None else None, device_text)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(self.torch_device)

    def embed(self, segments):
        self._encoder_config()
        with torch.inference_mode():
            return self.encoder(self._tensor(segments)).cpu().numpy()

    def convert(self, chunks, embedding):
        self._cloner_config()
        with torch.inference_mode():
            return self._whole(self._tensor(chunks), self._tensor(embedding)).cpu().numpy()

    def stream(self, block, embedding, position, length, states):
        self._cloner_config()
        with torch.inference_mode():
            out, *next_states = self._stream(self._tensor(block), self._tensor(embedding), torch.tensor(position),
                                             torch.tensor(length), *(self._tensor(s) for s in states))
            return out.cpu().numpy(), [s.cpu().numpy() for s in next_states]


# --- exported graphs ------------------------------------------------------------------------------

class _GraphBackend(Backend):
    """A backend that runs nets/onnx_export.py's graphs by name: ONNX Runtime sessions or TensorRT plans."""

    @abstractmethod
    def _run(self, graph: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The graph's outputs in order, for inputs by name."""

    def _check_graph(self, graph: str, held: dict) -> None:
        if graph not in held:
            raise ValueError(f"this {self.name} backend holds no {graph} graph")

    def embed(self, segments):
        return self._run("fxencoder", {"audio": np.ascontiguousarray(segments, np.float32)})[0]

    def convert(self, chunks, embedding):
        chunks = np.ascontiguousarray(chunks, np.float32)
        return self._run("mixfxcloner", {"audio": chunks, "embedding": _batch_embedding(embedding, len(chunks))})[0]

    def stream(self, block, embedding, position, length, states):
        feed = {"audio": np.ascontiguousarray(block, np.float32), "embedding": _batch_embedding(embedding, 1),
                "position": np.array(position, np.int64), "length": np.array(length, np.int64)}
        feed.update({f"state{n}": s for n, s in enumerate(states)})
        out, *next_states = self._run("mixfxcloner-stream", feed)
        return out, next_states


# --- ONNX Runtime ---------------------------------------------------------------------------------

class OnnxRuntimeBackend(_GraphBackend):
    name = "onnxruntime"

    def __init__(self, graphs: dict[str, Path], encoder_config: EncoderConfig | None,
                 cloner_config: ClonerConfig | None, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # one graph is a chain of convolutions: nothing runs side by side, all threads go to each op
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        if threads:
            options.intra_op_num_threads = threads
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.sessions = {graph: ort.InferenceSession(str(path), options, providers=providers)
                         for graph, path in graphs.items()}
        device = "CUDA" if providers[0] == "CUDAExecutionProvider" else f"CPU, {threads or 'default'} threads"
        super().__init__(encoder_config, cloner_config, f"{device} (onnxruntime {ort.__version__})")

    @classmethod
    def from_models(cls, encoder: FXencoder | None, cloner: MixFXcloner | None, encoder_sha256: str | None = None,
                    cloner_sha256: str | None = None, *, store=None,
                    threads: int | None = None) -> "OnnxRuntimeBackend":
        """Sessions of the cached graphs of these models, exported first if the cache lacks them.
        The weights hashes key the cache (store.weights_sha256 of each state_dict)."""
        graphs = {}
        if encoder is not None:
            graphs["fxencoder"] = ensure_onnx("fxencoder", encoder, encoder_sha256 or _sha(encoder), "fp32", store)
        if cloner is not None:
            sha = cloner_sha256 or _sha(cloner)
            for graph in ("mixfxcloner", "mixfxcloner-stream"):
                graphs[graph] = ensure_onnx(graph, cloner, sha, "fp32", store)
        return cls(graphs, encoder.config if encoder is not None else None,
                   cloner.config if cloner is not None else None, threads)

    def _run(self, graph, feed):
        self._check_graph(graph, self.sessions)
        return self.sessions[graph].run(None, feed)


def _sha(model: torch.nn.Module) -> str:
    return weights_sha256(model.state_dict())


# --- TensorRT -------------------------------------------------------------------------------------

class TensorRTBackend(_GraphBackend):
    name = "tensorrt"

    def __init__(self, plans: dict, encoder_config: EncoderConfig | None, cloner_config: ClonerConfig | None,
                 precision: str):
        from mixdaemon.nets.tensorrt import current_gpu

        self.plans, self.precision = plans, precision
        gpu = current_gpu()
        super().__init__(encoder_config, cloner_config, f"{gpu.name} (compute {gpu.compute_capability}), {precision}")

    @classmethod
    def from_models(cls, encoder: FXencoder | None, cloner: MixFXcloner | None, encoder_sha256: str | None = None,
                    cloner_sha256: str | None = None, *, store=None, precision: str = DEFAULT_TENSORRT_PRECISION,
                    chunk_seconds: float = defaults.CHUNK_SECONDS, batch_size: int = defaults.BATCH_SIZE,
                    progress: Progress | None = None) -> "TensorRTBackend":
        """Plans for this GPU, built first (minutes each, once per GPU) when the cache lacks them."""
        from mixdaemon.nets.tensorrt import TrtPlan, ensure_plan, pipeline_profile

        plans = {}
        for graph, model, sha in pair_graphs(encoder, cloner, encoder_sha256, cloner_sha256):
            if model is None:
                continue
            profile = pipeline_profile(graph, model.config, chunk_seconds=chunk_seconds, batch_size=batch_size)
            plans[graph] = TrtPlan(ensure_plan(graph, model, sha or _sha(model), profile, precision, store, progress))
        return cls(plans, encoder.config if encoder is not None else None,
                   cloner.config if cloner is not None else None, precision)

    def _run(self, graph, feed):
        self._check_graph(graph, self.plans)
        outputs = self.plans[graph].run(feed)
        config = self.encoder_config if graph == "fxencoder" else self.cloner_config
        return [outputs[name] for name in output_names(graph, config)]


# --- choosing -------------------------------------------------------------------------------------

def unavailable_reason(backend: str) -> str | None:
    """Why `backend` cannot run on this machine, or None when it can."""
    if backend == "tensorrt":
        from mixdaemon.nets.tensorrt import tensorrt_unavailable_reason

        return tensorrt_unavailable_reason()
    if backend == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except Exception as exc:
            return f"the onnxruntime package is not importable ({type(exc).__name__}: {exc})"
        return None
    if backend == "torch":
        return None
    raise ConfigError(f"backend {backend!r}: expected one of {', '.join(defaults.BACKENDS)}")


def choose_backend(requested: str = "auto") -> str:
    """The backend to use for `requested` ("auto" or a name), logged with the reason for the choice."""
    if requested != "auto":
        reason = unavailable_reason(requested)
        if reason is not None:
            raise EngineUnavailable(f"backend '{requested}' is not available: {reason}")
        log.info("backend %s (requested)", requested)
        return requested
    skipped = []
    for name in ("tensorrt", "onnxruntime"):
        reason = unavailable_reason(name)
        if reason is None:
            why = "; ".join(skipped) or "the fastest runtime on this machine"
            log.info("backend auto → %s (%s)", name, f"{why}" if skipped else why)
            return name
        skipped.append(f"{name}: {reason}")
    log.info("backend auto → torch (%s)", "; ".join(skipped))
    return "torch"


def create_backend(requested: str, encoder: FXencoder | None, cloner: MixFXcloner | None, pair_info=None, *,
                   store=None, threads: int | None = None, precision: str = defaults.PRECISION,
                   tensorrt_precision: str = DEFAULT_TENSORRT_PRECISION,
                   chunk_seconds: float = defaults.CHUNK_SECONDS, batch_size: int = defaults.BATCH_SIZE,
                   progress: Progress | None = None) -> Backend:
    """The chosen backend (choose_backend) for these models. pair_info (store.PairInfo) gives the
    recorded weights hashes, which key the artifact cache; without it they are computed. Missing
    ONNX graphs are exported and missing TensorRT plans built here (progress: `progress`, else the
    log), so a daemon pays for it at start. precision: what the cloner computes in
    (defaults.INFERENCE_PRECISIONS, nets/precision.py); bf16 runs on torch, so an "auto" backend
    then picks torch."""
    name = choose_backend(requested)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if precision == "auto" and requested not in ("auto", "torch"):
        computed = "fp32"  # a backend named outright computes in fp32 unless bf16 is asked for as well
    else:
        computed = resolve_precision(precision, device, cloner.config.channel_width) if cloner is not None else "fp32"
    if computed != "fp32" and name != "torch":
        if requested != "auto":
            raise ConfigError(f"precision {computed!r} runs on the torch backend, not {requested!r}")
        log.info("backend auto → torch (precision %s runs on torch)", computed)
        name = "torch"
    encoder_sha = pair_info.encoder.weights_sha256 if pair_info is not None else None
    cloner_sha = pair_info.cloner.weights_sha256 if pair_info is not None else None
    if name == "tensorrt":
        backend = TensorRTBackend.from_models(encoder, cloner, encoder_sha, cloner_sha, store=store,
                                              precision=tensorrt_precision, chunk_seconds=chunk_seconds,
                                              batch_size=batch_size,
                                              progress=progress or PhaseLog("TensorRT build", log.info))
    elif name == "onnxruntime":
        backend = OnnxRuntimeBackend.from_models(encoder, cloner, encoder_sha, cloner_sha, store=store, threads=threads)
    else:
        if threads:
            torch.set_num_threads(threads)
        backend = TorchBackend(encoder, cloner, device, computed)
    log.info("neural backend: %s", backend.describe())
    return backend


# --- building ahead of time: `mixdaemon backends build | list` --------------------------------------

def pair_graphs(encoder, cloner, encoder_sha256: str | None, cloner_sha256: str | None) -> tuple:
    """(graph name, network, weights hash) of every graph a pair runs as (onnx_export.GRAPHS)."""
    return ((GRAPHS[0], encoder, encoder_sha256), (GRAPHS[1], cloner, cloner_sha256), (GRAPHS[2], cloner, cloner_sha256))


class PhaseLog:
    """Build progress as a line per phase and per tenth of it, led by `what`, given to `emit`
    (log.info, print)."""

    def __init__(self, what: str, emit: Callable[[str], None]):
        self.what, self.emit, self.shown = what, emit, {}

    def __call__(self, phase: str, fraction: float) -> None:
        tenth = int(fraction * 10)
        if self.shown.get(phase) != tenth:
            self.shown[phase] = tenth
            self.emit(f"{self.what}: {phase} {100 * fraction:.0f}%")


def build_artifacts(model: str | None = None, *, store=None, backend: str = "auto", precisions=PRECISIONS,
                    chunk_seconds: float = defaults.CHUNK_SECONDS, batch_size: int = defaults.BATCH_SIZE,
                    progress: Progress = no_progress) -> tuple[list[tuple[str, Path]], str | None]:
    """Export a model pair's ONNX graphs and, where TensorRT runs, build its TensorRT plans for the
    pipeline's shapes (progress: `progress(phase, fraction)` of each TensorRT build). Returns
    ([(what, path)], None), or with the reason TensorRT plans were skipped in place of None;
    backend "tensorrt" raises EngineUnavailable instead of skipping."""
    from mixdaemon.nets.store import load_pair

    encoder, cloner, info = load_pair(model or defaults.DEFAULT_MODEL, store=store)
    graphs = pair_graphs(encoder, cloner, info.encoder.weights_sha256, info.cloner.weights_sha256)
    built = [(f"ONNX {graph}", ensure_onnx(graph, net, sha, "fp32", store)) for graph, net, sha in graphs]
    reason = unavailable_reason("tensorrt")
    if reason is not None:
        if backend == "tensorrt":
            raise EngineUnavailable(f"backend 'tensorrt' is not available: {reason}")
        return built, reason
    from mixdaemon.nets.tensorrt import ensure_plan, pipeline_profile

    for precision in precisions:
        for graph, net, sha in graphs:
            profile = pipeline_profile(graph, net.config, chunk_seconds=chunk_seconds, batch_size=batch_size)
            what = f"{graph} {precision}"
            path = ensure_plan(graph, net, sha, profile, precision, store,
                               lambda phase, fraction, w=what: progress(f"{w}: {phase}", fraction))
            built.append((f"TensorRT {what}", path))
    return built, None


def built_artifacts(store=None) -> list[dict]:
    """The built ONNX graphs and TensorRT plans in the store: {graph, precision, target, pairs,
    bytes, created, path} each, `pairs` naming the store's model pairs whose weights they hold."""
    from mixdaemon.nets.store import list_pairs

    owners: dict[str, list[str]] = {}
    for pair in list_pairs(store):
        for net in (pair.encoder, pair.cloner):
            owners.setdefault(net.weights_sha256, []).append(pair.name)
    rows = []
    for record in list_artifacts(store):
        key = record["key"]
        graph_key = key["graph"] if key["artifact"] == "tensorrt" else key
        rows.append({"graph": graph_key["graph"], "precision": graph_key["precision"],
                     "target": (f"TensorRT {key['tensorrt']} on {key['gpu']} (sm {key['compute_capability']})"
                                if key["artifact"] == "tensorrt" else f"ONNX opset {key['opset']}"),
                     "pairs": sorted(set(owners.get(graph_key["weights_sha256"], []))),
                     "bytes": record["bytes"], "created": record["created"], "path": record["path"]})
    return rows
