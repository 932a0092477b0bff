"""Reproduce the shipped default model pair, engines/default.safetensors, and check its speed budget.

Stages (each one resumes where an interrupted run stopped; rerunning a finished stage is a no-op):

  material  64 training songs (seed 0) and 8 validation songs (seed 1), 30 s each, rendered with
            FluidSynth + FluidR3_GM (apt-get install fluidsynth fluid-soundfont-gm), see
            mixdaemon/train/material.py
  encoder   `mixdaemon train encoder` with ENCODER_ARGS
  cloner    `mixdaemon train cloner` with CLONER_ARGS (the paper's FXmanipulator pairs), written
            as WORK/runs/cloner/model.safetensors
  tune      `mixdaemon train cloner` with TUNE_ARGS: that cloner fine-tuned on pairs of both
            families (the FXmanipulator and train/effects.py's pedalboard mixing chains), exported
            into the model store as "default" (engines/MODEL_CARD.md)
  speed     the neural engine converting a 3-minute 4-stem song (the project's numpy synth) with a
            3-minute reference on --backend (default: auto, the fastest CPU path) with --threads
            threads: wall and CPU seconds vs real time

Run in the background and poll (about an hour on a busy 2-core machine):
  nohup .venv/bin/python benchmarks/train_default.py --work WORK > train.log 2>&1 &
  .venv/bin/python benchmarks/train_default.py --work WORK --stages speed
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MATERIAL = {"train": {"songs": 64, "seed": 0}, "val": {"songs": 8, "seed": 1}}
MATERIAL_SECONDS = 30.0
ENCODER_ARGS = ["--size", "small", "--steps", "300", "--items", "8", "--segment", "32768", "--lr", "1e-3",
                "--lr-final", "0.1", "--precision", "fp32", "--no-mixture", "--validation-items", "4",
                "--validate-every", "100", "--checkpoint-every", "20", "--seed", "0"]
CLONER_ARGS = ["--size", "small", "--steps", "600", "--items", "1", "--segment", "65536", "--lr", "1e-3",
               "--lr-final", "0.1", "--precision", "fp32", "--validation-items", "2",
               "--validate-every", "100", "--checkpoint-every", "20", "--seed", "0"]
TUNE_ARGS = ["--fx-family", "both", "--steps", "800", "--items", "1", "--segment", "65536", "--lr", "5e-4",
             "--lr-final", "0.1", "--validation-items", "2", "--validate-every", "100", "--checkpoint-every", "20",
             "--seed", "1"]
SPEED_SECONDS = 180.0


def _train(argv: list[str]) -> None:
    from mixdaemon.cli.main import build_parser
    args = build_parser(["train", *argv]).parse_args(["train", *argv])
    args.func(args)


def stage_material(work: Path) -> None:
    from mixdaemon.train.material import make_material
    for part, spec in MATERIAL.items():
        make_material(work / "material" / part, spec["songs"], MATERIAL_SECONDS, spec["seed"], renderer="fluidsynth",
                      progress=lambda done, total, p=part: print(f"material {p}: {done}/{total}", flush=True))


def _run(work: Path, kind: str, argv: list[str], threads: int, run_name: str | None = None) -> None:
    run_dir = work / "runs" / (run_name or kind)
    resume = ["--resume"] if (run_dir / "checkpoint.pt").is_file() else []
    _train([kind, str(work / "material" / "train"), "--val-dir", str(work / "material" / "val"),
            "--run-dir", str(run_dir), "--threads", str(threads), "--workers", "1", *argv, *resume])


def stage_encoder(work: Path, threads: int) -> None:
    _run(work, "encoder", ENCODER_ARGS, threads)


def stage_cloner(work: Path, threads: int) -> None:
    _run(work, "cloner", [*CLONER_ARGS, "--encoder", str(work / "runs" / "encoder")], threads)


def stage_tune(work: Path, threads: int) -> None:
    _run(work, "cloner", [*TUNE_ARGS, "--encoder", str(work / "runs" / "encoder"),
                          "--init", str(work / "runs" / "cloner" / "model.safetensors"), "--name", "default"],
         threads, run_name="tune")


def stage_speed(threads: int, backend: str = "auto", model: str = "default") -> dict:
    """Wall and CPU time of NeuralEngine.convert on a SPEED_SECONDS 4-stem song."""
    import torch

    from mixdaemon.audio.examples import synth_song
    from mixdaemon.fx.stats import FxStats, default_stats_path
    from mixdaemon.mixing.neural import NeuralEngine
    from mixdaemon.nets.backends import create_backend
    from mixdaemon.nets.store import load_pair
    torch.set_num_threads(threads)
    song, reference = synth_song(SPEED_SECONDS, seed=0), synth_song(SPEED_SECONDS, seed=1)
    encoder, cloner, info = load_pair(model)
    backend = create_backend(backend, encoder, cloner, info, threads=threads)  # exports ONNX once, before timing
    engine = NeuralEngine(backend, info, FxStats.load(default_stats_path("mst")))
    stages: dict[str, float] = {}
    current = {"stage": "start", "since": time.perf_counter()}

    def progress(stage: str, fraction: float) -> None:
        # time since the last report belongs to the stage that was running ("converting drums" → converting)
        now = time.perf_counter()
        stages[current["stage"]] = stages.get(current["stage"], 0.0) + now - current["since"]
        current.update(stage=stage.split(" ")[0], since=now)

    wall, cpu = time.perf_counter(), time.process_time()
    engine.convert(song, reference, progress=progress)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    progress("end", 1.0)
    result = {"model": model, "backend": backend.describe(), "song_seconds": SPEED_SECONDS, "stems": 4, "threads": threads,
              "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
              "realtime_factor_wall": round(wall / SPEED_SECONDS, 3),
              "cloner_parameters": sum(p.numel() for p in cloner.parameters()),
              "encoder_parameters": sum(p.numel() for p in encoder.parameters()),
              "file_mib": round(info.path.stat().st_size / 2 ** 20, 2),
              "seconds_per_stage": {k: round(v, 1) for k, v in stages.items() if k != "start"}}
    print(json.dumps(result, indent=1))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="folder for material/ and runs/ (outside the repository)")
    parser.add_argument("--stages", nargs="+", default=["material", "encoder", "cloner", "tune", "speed"],
                        choices=["material", "encoder", "cloner", "tune", "speed"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime", "tensorrt"])
    args = parser.parse_args()
    work = Path(args.work).resolve()
    for stage in args.stages:
        started = time.perf_counter()
        if stage == "material":
            stage_material(work)
        elif stage == "encoder":
            stage_encoder(work, args.threads)
        elif stage == "cloner":
            stage_cloner(work, args.threads)
        elif stage == "tune":
            stage_tune(work, args.threads)
        else:
            stage_speed(args.threads, args.backend)
        print(f"stage {stage}: {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
