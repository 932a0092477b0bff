"""Lower-precision CPU inference of the MixFXcloner: speed and error against fp32, beside the authors' code.

    .venv/bin/python benchmarks/bench_precision.py                       # both sizes, 2 threads, 3 s per stem
    .venv/bin/python benchmarks/bench_precision.py --sizes full --seconds 6
    .venv/bin/python benchmarks/bench_precision.py --sizes --snr-seeds 1 2 3 4   # bf16's SNR on more random nets

Per cloner size (``full``: the authors' architecture; ``default``: the shipped default pair), on
`--seconds` of each of song_a's four stems (from 2 s in), each in the style of song_b's same stem
(its embed_reference embedding), contenders alternating stem by stem:

- the authors' code: eager torch fp32, the MixFXcloner module on the whole excerpt in one call;
- ``fp32``: today's path, inference.convert on ONNX Runtime (a stem this short is one call; long
  songs stream, docs/BENCHMARKS.md "Inference backends");
- ``fp32 stream`` and ``bf16 stream``: the same backends as a stream of 1-s blocks (ClonerStream),
  the path a long song takes;
- ``bf16``: inference.convert on TorchBackend(precision="bf16") (nets/precision.py). Timed where the
  CPU has native bf16; without it only for the shipped default (the full-size cloner's emulated bf16
  convolutions take minutes per stem), and its SNR is then also measured on the same arithmetic
  emulated in float32 (operands rounded to bf16, float32 accumulation, the result rounded to bf16),
  which is how the full-size row gets one. The default row prints how close emulation and the real
  bf16 path agree.

SNR is against the authors' code's output (float32), per stem; the table gives the lowest and
highest of the four. `--snr-seeds` adds, without timing, bf16's SNR on full-size nets drawn with
those seeds: it depends on the weights more than on the stem. Speed is the fastest stem's wall time (and its CPU time, both threads) per
audio second; "× authors" is the authors' wall time over the contender's in the same run.

Weights: the shipped default pair as trained. The full-size pair has no trained weights here, so
it is random (torch's default init, seed 0 unless said) with every BatchNorm's running statistics set from a
forward pass in training mode over song_c's four stems: each block's activations are then
normalized as in a trained network, instead of growing or vanishing from block to block.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mixdaemon.audio.io import read_audio  # noqa: E402
from mixdaemon.nets.backends import OnnxRuntimeBackend, TorchBackend  # noqa: E402
from mixdaemon.nets.inference import convert, embed_reference  # noqa: E402
from mixdaemon.nets.mst import FXencoder, MixFXcloner  # noqa: E402
from mixdaemon.nets.onnx_export import ClonerGraph  # noqa: E402
from mixdaemon.nets.precision import Bf16Block, Bf16ClonerGraph, cpu_has_native_bf16, snr_db  # noqa: E402
from mixdaemon.nets.store import load_pair  # noqa: E402

SR = 44100
STEMS = REPO.parent / "shared" / "data" / "real_stems"
STEM_NAMES = ("drums", "bass", "other", "vocals")


def stem(song: str, name: str, seconds: float | None = None, start: float = 0.0) -> np.ndarray:
    x = read_audio(STEMS / song / f"{name}.wav").samples
    first = round(start * SR)
    return np.ascontiguousarray(x[first:first + round(seconds * SR)] if seconds else x[first:], np.float32)


def set_batchnorm_statistics(model: nn.Module, batches: list[tuple]) -> nn.Module:
    """Every BatchNorm's running mean and variance: the average over `batches` (argument tuples of
    model) of its batch statistics in training mode. Returns the model in eval mode."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches
    model.train()
    with torch.no_grad():
        for args in batches:
            model(*args)
    return model.eval()


