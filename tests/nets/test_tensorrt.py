"""The TensorRT plan cache: the key covers everything a plan depends on, a built artifact is
reused without rebuilding, and the optimization profiles cover every shape the pipeline sends.

Only the last test builds real plans; it runs where TensorRT is importable and torch sees a
CUDA GPU, and is skipped with the reason everywhere else. Nothing else here imports tensorrt.
"""
import numpy as np
import pytest
import torch

from mixdaemon.audio.io import read_audio
from mixdaemon.files import PARTIAL_SUFFIX
from mixdaemon.nets.backends import TorchBackend
from mixdaemon.nets.inference import convert, embed_reference, interpolated_embedding
from mixdaemon.nets.mst import ClonerConfig, EncoderConfig, FXencoder, MixFXcloner
from mixdaemon.nets.onnx_export import GRAPHS, cached_key, ensure_artifact, onnx_key
from mixdaemon.nets.tensorrt import (
    GpuInfo,
    pipeline_profile,
    plan_key,
    plan_path,
    tensorrt_unavailable_reason,
    timing_cache_path,
)
from tests.support.models import v2_model

torch.set_num_threads(2)
SR = 44100
CLONER = ClonerConfig(nblocks=6, channel_width=8, kernel_size=3, dilation_growth=8, cond_dim=16)
ENCODER = EncoderConfig(channels=(8, 16, 16), kernels=(9, 5, 3), strides=(4, 4, 1))
GPU = GpuInfo("NVIDIA GeForce RTX 4090", "8.9")


def path_of_plan(store, *, weights="a" * 64, config=CLONER, precision="fp16", chunk_seconds=12.0, batch_size=1,
              tensorrt="10.8.0.43", gpu=GPU, graph="mixfxcloner"):
    graph_key = onnx_key(graph, config, weights, precision)
    profile = pipeline_profile(graph, config, chunk_seconds=chunk_seconds, batch_size=batch_size)
    return plan_path(graph_key, plan_key(graph_key, profile, tensorrt, gpu), store)


def test_plan_key_changes_with_everything_a_plan_depends_on(tmp_path):
    base = path_of_plan(tmp_path)
    assert path_of_plan(tmp_path) == base  # unchanged inputs: the same plan
    variants = {
        "weights": path_of_plan(tmp_path, weights="b" * 64),
        "config": path_of_plan(tmp_path, config=ClonerConfig(nblocks=6, channel_width=8, kernel_size=3,
                                                             dilation_growth=7, cond_dim=16)),
        "precision": path_of_plan(tmp_path, precision="fp32"),
        "profile: chunk size": path_of_plan(tmp_path, chunk_seconds=6.0),
        "profile: batch size": path_of_plan(tmp_path, batch_size=2),
        "TensorRT version": path_of_plan(tmp_path, tensorrt="10.9.0.34"),
        "GPU": path_of_plan(tmp_path, gpu=GpuInfo("NVIDIA GeForce RTX 3090", "8.9")),
        "compute capability": path_of_plan(tmp_path, gpu=GpuInfo(GPU.name, "9.0")),
        "graph": path_of_plan(tmp_path, graph="mixfxcloner-stream"),
    }
    for what, path in variants.items():
        assert path != base, f"changing the {what} must change the plan"
    assert len(set(variants.values())) == len(variants)
    assert base.parent == tmp_path / "cache" / ("a" * 16) and base.suffix == ".plan"
    assert timing_cache_path("10.8.0.43", GPU, tmp_path).name == "10.8.0.43-NVIDIA-GeForce-RTX-4090-sm89.cache"


def test_built_artifact_is_reused_until_its_record_is_gone(tmp_path):
    path = path_of_plan(tmp_path)
    graph_key = onnx_key("mixfxcloner", CLONER, "a" * 64, "fp16")
    key = plan_key(graph_key, pipeline_profile("mixfxcloner", CLONER), "10.8.0.43", GPU)
    builds = []

    def build(file):
        builds.append(file)
        file.write_bytes(b"serialized plan %d" % len(builds))

    assert ensure_artifact(path, key, build, "test plan") == (path, True)
    assert ensure_artifact(path, key, build, "test plan") == (path, False)
    assert len(builds) == 1 and path.read_bytes() == b"serialized plan 1" and cached_key(path) == key
    assert not list(path.parent.glob(f".*{PARTIAL_SUFFIX}"))  # written under a temporary name, renamed into place
    # a build cut short between renaming the artifact and writing its record: built again
    path.with_name(path.name + ".json").unlink()
    assert ensure_artifact(path, key, build, "test plan") == (path, True)
    # a record for another key (e.g. a hand-copied file) is not trusted
    assert ensure_artifact(path, {**key, "tensorrt": "10.9.0.34"}, build, "test plan") == (path, True)
    assert len(builds) == 3 and path.read_bytes() == b"serialized plan 3"


