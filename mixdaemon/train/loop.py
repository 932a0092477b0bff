"""What the FXencoder, MixFXcloner and automix trainings share: seeds and determinism, devices, the
step-indexed batch stream, resumable checkpoints, the CSV log, progress reports and the summary of a
run that the model files exported from it record.

Reproducibility rests on one rule: the batch of update k is a pure function of (run seed, k) and of
the FX probabilities in force (which only change at validations and are checkpointed). Model,
optimizer, LR schedule and probabilities are saved together, so a run resumed from the checkpoint
of update k performs updates k+1… exactly as the uninterrupted run does, and its CSV log continues
the same loss curve (bit for bit on the same machine, thread count and device).
"""
from __future__ import annotations

import csv
import logging
import math
import os
import platform
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from mixdaemon import __version__
from mixdaemon.errors import ConfigError, MixdaemonError, ModelFileError
from mixdaemon.files import atomic_write
from mixdaemon.progress import Progress, no_progress

log = logging.getLogger("mixdaemon.train")

CHECKPOINT = "checkpoint.pt"
LOG = "log.csv"
CHECKPOINT_FORMAT = "mixdaemon-training-checkpoint"
TRAIN_STREAM, VALIDATION_STREAM = 0, 1  # seed streams: training batches never share draws with validation
LOG_FIELDS = ("step", "phase", "metric", "value", "seconds")


def configure_torch(seed: int, threads: int | None) -> None:
    """Seed torch (model initialisation), fix the thread count (float sums depend on it) and ask
    for deterministic kernels wherever torch has them. Also limits numpy's BLAS to one thread: the
    data pipeline only does small dot products with it, and on a busy machine OpenBLAS's spinning
    idle threads made batch making 6× slower and starved torch's threads."""
    threadpool_limits(limits=1, user_api="blas")
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(name: str) -> torch.device:
    """'auto' (CUDA if present, else CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r}: not a torch device (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {name}: MPS is not available on this machine")
    return device


def autocast(device: torch.device, precision: str):
    """bf16 autocast (fast on CPUs with AMX/AVX512-BF16 and on GPUs) or plain fp32. Weights and
    optimizer state stay fp32 either way, so the saved model runs in fp32."""
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"--precision {precision!r}: expected fp32 or bf16")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


# --- the batch stream -------------------------------------------------------------------------------

def step_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


class _StepBatches(torch.utils.data.Dataset):
    """Item k is make(rng of (seed, TRAIN_STREAM, k)): the batch of update k."""

    def __init__(self, make: Callable[[np.random.Generator], Any], seed: int):
        self.make, self.seed = make, seed

    def __len__(self) -> int:
        return 2 ** 62

    def __getitem__(self, step: int):
        return self.make(step_rng(self.seed, TRAIN_STREAM, step))


def _worker_init(_):
    # Data workers make audio with numpy/numba; a thread pool per worker would only compete.
    torch.set_num_threads(1)
    threadpool_limits(limits=1, user_api="blas")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle


def batches(make: Callable[[np.random.Generator], Any], seed: int, first: int, last: int,
            workers: int) -> Iterator[tuple[int, Any]]:
    """(k, batch of update k) for k in [first, last], made by `workers` processes ahead of use
    (0: in this process)."""
    steps = range(first, last + 1)
    if workers == 0:
        for k in steps:
            yield k, _StepBatches(make, seed)[k]
        return
    loader = torch.utils.data.DataLoader(
        _StepBatches(make, seed), batch_size=None, sampler=steps, num_workers=workers, prefetch_factor=2,
        worker_init_fn=_worker_init, multiprocessing_context="fork", collate_fn=lambda b: b)
    yield from zip(steps, loader)


# --- checkpoints and log ----------------------------------------------------------------------------

def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic torch.save: a crash mid-write leaves the previous checkpoint intact."""
    with atomic_write(path) as f:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, f)


def run_folder(run: str | os.PathLike) -> Path:
    """The folder of a run given by its folder or its checkpoint file."""
    run = Path(run)
    return run if run.is_dir() else run.parent