def models(size: str, seconds: float, seed: int = 0) -> tuple[FXencoder, MixFXcloner, str]:
    if size == "default":
        encoder, cloner, info = load_pair("default")
        return encoder, cloner, f"shipped default pair (width {cloner.config.channel_width}, trained)"
    torch.manual_seed(seed)
    encoder, cloner = FXencoder(), MixFXcloner()
    calibration = [torch.from_numpy(stem("song_c", name, min(seconds, 2.0), 4.0).T[None].copy())
                   for name in STEM_NAMES]
    set_batchnorm_statistics(encoder, [(x,) for x in calibration])
    style = encoder(calibration[0]).detach()
    set_batchnorm_statistics(cloner, [(x, style) for x in calibration])
    return encoder, cloner, "authors' architecture, random weights, BatchNorm statistics from song_c's stems"


class EmulatedBf16Block(Bf16Block):
    """Bf16Block's arithmetic on float32 kernels: bf16 operands, float32 sums, bf16 result."""

    def convolve(self, x, padding):
        out = nn.functional.conv1d(x.float().transpose(1, 2), self.weight.float()[:, :, 0], self.bias.float(),
                                   padding=padding, dilation=self.dilation)
        return out.to(torch.bfloat16).transpose(1, 2)


def emulated_bf16(cloner: MixFXcloner):
    whole = Bf16ClonerGraph(cloner).eval()
    whole.blocks = nn.ModuleList(EmulatedBf16Block(block) for block in ClonerGraph(cloner, torch.float32).blocks)
    return lambda audio, embedding: whole(torch.from_numpy(audio.T[None].copy()),
                                          torch.from_numpy(embedding[None])).numpy()[0].T


def timed(run):
    wall, cpu = time.perf_counter(), time.process_time()
    out = run()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def measure(size: str, seconds: float, threads: int, store: str, native: bool) -> list[dict]:
    encoder, cloner, source = models(size, seconds)
    ort = OnnxRuntimeBackend.from_models(None, cloner, store=store, threads=threads)
    bf16 = TorchBackend(cloner=cloner, device="cpu", precision="bf16")

    def authors(audio, embedding):
        with torch.inference_mode():
            return cloner(torch.from_numpy(audio.T[None].copy()), torch.from_numpy(embedding[None])).numpy()[0].T

    contenders = {"authors' code (eager torch fp32, whole window)": authors,
                  "fp32 (ONNX Runtime, today's path)": lambda a, e: convert(ort, a, e)}
    time_bf16 = native or size == "default"
    if time_bf16:
        contenders["bf16 (torch, bf16 convolutions)"] = lambda a, e: convert(bf16, a, e)
    # long songs run as a stream (1-s blocks here): the path a job takes past one window
    contenders["fp32 stream (ONNX Runtime, 1-s blocks)"] = lambda a, e: convert(ort, a, e, chunk_seconds=1.0,
                                                                                stream=True)
    if time_bf16:
        contenders["bf16 stream (torch, 1-s blocks)"] = lambda a, e: convert(bf16, a, e, chunk_seconds=1.0, stream=True)
    emulated = None if native else emulated_bf16(cloner)
    warm = stem("song_a", "drums", 1.0, 2.0)
    warm_style = np.zeros(cloner.config.cond_dim, np.float32)
    for run in contenders.values():
        run(warm, warm_style)
    best = {name: (float("inf"), 0.0) for name in contenders}
    snrs = {name: [] for name in contenders}
    snrs["bf16, emulated in fp32"] = []
    agreement = []
    for name in STEM_NAMES:
        audio = stem("song_a", name, seconds, 2.0)
        with torch.inference_mode():
            style = embed_reference(encoder, stem("song_b", name))
        outputs = {}
        for contender, run in contenders.items():
            outputs[contender], wall, cpu = timed(lambda: run(audio, style))
            if wall < best[contender][0]:
                best[contender] = (wall, cpu)
        reference = outputs["authors' code (eager torch fp32, whole window)"]
        for contender, out in outputs.items():
            snrs[contender].append(snr_db(reference, out))
        if emulated is not None:
            with torch.inference_mode():
                out = emulated(audio, style)
            snrs["bf16, emulated in fp32"].append(snr_db(reference, out))
            if time_bf16:
                agreement.append(snr_db(outputs["bf16 (torch, bf16 convolutions)"], out))
        print(f"{size} {name}: " + ", ".join(f"{c.split(' (')[0]} {v[-1]:.1f} dB" for c, v in snrs.items() if v),
              flush=True)
    if agreement:
        print(f"{size}: emulated against real bf16: {min(agreement):.1f}–{max(agreement):.1f} dB SNR", flush=True)
    authors_wall = best["authors' code (eager torch fp32, whole window)"][0]
    rows = []
    for contender, values in snrs.items():
        if not values:
            continue
        wall, cpu = best.get(contender, (None, None))
        rows.append({"size": size, "source": source, "contender": contender, "audio_s": seconds,
                     "wall_per_audio_s": None if wall is None else wall / seconds,
                     "cpu_per_audio_s": None if wall is None else cpu / seconds,
                     "speedup": None if wall is None else authors_wall / wall,
                     "snr_min": min(values), "snr_max": max(values)})
    return rows


