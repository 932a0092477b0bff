"""TensorRT plans of the three ONNX graphs (nets/onnx_export.py), built once per GPU and cached.

A plan is what TensorRT's builder serializes (TensorRT's API calls it a serialized engine; this
project says "plan", because "engine" names the --engine choice of the job API).

Optional: needs the ``mixdaemon[tensorrt]`` extra (the ``tensorrt`` Python package, 10.x or 11.x)
and a CUDA build of torch, which supplies the device buffers, the CUDA stream and the GPU's name
and compute capability. Nothing here imports tensorrt until a plan is built or loaded.

**Precision.** ``fp32`` plans compute in IEEE float32 (TF32 is switched off, it rounds inputs
to 10 mantissa bits); ``fp16`` plans are built from the FP16 graph (float16 arithmetic, float32
inputs and outputs). Networks are created strongly typed: TensorRT 11 removed the weakly typed
FP16 builder flag, and strongly typed networks take their precision from the graph on 10.x too.

**Profiles.** One optimization profile per plan, for the shapes the pipeline sends
(``pipeline_profile``): the encoder gets reference segments of up to REFERENCE_SEGMENT samples in
batches of up to 4; the cloner gets whole songs up to one overlap-save window (chunk + receptive
field), tuned for that window; the stream graph gets blocks of up to one chunk, batch 1.

**Cache.** A plan is an artifact of the artifact cache (nets/onnx_export.py) whose key holds the
ONNX graph's key (weights hash, config, precision, exporter), the profile, the TensorRT version and
the GPU's name and compute capability: built once per GPU, rebuilt when any of them changes. The
builder's timing cache is kept per TensorRT version and GPU in ``<cache>/tensorrt-timing/``, so a
rebuild (another chunk size, precision or model) skips the kernel timings it has already made.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixdaemon import defaults
from mixdaemon.audio.dsp import WORKING_RATE
from mixdaemon.errors import EngineUnavailable
from mixdaemon.files import atomic_write
from mixdaemon.nets.onnx_export import (
    artifact_path,
    cache_dir,
    ensure_artifact,
    ensure_onnx,
    onnx_key,
    stream_state_shapes,
)
from mixdaemon.nets.shapes import (
    INTERPOLATION_CHUNK_SECONDS,
    REFERENCE_BATCH,
    REFERENCE_SEGMENT,
)
from mixdaemon.progress import Progress

log = logging.getLogger(__name__)


def tensorrt_unavailable_reason() -> str | None:
    """Why TensorRT cannot run here, or None when it can (tensorrt imports and torch sees a CUDA GPU)."""
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # a broken install raises more than ImportError (missing CUDA libraries)
        return f"the tensorrt package is not importable ({type(exc).__name__}: {exc}); install mixdaemon[tensorrt]"
    import torch

    if not torch.cuda.is_available():
        return (f"no CUDA GPU visible to torch {torch.__version__} "
                "(TensorRT needs an NVIDIA GPU and a CUDA build of torch)")
    return None


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.9"

    @property
    def slug(self) -> str:
        return f"{re.sub(r'[^A-Za-z0-9]+', '-', self.name).strip('-')}-sm{self.compute_capability.replace('.', '')}"


def current_gpu(device: int = 0) -> GpuInfo:
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return GpuInfo(torch.cuda.get_device_name(device), f"{major}.{minor}")


# --- profiles -------------------------------------------------------------------------------------

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Profile:
    """Per input with a dynamic axis: (name, min shape, opt shape, max shape)."""

    shapes: tuple[tuple[str, Shape, Shape, Shape], ...]

    def to_dict(self) -> dict:
        return {name: {"min": list(lo), "opt": list(opt), "max": list(hi)} for name, lo, opt, hi in self.shapes}


def pipeline_profile(graph: str, config, *, chunk_seconds: float = defaults.CHUNK_SECONDS,
                     batch_size: int = defaults.BATCH_SIZE,
                     sample_rate: int = WORKING_RATE) -> Profile:
    """The shapes nets/inference.py sends to `graph` for these settings (see the module docstring)."""
    if graph == "fxencoder":
        segment = max(REFERENCE_SEGMENT, config.min_input_length)
        return Profile((("audio", (1, 2, config.min_input_length), (REFERENCE_BATCH, 2, segment),
                         (REFERENCE_BATCH, 2, segment)),))
    chunk = round(max(chunk_seconds, INTERPOLATION_CHUNK_SECONDS) * sample_rate)
    if graph == "mixfxcloner":
        window = chunk + 2 * (config.receptive_field // 2)
        embedding = (batch_size, config.cond_dim)
        return Profile((("audio", (1, 2, 1), (batch_size, 2, window), (batch_size, 2, window)),
                        ("embedding", (1, config.cond_dim), embedding, embedding)))
    states = tuple((f"state{n}", shape, shape, shape) for n, shape in enumerate(stream_state_shapes(config, 1)))
    return Profile((("audio", (1, 2, 1), (1, 2, chunk), (1, 2, chunk)),
                    ("embedding", (1, config.cond_dim), (1, config.cond_dim), (1, config.cond_dim))) + states)


# --- the cache key --------------------------------------------------------------------------------

def plan_key(graph_key: dict, profile: Profile, tensorrt_version: str, gpu: GpuInfo) -> dict:
    """Everything a plan depends on: its ONNX graph's key (weights, config, precision, exporter),
    the optimization profile, the TensorRT version and the GPU."""
    return {"artifact": "tensorrt", "graph": graph_key, "profile": profile.to_dict(), "tensorrt": tensorrt_version,
            "gpu": gpu.name, "compute_capability": gpu.compute_capability}


def plan_path(graph_key: dict, key: dict, store=None) -> Path:
    return artifact_path(store, graph_key["weights_sha256"], f"{graph_key['graph']}-{graph_key['precision']}",
                         key, ".plan")


def timing_cache_path(tensorrt_version: str, gpu: GpuInfo, store=None) -> Path:
    return cache_dir(store) / "tensorrt-timing" / f"{tensorrt_version}-{gpu.slug}.cache"


# --- building -------------------------------------------------------------------------------------

def _logger():
    import tensorrt as trt

    return trt.Logger(trt.Logger.WARNING)


def _progress_monitor(progress: Progress):
    """A trt.IProgressMonitor that reports the top-level build phases' step fractions."""
    import tensorrt as trt

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.steps: dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.steps[phase_name] = max(num_steps, 1)
            if parent_phase is None:
                progress(phase_name, 0.0)

        def step_complete(self, phase_name, step):
            if phase_name in self.steps:
                progress(phase_name, (step + 1) / self.steps[phase_name])
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            self.steps.pop(phase_name, None)

    return Monitor()