def run_summary(run: str | os.PathLike, kind: str, validation_metrics: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """(checkpoint, summary) of a run (its folder or checkpoint file). The summary is what a model
    file's training record says about the run: updates, wall seconds, settings and, when
    validation_metrics are named, their values at the checkpoint's step (log.csv; None where that
    step was not validated)."""
    state = load_checkpoint(run, kind)
    summary = {"steps": state["step"], "wall_seconds": round(state["elapsed_seconds"], 1), "config": state["config"]}
    if validation_metrics:
        summary["last_validation"] = {m: read_log(run_folder(run), "val", m).get(state["step"])
                                      for m in validation_metrics}
    return state, summary


def trained_with(commands: str) -> dict:
    """The software and machine a model was trained with, for its training record."""
    return {"trained_with": f"mixdaemon {__version__} ({commands})", "torch": torch.__version__,
            "machine": platform.processor() or platform.machine()}


def load_checkpoint(path: str | os.PathLike, kind: str | None = None) -> dict:
    """A training checkpoint (tensors and plain data only: read with weights_only=True)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise ModelFileError(f"{path}: no training checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFileError(f"{path}: not a readable training checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{path}: not a mixdaemon training checkpoint")
    if kind is not None and state.get("kind") != kind:
        raise ModelFileError(f"{path}: a {state.get('kind')} checkpoint, expected {kind}")
    return state


class CsvLog:
    """Long-format CSV (step, phase, metric, value, seconds): one row per number, so trainers log
    whatever they measure. Resuming from update k drops the rows after k, so the file of a resumed
    run reads like the uninterrupted run's."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        rows = []
        if resume_step is not None and path.is_file():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, step: int, phase: str, values: dict[str, float], seconds: float) -> None:
        with self.path.open("a", newline="") as f:
            writer = csv.writer(f)
            for metric, value in values.items():
                writer.writerow([step, phase, metric, f"{value:.9g}", f"{seconds:.1f}"])


def read_log(path: str | os.PathLike, phase: str = "train", metric: str = "loss") -> dict[int, float]:
    """{step: value} of one metric from a run's log.csv."""
    path = Path(path)
    if path.is_dir():
        path = path / LOG
    with path.open(newline="") as f:
        return {int(r["step"]): float(r["value"]) for r in csv.DictReader(f)
                if r["phase"] == phase and r["metric"] == metric}


# --- the loop ---------------------------------------------------------------------------------------

@dataclass
class LoopSettings:
    """How a run is carried out (not what it computes: that is the trainer's cfg)."""

    run_dir: Path
    validate_every: int = 100
    checkpoint_every: int = 100
    workers: int = 1
    resume: bool = False
    stop_after: int | None = None  # end this process after that update (checkpointed), e.g. for time slices
    progress: Progress = no_progress  # (stage, fraction of the run's updates done)