def bf16_snr_of_random_nets(seeds, seconds: float, native: bool) -> list[tuple[int, list[float]]]:
    """(seed, SNR per stem) of bf16 against fp32 eager torch, full-size nets drawn with `seeds`."""
    out = []
    for seed in seeds:
        encoder, cloner, _ = models("full", seconds, seed)
        bf16 = (lambda a, e, b=TorchBackend(cloner=cloner, device="cpu", precision="bf16"): convert(b, a, e)) \
            if native else emulated_bf16(cloner)
        snrs = []
        for name in STEM_NAMES:
            audio = stem("song_a", name, seconds, 2.0)
            with torch.inference_mode():
                style = embed_reference(encoder, stem("song_b", name))
                reference = cloner(torch.from_numpy(audio.T[None].copy()), torch.from_numpy(style[None]))
                snrs.append(snr_db(reference.numpy()[0].T, bf16(audio, style)))
        print(f"seed {seed}: bf16 " + ", ".join(f"{n} {v:.1f} dB" for n, v in zip(STEM_NAMES, snrs)), flush=True)
        out.append((seed, snrs))
    return out


def cpu_flags() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "flags unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16")
    return " ".join(f for f in wanted if f in flags) or "no AVX2"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="*", default=["full", "default"], choices=["full", "default"])
    parser.add_argument("--snr-seeds", nargs="*", type=int, default=[], metavar="SEED",
                        help="full-size random nets on which to measure bf16's SNR (untimed)")
    parser.add_argument("--seconds", type=float, default=3.0, help="of each stem")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    native = cpu_has_native_bf16()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor() or platform.machine())
    print(f"# {cpu} ({cpu_flags()}), {os.cpu_count()} CPUs, native bf16: {'yes' if native else 'no'}, "
          f"load {os.getloadavg()[0]:.1f}, torch {torch.__version__}, {args.threads} threads", flush=True)
    store = tempfile.mkdtemp(prefix="bench_precision_")
    rows = []
    for size in args.sizes:
        rows += measure(size, args.seconds, args.threads, store, native)
    seeds = bf16_snr_of_random_nets(args.snr_seeds, args.seconds, native)
    print(f"\nload average after: {os.getloadavg()[0]:.1f}\n")
    if rows:
        print("| cloner | contender | s per audio s (wall) | CPU s per audio s | × authors' speed | SNR vs fp32, dB |")
        print("|---|---|---|---|---|---|")
    for r in rows:
        speed = ("not timed", "", "") if r["wall_per_audio_s"] is None else (
            f"{r['wall_per_audio_s']:.3f}", f"{r['cpu_per_audio_s']:.3f}", f"{r['speedup']:.2f}×")
        snr = "(reference)" if r["contender"].startswith("authors") else f"{r['snr_min']:.1f}–{r['snr_max']:.1f}"
        print(f"| {r['size']} | {r['contender']} | {speed[0]} | {speed[1]} | {speed[2]} | {snr} |")
    if args.snr_seeds:
        arithmetic = "bf16 path" if native else "bf16 arithmetic emulated in fp32"
        print(f"\n| full-size net, seed | {arithmetic}: SNR vs fp32, dB ({', '.join(STEM_NAMES)}) | lowest |")
        print("|---|---|---|")
        for seed, snrs in seeds:
            print(f"| {seed} | {' / '.join(f'{v:.1f}' for v in snrs)} | {min(snrs):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