class RecordingBackend(TorchBackend):
    """Remembers the shape of every input that nets/inference.py sends."""

    def __init__(self, *args):
        super().__init__(*args)
        self.sent = {graph: [] for graph in GRAPHS}

    def embed(self, segments):
        self.sent["fxencoder"].append({"audio": segments.shape})
        return super().embed(segments)

    def convert(self, chunks, embedding):
        self.sent["mixfxcloner"].append({"audio": chunks.shape, "embedding": (len(chunks), embedding.shape[1])})
        return super().convert(chunks, embedding)

    def stream(self, block, embedding, position, length, states):
        shapes = {"audio": block.shape, "embedding": embedding.shape}
        shapes.update({f"state{n}": s.shape for n, s in enumerate(states)})
        self.sent["mixfxcloner-stream"].append(shapes)
        return super().stream(block, embedding, position, length, states)


def test_profiles_cover_every_shape_the_pipeline_sends(real_stems):
    backend = RecordingBackend(v2_model(FXencoder(ENCODER)), v2_model(MixFXcloner(CLONER)))
    song = read_audio(real_stems / "song_b" / "other.wav").samples[:13 * SR]  # two reference segments
    short = song[:SR]
    chunk_seconds, batch_size = 3.0, 2
    for reference in (song, short[:ENCODER.min_input_length // 2]):
        embed_reference(backend, reference)
    style = np.random.default_rng(0).uniform(0, 2, CLONER.cond_dim).astype(np.float32)
    for audio in (song, short):
        convert(backend, audio, style, chunk_seconds=chunk_seconds, batch_size=batch_size)
        convert(backend, audio, style, chunk_seconds=chunk_seconds, stream=True)
        convert(backend, audio, interpolated_embedding(style, 2 - style), batch_size=batch_size)
    for graph, calls in backend.sent.items():
        assert calls, f"the pipeline never ran {graph}"
        config = ENCODER if graph == "fxencoder" else CLONER
        profile = {name: (lo, hi) for name, lo, _, hi in
                   pipeline_profile(graph, config, chunk_seconds=chunk_seconds, batch_size=batch_size).shapes}
        for shapes in calls:
            assert set(shapes) == set(profile), graph
            for name, shape in shapes.items():
                lo, hi = profile[name]
                assert all(a <= s <= b for a, s, b in zip(lo, shape, hi)), f"{graph} {name} {shape} outside {lo}…{hi}"


def test_tensorrt_plans_build_run_and_are_reused(tmp_path, real_stems):
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        pytest.skip(f"no real TensorRT build here: {reason}")
    from mixdaemon.nets.backends import TensorRTBackend

    encoder, cloner = v2_model(FXencoder(ENCODER)), v2_model(MixFXcloner(CLONER))
    audio = 0.3 * read_audio(real_stems / "song_a" / "bass.wav").samples[None, :2 * SR].transpose(0, 2, 1)
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    style = np.random.default_rng(0).uniform(0, 2, (1, CLONER.cond_dim)).astype(np.float32)
    reference = TorchBackend(encoder, cloner)
    for precision, tolerance in (("fp32", 1e-4), ("fp16", 3e-2)):
        backend = TensorRTBackend.from_models(encoder, cloner, store=tmp_path, precision=precision, chunk_seconds=1.0)
        np.testing.assert_allclose(backend.embed(audio), reference.embed(audio), rtol=0,
                                   atol=tolerance * max(1.0, float(np.abs(reference.embed(audio)).max())))
        np.testing.assert_allclose(backend.convert(audio, style), reference.convert(audio, style),
                                   rtol=0, atol=tolerance)
    plans = sorted(tmp_path.glob("cache/*/*.plan"))
    assert len(plans) == 6
    stamps = [p.stat().st_mtime_ns for p in plans]
    TensorRTBackend.from_models(encoder, cloner, store=tmp_path, precision="fp16", chunk_seconds=1.0)
    assert [p.stat().st_mtime_ns for p in plans] == stamps  # reused, not rebuilt