class Trainer:
    """The shared loop; subclasses define make_batch, train_step, validate and their state.

    Subclass contract:
    - kind: "encoder" | "cloner" | "automix"; cfg (a dataclass with .steps and .seed: the run's settings,
      which a resumed run must repeat), model, optimizer;
    - make_batch(rng) → batch (runs in data workers; must only read self);
    - train_step(batch) → {"loss": float, ...};
    - validate() → {metric: float}, may change what make_batch draws (probability scheduling);
    - extra_state() / load_extra_state(state): what else a checkpoint must hold.
    """

    kind = ""
    max_grad_norm: float | None = None  # clip the gradient's L2 norm to this before each update

    def __init__(self, loop: LoopSettings):
        if loop.validate_every < 1 or loop.checkpoint_every < 1:
            raise ConfigError("validate_every and checkpoint_every must be positive")
        self.loop = loop
        self.step = 0
        self.elapsed = 0.0  # wall seconds of this run over all its sessions (data waits included)
        self._saved_step = 0
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None

    def config(self) -> dict:
        """The run's settings as JSON data (checkpointed; a resumed run must repeat them)."""
        return asdict(self.cfg)

    # to override
    def make_batch(self, rng: np.random.Generator): raise NotImplementedError
    def train_step(self, batch) -> dict[str, float]: raise NotImplementedError
    def validate(self) -> dict[str, float]: raise NotImplementedError
    def extra_state(self) -> dict: return {}
    def load_extra_state(self, state: dict) -> None: pass

    def apply_gradients(self, loss: torch.Tensor) -> None:
        """One optimizer update from `loss`; refuses a non-finite loss or gradient before it can
        reach the weights (the last checkpoint stays usable)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        bad = [name for name, p in self.model.named_parameters()
               if p.grad is not None and not torch.isfinite(p.grad).all()]
        if not torch.isfinite(loss) or bad:
            where = f"gradient of {bad[0]}" if bad else "loss"
            raise MixdaemonError(f"{self.kind} training diverged at step {self.step + 1}: non-finite {where}; "
                                 f"resume from the checkpoint of step {self._saved_step} with --precision fp32 "
                                 "(bf16 CPU kernels have produced NaN gradients) or a lower --lr")
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.optimizer.step()

    def cosine_schedule(self, final_fraction: float) -> None:
        """LR multiplier from 1 down to final_fraction over the run (half a cosine)."""
        total = self.cfg.steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda k: final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * min(k, total) / total)))

    # checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.loop.run_dir / CHECKPOINT

    def save(self) -> None:
        self._saved_step = self.step
        save_checkpoint(self.checkpoint_path, {
            "kind": self.kind, "step": self.step, "elapsed_seconds": self.elapsed, "config": self.config(),
            "model_config": self.model.config.to_dict(), "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None, "extra": self.extra_state()})

    def _restore(self) -> None:
        state = load_checkpoint(self.checkpoint_path, self.kind)
        if state["config"] != self.config():
            changed = sorted(k for k in set(state["config"]) | set(self.config())
                             if state["config"].get(k) != self.config().get(k))
            raise ConfigError(f"{self.checkpoint_path}: cannot resume with different settings ({', '.join(changed)}); "
                              "repeat the original command with --resume")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.elapsed = int(state["step"]), float(state["elapsed_seconds"])
        self._saved_step = self.step
        self.load_extra_state(state["extra"])

    # the loop
    def run(self) -> None:
        loop, steps, seed = self.loop, self.cfg.steps, self.cfg.seed
        if steps < 1:
            raise ConfigError(f"steps {steps}: must be positive")
        loop.run_dir.mkdir(parents=True, exist_ok=True)
        if loop.resume:
            self._restore()
        elif self.checkpoint_path.exists():
            raise ConfigError(f"{self.checkpoint_path}: the run folder holds a run already; pass --resume to "
                              "continue it, or choose another --run-dir")
        csv_log = CsvLog(loop.run_dir / LOG, self.step if loop.resume else None)
        last = min(steps, loop.stop_after) if loop.stop_after is not None else steps
        loop.progress(f"{self.kind} step {self.step}", self.step / steps)
        smoothed = None
        clock, base = time.perf_counter(), self.elapsed

        def now() -> float:
            return base + time.perf_counter() - clock
        try:
            while self.step < last:
                # One batch stream per stretch between validations: a validation may change the
                # FX probabilities that the workers draw with.
                until = min(last, (self.step // loop.validate_every + 1) * loop.validate_every)
                for k, batch in batches(self.make_batch, seed, self.step + 1, until, loop.workers):
                    self.model.train()
                    values = self.train_step(batch)
                    if self.scheduler is not None:
                        self.scheduler.step()
                    self.step, self.elapsed = k, now()
                    values["lr"] = self.optimizer.param_groups[0]["lr"]
                    csv_log.write(k, "train", values, self.elapsed)
                    smoothed = values["loss"] if smoothed is None else 0.9 * smoothed + 0.1 * values["loss"]
                    loop.progress(f"{self.kind} loss {smoothed:.4f}", k / steps)
                    if k % loop.checkpoint_every == 0 and k % loop.validate_every != 0:
                        self.save()
                if self.step % loop.validate_every == 0 or self.step == steps:
                    self.model.eval()
                    with torch.no_grad():
                        metrics = self.validate()
                    self.elapsed = now()
                    csv_log.write(self.step, "val", metrics, self.elapsed)
                    log.info("%s step %d: %s", self.kind, self.step,
                             ", ".join(f"{m} {v:.4f}" for m, v in metrics.items()))
                self.save()
        except KeyboardInterrupt:
            log.warning("interrupted: the checkpoint of step %d is in %s (continue with --resume)",
                        self._saved_step, self.checkpoint_path)
            raise
