"""CPU cost of the inference backends: compute seconds per audio second, eager torch vs ONNX Runtime.

    .venv/bin/python benchmarks/bench_backends.py                      # everything, 2 threads
    .venv/bin/python benchmarks/bench_backends.py --sections raw --sizes full --repeats 5
    .venv/bin/python benchmarks/bench_backends.py --sections profile   # where the cloner's time goes

Sections:
- ``raw``: one model call on real stems (batch 1; the encoder on one REFERENCE_SEGMENT, the cloner
  on `--seconds` of audio), torch eager vs ONNX Runtime, both with `--threads` intra-op threads;
  the same call the authors' cost table in ../shared/reference/README.md measures.
- ``song``: inference.convert of the cloner over a `--song-seconds` song built from real stems,
  on ONNX Runtime: overlap-save windows vs the stream (both 12-s chunks, the default), since the
  overlap-save windows recompute 5.2 s of context per chunk with the full-size cloner.
- ``knobs``: ONNX Runtime settings for the full-size cloner on `--seconds` of audio: the graph
  as torch's exporter writes it (1-D convolutions) vs onnx_export's (2-D convolutions, which ONNX
  Runtime runs with its NCHWc kernels), optimization levels, thread spinning, 1 thread, batch 2.
- ``chunks``: the stream's chunk length (6, 12, 24 s) for a `--song-seconds` song, full-size cloner.
- ``profile``: ONNX Runtime's per-operator time and torch's profiler table for the full-size
  cloner, which explain the ratio between the two.

Models: ``full`` is the authors' architecture, ``default`` the shipped default pair's (the
"small" training presets of mixdaemon/train; the pair named "default" in the model store is used
when it exists). Weights are random: the cost does not depend on their values.

The machine may be shared, so every measurement alternates the contenders call by call and keeps
each one's fastest call (wall clock) and its CPU time; the ratio of two contenders measured in one
run is the number to trust. Results are printed as a Markdown table and, with --json, written out.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mixdaemon.audio.io import read_audio  # noqa: E402
from mixdaemon.nets.backends import OnnxRuntimeBackend, TorchBackend  # noqa: E402
from mixdaemon.nets.inference import convert
from mixdaemon.nets.mst import FXencoder, MixFXcloner  # noqa: E402
from mixdaemon.nets.onnx_export import ensure_onnx  # noqa: E402
from mixdaemon.nets.shapes import REFERENCE_SEGMENT  # noqa: E402
from mixdaemon.nets.store import ModelFileError, load_pair, weights_sha256  # noqa: E402

SR = 44100
STEMS = REPO.parent / "shared" / "data" / "real_stems"


def models(size: str) -> tuple[FXencoder, MixFXcloner, str]:
    """(encoder, cloner, where they come from) for "full" or "default"."""
    torch.manual_seed(0)
    if size == "full":
        return FXencoder().eval(), MixFXcloner().eval(), "authors' architecture, random weights"
    try:
        encoder, cloner, info = load_pair("default")
        return encoder, cloner, f"pair {info.path}"
    except ModelFileError:
        from mixdaemon.nets.mst import ClonerConfig
        from mixdaemon.train.cloner import CLONER_PRESETS
        from mixdaemon.train.encoder import ENCODER_PRESETS

        encoder = FXencoder(ENCODER_PRESETS["small"]).eval()
        cloner = MixFXcloner(ClonerConfig(**CLONER_PRESETS["small"], cond_dim=encoder.config.embedding_dim)).eval()
        return encoder, cloner, "train presets 'small' (no 'default' pair in the store), random weights"


def real_audio(seconds: float) -> np.ndarray:
    """(n, 2) float32: the real stems of the three songs, one after another, as long as asked."""
    parts, n = [], round(seconds * SR)
    while sum(len(p) for p in parts) < n:
        for song in ("song_a", "song_b", "song_c"):
            for stem in ("other", "bass", "vocals", "drums"):
                parts.append(read_audio(STEMS / song / f"{stem}.wav").samples)
    return (0.5 * np.concatenate(parts)[:n]).astype(np.float32)


def race(contenders: dict, repeats: int, warm_ups: dict | None = None) -> dict[str, dict]:
    """Alternate the calls, after a warm-up of each (the call itself unless `warm_ups` gives a
    shorter one); fastest wall time and its CPU time per name."""
    for name, run in contenders.items():
        (warm_ups or contenders)[name]()
    best = {name: (float("inf"), 0.0) for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if wall < best[name][0]:
                best[name] = (wall, cpu)
    return {name: {"wall_s": wall, "cpu_s": cpu} for name, (wall, cpu) in best.items()}


def raw_section(sizes, threads, seconds, repeats, store) -> list[dict]:
    rows = []
    for size in sizes:
        encoder, cloner, source = models(size)
        torch_backend = TorchBackend(encoder, cloner, "cpu")
        ort_backend = OnnxRuntimeBackend.from_models(encoder, cloner, store=store, threads=threads)
        style = np.random.default_rng(0).uniform(0, 2, (1, cloner.config.cond_dim)).astype(np.float32)
        segment = real_audio(REFERENCE_SEGMENT / SR).T[None].copy()
        chunk = real_audio(seconds).T[None].copy()
        calls = {
            "FXencoder": ({"torch eager": lambda: torch_backend.embed(segment),
                           "onnxruntime": lambda: ort_backend.embed(segment)}, segment.shape[-1]),
            "MixFXcloner": ({"torch eager": lambda: torch_backend.convert(chunk, style),
                             "onnxruntime": lambda: ort_backend.convert(chunk, style)}, chunk.shape[-1]),
        }
        for model, (contenders, samples) in calls.items():
            result = race(contenders, repeats)
            audio_s = samples / SR
            for name, r in result.items():
                rows.append({"section": "raw", "size": size, "source": source, "model": model, "backend": name,
                             "audio_s": round(audio_s, 2), "threads": threads,
                             "wall_per_audio_s": r["wall_s"] / audio_s, "cpu_per_audio_s": r["cpu_s"] / audio_s})
            eager, onnx = result["torch eager"]["wall_s"], result["onnxruntime"]["wall_s"]
            print(f"raw {size} {model}: torch {eager / audio_s:.3f} s/s, onnxruntime {onnx / audio_s:.3f} s/s, "
                  f"onnxruntime {eager / onnx:.2f}× faster", flush=True)
    return rows


def song_section(sizes, threads, song_seconds, repeats, store) -> list[dict]:
    rows = []
    song = real_audio(song_seconds)
    for size in sizes:
        encoder, cloner, source = models(size)
        backend = OnnxRuntimeBackend.from_models(None, cloner, store=store, threads=threads)
        style = np.random.default_rng(0).uniform(0, 2, cloner.config.cond_dim).astype(np.float32)
        methods = {"overlap-save, 12-s chunks": False, "stream, 12-s chunks": True}
        result = race({name: lambda s=stream: convert(backend, song, style, chunk_seconds=12, stream=s)
                       for name, stream in methods.items()}, repeats,
                      {name: lambda s=stream: convert(backend, song[:30 * SR], style, chunk_seconds=12, stream=s)
                       for name, stream in methods.items()})
        for name, r in result.items():
            rows.append({"section": "song", "size": size, "source": source, "model": "MixFXcloner",
                         "backend": f"onnxruntime, {name}", "audio_s": song_seconds, "threads": threads,
                         "wall_per_audio_s": r["wall_s"] / song_seconds, "cpu_per_audio_s": r["cpu_s"] / song_seconds})
            print(f"song {size} {name}: {r['wall_s'] / song_seconds:.3f} s/s (cpu {r['cpu_s'] / song_seconds:.3f})",
                  flush=True)
    return rows


def _session(path, threads: int, level: str = "ORT_ENABLE_ALL", spinning: bool = True,
             profile_prefix: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix:
        options.enable_profiling, options.profile_file_prefix = True, profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def knobs_section(threads, seconds, repeats, store) -> list[dict]:
    _, cloner, source = models("full")
    ours = ensure_onnx("mixfxcloner", cloner, weights_sha256(cloner.state_dict()), store=store)
    plain = Path(store) / "mixfxcloner-torch-exporter.onnx"  # the model's own forward, as exported
    program = torch.onnx.export(cloner, (torch.zeros(2, 2, 4099), torch.zeros(2, 2048)), dynamo=True, verbose=False,
                                input_names=["audio", "embedding"], output_names=["converted"], opset_version=18,
                                dynamic_shapes=({0: torch.export.Dim("batch"), 2: torch.export.Dim("time")},
                                                {0: torch.export.Dim("batch")}))
    program.save(plain, external_data=False)
    chunk = real_audio(seconds).T[None, :, :round(seconds * SR) // 2 * 2].copy()
    pair = np.ascontiguousarray(chunk.reshape(2, 2, -1).transpose(1, 0, 2))  # the halves as a batch of 2
    style = np.random.default_rng(0).uniform(0, 2, (1, 2048)).astype(np.float32)
    sessions = {
        "1-D convs (torch's exporter), all optimizations": (_session(plain, threads), chunk),
        "2-D convs (onnx_export), basic optimizations": (_session(ours, threads, "ORT_ENABLE_BASIC"), chunk),
        "2-D convs, extended optimizations": (_session(ours, threads, "ORT_ENABLE_EXTENDED"), chunk),
        "2-D convs, all optimizations (the backend)": (_session(ours, threads), chunk),
        "2-D convs, all, no thread spinning": (_session(ours, threads, spinning=False), chunk),
        "2-D convs, all, 1 thread": (_session(ours, 1), chunk),
        "2-D convs, all, batch 2 of half the length": (_session(ours, threads), pair),
    }
    result = race({name: lambda s=s, x=x: s.run(None, {"audio": x, "embedding": np.repeat(style, len(x), 0)})
                   for name, (s, x) in sessions.items()}, repeats)
    audio_s = chunk.shape[-1] / SR
    rows = []
    for name, r in result.items():
        rows.append({"section": "knobs", "size": "full", "source": source, "model": "MixFXcloner",
                     "backend": f"onnxruntime, {name}", "audio_s": round(audio_s, 2),
                     "threads": 1 if "1 thread" in name else threads,
                     "wall_per_audio_s": r["wall_s"] / audio_s, "cpu_per_audio_s": r["cpu_s"] / audio_s})
        print(f"knobs {name}: {r['wall_s'] / audio_s:.3f} s/s (cpu {r['cpu_s'] / audio_s:.3f})", flush=True)
    return rows


def chunks_section(threads, song_seconds, repeats, store) -> list[dict]:
    song = real_audio(song_seconds)
    _, cloner, source = models("full")
    backend = OnnxRuntimeBackend.from_models(None, cloner, store=store, threads=threads)
    style = np.random.default_rng(0).uniform(0, 2, cloner.config.cond_dim).astype(np.float32)
    lengths = (6.0, 12.0, 24.0)
    result = race({f"stream, {c:g}-s chunks": lambda c=c: convert(backend, song, style, chunk_seconds=c, stream=True)
                   for c in lengths}, repeats,
                  {f"stream, {c:g}-s chunks": lambda c=c: convert(backend, song[:round(2 * c * SR)], style,
                                                                 chunk_seconds=c, stream=True) for c in lengths})
    rows = []
    for name, r in result.items():
        rows.append({"section": "chunks", "size": "full", "source": source, "model": "MixFXcloner",
                     "backend": f"onnxruntime, {name}", "audio_s": song_seconds, "threads": threads,
                     "wall_per_audio_s": r["wall_s"] / song_seconds, "cpu_per_audio_s": r["cpu_s"] / song_seconds})
        print(f"chunks {name}: {r['wall_s'] / song_seconds:.3f} s/s (cpu {r['cpu_s'] / song_seconds:.3f})", flush=True)
    return rows


def profile_section(threads, seconds, store) -> None:
    from collections import Counter

    _, cloner, _ = models("full")
    chunk = real_audio(seconds).T[None].copy()
    style = np.random.default_rng(0).uniform(0, 2, (1, 2048)).astype(np.float32)
    graph = ensure_onnx("mixfxcloner", cloner, weights_sha256(cloner.state_dict()), store=store)
    session = _session(graph, threads, profile_prefix=str(Path(store) / "ort_profile"))
    feed = {"audio": chunk, "embedding": style}
    session.run(None, feed)
    started = time.perf_counter()
    session.run(None, feed)
    wall = time.perf_counter() - started
    events = json.load(open(session.end_profiling()))
    last_run = max(e["ts"] for e in events if e.get("name") == "model_run")
    per_op = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= last_run:
            per_op[e["args"]["op_name"]] += e["dur"] / 1e6
    total = sum(per_op.values())
    print(f"\nONNX Runtime, full-size MixFXcloner, {seconds:g} s of audio, {threads} threads: {wall:.2f} s wall")
    print("| operator | s | share |\n|---|---|---|")
    for op, s in per_op.most_common():
        print(f"| {op} | {s:.2f} | {100 * s / total:.1f}% |")
    from torch.profiler import ProfilerActivity, profile

    x, c = torch.from_numpy(chunk), torch.from_numpy(style)
    with torch.inference_mode():
        cloner(x, c)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            cloner(x, c)
    print(f"\ntorch eager, same input, {threads} threads (profiler on):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", nargs="+", default=["raw", "song"],
                        choices=["raw", "song", "knobs", "chunks", "profile"])
    parser.add_argument("--sizes", nargs="+", default=["full", "default"], choices=["full", "default"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=6.0, help="cloner input for the raw section")
    parser.add_argument("--song-seconds", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--store", help="model store for the exported graphs (default: a temporary folder)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    store = args.store or tempfile.mkdtemp(prefix="bench_backends_")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
          f"torch {torch.__version__}, {args.threads} threads", flush=True)
    rows = []
    if "raw" in args.sections:
        rows += raw_section(args.sizes, args.threads, args.seconds, args.repeats, store)
    if "song" in args.sections:
        rows += song_section(args.sizes, args.threads, args.song_seconds, args.repeats, store)
    if "knobs" in args.sections:
        rows += knobs_section(args.threads, args.seconds, args.repeats, store)
    if "chunks" in args.sections:
        rows += chunks_section(args.threads, args.song_seconds, args.repeats, store)
    if "profile" in args.sections:
        profile_section(args.threads, args.seconds, store)
    if rows:
        print(f"\nload average after: {os.getloadavg()[0]:.1f}\n")
        print("| section | model | size | backend | audio s | wall s per audio s | CPU s per audio s |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['section']} | {r['model']} | {r['size']} | {r['backend']} | {r['audio_s']} | "
                  f"{r['wall_per_audio_s']:.3f} | {r['cpu_per_audio_s']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