def build_plan(onnx_file: Path, plan_file: Path, profile: Profile, timing_cache_file: Path,
               progress: Progress | None = None) -> None:
    """Parse `onnx_file`, build a plan for `profile` into `plan_file`, and merge the kernel timings
    it measured into `timing_cache_file`."""
    import tensorrt as trt

    logger = _logger()
    builder = trt.Builder(logger)
    # strongly typed: precision comes from the graph (float16 graph → FP16 plan); always on in 11.x
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_file)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineUnavailable(f"{onnx_file}: TensorRT {trt.__version__} cannot parse the graph: {errors}")
    config = builder.create_builder_config()
    config.clear_flag(trt.BuilderFlag.TF32)
    optimization_profile = builder.create_optimization_profile()
    for name, lo, opt, hi in profile.shapes:
        optimization_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(optimization_profile)
    timings = config.create_timing_cache(timing_cache_file.read_bytes() if timing_cache_file.is_file() else b"")
    config.set_timing_cache(timings, ignore_mismatch=False)
    if progress is not None:
        monitor = _progress_monitor(progress)  # must outlive the build
        config.progress_monitor = monitor
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineUnavailable(f"{onnx_file}: TensorRT {trt.__version__} could not build a plan "
                                "(see the log above)")
    plan_file.write_bytes(bytes(plan))  # plan_file is ensure_artifact's partial file
    with atomic_write(timing_cache_file) as f:
        f.write(bytes(config.get_timing_cache().serialize()))


def ensure_plan(graph: str, model, weights_sha256: str, profile: Profile, precision: str = "fp16", store=None,
                progress: Progress | None = None) -> Path:
    """The cached plan of `graph` for this GPU, TensorRT version, precision and profile; built
    (and its ONNX graph exported) first if needed. Building takes minutes; the timing cache helps."""
    import tensorrt as trt

    gpu = current_gpu()
    graph_key = onnx_key(graph, model.config, weights_sha256, precision)
    key = plan_key(graph_key, profile, trt.__version__, gpu)
    path = plan_path(graph_key, key, store)
    timing_file = timing_cache_path(trt.__version__, gpu, store)

    def build(file: Path) -> None:
        onnx_file = ensure_onnx(graph, model, weights_sha256, precision, store)
        log.info("building the TensorRT %s %s plan for %s (minutes, once per GPU)", graph, precision, gpu.name)
        build_plan(onnx_file, file, profile, timing_file, progress)

    return ensure_artifact(path, key, build, f"TensorRT {graph} {precision} on {gpu.name}")[0]


# --- running --------------------------------------------------------------------------------------

class TrtPlan:
    """A plan deserialized into a TensorRT ICudaEngine with one execution context; inputs and
    outputs are numpy arrays, copied through torch CUDA tensors on the current device."""

    def __init__(self, plan_file: Path):
        import tensorrt as trt
        import torch

        self._torch = torch
        self.runtime = trt.Runtime(_logger())
        self.cuda_engine = self.runtime.deserialize_cuda_engine(Path(plan_file).read_bytes())
        if self.cuda_engine is None:
            raise EngineUnavailable(f"{plan_file}: TensorRT {trt.__version__} cannot load this plan "
                                    "(built by another TensorRT version or for another GPU); rebuild it")
        self.context = self.cuda_engine.create_execution_context()
        names = [self.cuda_engine.get_tensor_name(i) for i in range(self.cuda_engine.num_io_tensors)]
        self.inputs = [n for n in names if self.cuda_engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.cuda_engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtypes = {n: torch.from_numpy(np.zeros(0, trt.nptype(self.cuda_engine.get_tensor_dtype(n)))).dtype
                        for n in names}
        self.stream = torch.cuda.Stream()

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name, for inputs by name."""
        torch = self._torch
        keep = []  # device tensors must live until the stream has finished
        with torch.cuda.stream(self.stream):
            for name in self.inputs:
                tensor = torch.as_tensor(feed[name]).to("cuda", self._dtypes[name]).contiguous()  # 0-d stays 0-d
                keep.append(tensor)
                self.context.set_input_shape(name, tuple(tensor.shape))
                self.context.set_tensor_address(name, tensor.data_ptr())
            outputs = []
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                tensor = torch.empty(shape, dtype=self._dtypes[name], device="cuda")
                outputs.append(tensor)
                self.context.set_tensor_address(name, tensor.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise EngineUnavailable("TensorRT: the plan failed to run (see the log above)")
            host = [t.cpu() for t in outputs]
        self.stream.synchronize()
        return {name: t.numpy() for name, t in zip(self.outputs, host)}

