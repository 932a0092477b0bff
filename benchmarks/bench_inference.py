"""CPU cost of MST inference through mixdaemon.inference: MixFXcloner convert() per chunk size and
batch size, FXencoder embed_reference(), and peak memory of whole conversions.

Every measurement runs in a fresh process (so that ru_maxrss is its own peak) with
torch.set_num_threads(--threads). Weights are random (torch's default init, seed 0): the cost does
not depend on their values. Input is band-limited stereo noise at 44.1 kHz.

  speed   steady-state compute seconds per audio second of convert(): the time of the first batch of
          a song long enough for full windows, divided by the audio it produces (batch × chunk);
          every later batch of a long song costs the same.
  embed   embed_reference() on a reference of --embed-seconds (2^19-sample segments).
  rss     one whole convert() of --rss-seconds inputs; wall time and peak RSS.
"RSS before" is the peak RSS with the model built and the input made, before the measured call.

Example (about 10 minutes of compute on an idle 2-core machine):
  .venv/bin/python benchmarks/bench_inference.py --threads 2 --chunks 6 12 24 --batches 1 2 \\
      --rss-seconds 60 600 --rss-config small --rss-chunk 12
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

SR = 44100
SMALL_CLONER = {"channel_width": 8}  # same receptive field and window lengths as the full cloner


def _noise(seconds: float, seed: int = 0) -> np.ndarray:
    """Band-limited noise; at most 30 s are generated and then repeated, so that making a long input
    does not set the peak RSS that the rss task measures."""
    from scipy import signal
    rng = np.random.default_rng(seed)
    n = round(seconds * SR)
    x = signal.sosfilt(signal.butter(4, [40, 8000], "bandpass", fs=SR, output="sos"),
                       rng.standard_normal((min(n, 30 * SR), 2)), axis=0)
    return np.resize((0.3 * x / np.abs(x).max()).astype(np.float32), (n, 2))


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _FirstBatchDone(Exception):
    pass


def worker(args) -> dict:
    import torch

    from mixdaemon.nets.inference import convert, embed_reference
    from mixdaemon.nets.mst import ClonerConfig, FXencoder, MixFXcloner

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.task == "embed":
        audio = _noise(args.seconds)
        encoder = FXencoder().eval()
        rss_model = _peak_rss_mib()
        t, cpu = time.perf_counter(), time.process_time()
        embed_reference(encoder, audio, batch_size=args.batch)
        elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
        return {"task": "embed", "seconds": args.seconds, "batch": args.batch, "elapsed_s": elapsed, "cpu_s": cpu,
                "s_per_audio_s": elapsed / args.seconds, "rss_model_MiB": rss_model, "peak_rss_MiB": _peak_rss_mib()}

    config = ClonerConfig(**(SMALL_CLONER if args.config == "small" else {}))
    cloner = MixFXcloner(config).eval()
    e = np.abs(np.random.default_rng(1).standard_normal(config.cond_dim)).astype(np.float32)
    chunk = round(args.chunk * SR)
    if args.task == "speed":
        # long enough that the first batch is made of full-length windows
        audio = _noise((args.batch * chunk + 2 * config.receptive_field) / SR)
        rss_model = _peak_rss_mib()
        t, cpu = time.perf_counter(), time.process_time()

        def stop(done, total):
            raise _FirstBatchDone

        try:
            convert(cloner, audio, e, chunk_seconds=args.chunk, batch_size=args.batch, progress=stop)
        except _FirstBatchDone:
            pass
        elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
        window = chunk + 2 * (config.receptive_field // 2)
        return {"task": "speed", "config": args.config, "chunk_s": args.chunk, "batch": args.batch,
                "window_samples": window, "overlap_factor": window / chunk, "elapsed_s": elapsed, "cpu_s": cpu,
                "s_per_audio_s": elapsed / (args.batch * args.chunk),
                "cpu_s_per_audio_s": cpu / (args.batch * args.chunk), "rss_model_MiB": rss_model,
                "peak_rss_MiB": _peak_rss_mib()}
    audio = _noise(args.seconds)
    rss_model = _peak_rss_mib()
    t, cpu = time.perf_counter(), time.process_time()
    convert(cloner, audio, e, chunk_seconds=args.chunk, batch_size=args.batch)
    elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
    return {"task": "rss", "config": args.config, "seconds": args.seconds, "chunk_s": args.chunk,
            "batch": args.batch, "elapsed_s": elapsed, "cpu_s": cpu, "s_per_audio_s": elapsed / args.seconds,
            "rss_model_MiB": rss_model, "peak_rss_MiB": _peak_rss_mib()}


def run_worker(threads: int, task: str, **kw) -> dict:
    cmd = [sys.executable, __file__, "--worker", task, "--threads", str(threads)]
    for key, value in kw.items():
        cmd += [f"--{key}", str(value)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    print(json.dumps(result), file=sys.stderr, flush=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chunks", type=float, nargs="*", default=[6, 12, 24], help="speed: chunk_seconds values")
    p.add_argument("--batches", type=int, nargs="*", default=[1, 2], help="speed: batch sizes")
    p.add_argument("--embed-seconds", type=float, default=180.0, help="embed: reference length (0: skip)")
    p.add_argument("--rss-seconds", type=float, nargs="*", default=[60, 600], help="rss: input lengths")
    p.add_argument("--rss-config", choices=["full", "small"], default="small",
                   help=f"rss: cloner size (small = {SMALL_CLONER}, same receptive field)")
    p.add_argument("--rss-chunk", type=float, default=12.0)
    p.add_argument("--worker", choices=["speed", "embed", "rss"], help=argparse.SUPPRESS)
    p.add_argument("--task", help=argparse.SUPPRESS)
    p.add_argument("--config", default="full", help=argparse.SUPPRESS)
    p.add_argument("--chunk", type=float, default=12.0, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, default=60.0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.task = args.worker
        print(json.dumps(worker(args)))
        return

    print(f"threads={args.threads}  (CPU s = user+system time of the process; with {args.threads} busy threads "
          f"and no competing load, wall ≈ CPU/{args.threads})")
    rows = []
    for chunk in args.chunks:
        for batch in args.batches:
            rows.append(run_worker(args.threads, "speed", chunk=chunk, batch=batch))
    if rows:
        print("\nMixFXcloner (full size) convert(), steady state")
        print(f"{'chunk s':>8} {'batch':>5} {'window':>9} {'overlap':>7} {'call s':>8} {'CPU s':>7} "
              f"{'s/audio s':>9} {'CPU s/audio s':>13} {'RSS before MiB':>14} {'peak RSS MiB':>12}")
        for r in rows:
            print(f"{r['chunk_s']:>8g} {r['batch']:>5} {r['window_samples']:>9} {r['overlap_factor']:>7.2f} "
                  f"{r['elapsed_s']:>8.1f} {r['cpu_s']:>7.1f} {r['s_per_audio_s']:>9.3f} "
                  f"{r['cpu_s_per_audio_s']:>13.3f} {r['rss_model_MiB']:>14.0f} {r['peak_rss_MiB']:>12.0f}")
    if args.embed_seconds > 0:
        r = run_worker(args.threads, "embed", seconds=args.embed_seconds, batch=4)
        print(f"\nFXencoder embed_reference(), {r['seconds']:g} s reference, batch 4: {r['elapsed_s']:.2f} s "
              f"(CPU {r['cpu_s']:.2f} s), "
              f"{r['s_per_audio_s']:.4f} s/audio s, RSS before {r['rss_model_MiB']:.0f} MiB, "
              f"peak {r['peak_rss_MiB']:.0f} MiB")
    rows = [run_worker(args.threads, "rss", config=args.rss_config, seconds=s, chunk=args.rss_chunk, batch=1)
            for s in args.rss_seconds]
    if rows:
        print(f"\nWhole convert(), cloner config {args.rss_config}, chunk {args.rss_chunk:g} s, batch 1")
        print(f"{'input s':>8} {'wall s':>8} {'CPU s':>8} {'s/audio s':>9} {'RSS before MiB':>14} {'peak RSS MiB':>12}")
        for r in rows:
            print(f"{r['seconds']:>8g} {r['elapsed_s']:>8.1f} {r['cpu_s']:>8.1f} {r['s_per_audio_s']:>9.3f} "
                  f"{r['rss_model_MiB']:>14.0f} {r['peak_rss_MiB']:>12.0f}")


if __name__ == "__main__":
    main()
