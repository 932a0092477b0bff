"""The training runs behind `mixdaemon train` (cli/train.py), which tests and scripts also call
directly: `train_encoder`, `train_cloner`, `train_automix` (train.params.train_params for the param
engine's predictor).

Every run keeps RUN_DIR/checkpoint.pt (model, optimizer, LR schedule, FX probabilities, step) and
RUN_DIR/log.csv (step, phase, metric, value, seconds); `loop.resume` continues a run exactly.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from mixdaemon.fx.stats import default_stats_path
from mixdaemon.nets.repo import store_dir
from mixdaemon.progress import Progress, no_progress, span

PREPARING = 0.1  # of a run's progress: normalizing the songs into the cache (slow once, then read back)


def training_libraries(songs_dir, val_dir, cache_dir, stats, seed, progress: Progress = no_progress,
                       flavour: str = "mst", library_class=None):
    """(training, validation) libraries, normalized with `stats` or the shipped statistics of
    `flavour`; library_class: data.StemLibrary (default) or another with its constructor."""
    from mixdaemon.train.data import StemLibrary, libraries
    return libraries(songs_dir, val_dir, stats or default_stats_path(flavour), cache_dir, seed, progress,
                     library_class=library_class or StemLibrary)


def _phases(loop):
    """(progress of preparing the libraries, the loop settings whose progress is the training's):
    one bar over the whole run, so that it keeps moving forward."""
    return (span(loop.progress, 0.0, PREPARING),
            dataclasses.replace(loop, progress=span(loop.progress, PREPARING, 1.0 - PREPARING)))


def _run_and_export(trainer, train, loop, out, export) -> Path:
    """Run the trainer; at its last step write the model with export(run_dir, out, train) to `out`
    (default: <run_dir>/model.safetensors) and return that path, else the checkpoint's."""
    trainer.run()
    if trainer.step < trainer.cfg.steps:
        return trainer.checkpoint_path
    out = Path(out) if out else loop.run_dir / "model.safetensors"
    export(loop.run_dir, out, train)
    return out


def train_encoder(cfg, songs_dir, loop, *, val_dir=None, cache_dir=None, stats=None, device: str = "auto",
                  threads: int | None = None, ir_folder=None) -> Path:
    """Train (or with loop.resume, continue) an FXencoder (cfg: EncoderTrainingConfig, loop:
    LoopSettings); returns the checkpoint path."""
    from mixdaemon.train.encoder import EncoderTrainer
    from mixdaemon.train.loop import configure_torch, resolve_device
    configure_torch(cfg.seed, threads)
    preparing, loop = _phases(loop)
    train, validation = training_libraries(songs_dir, val_dir, cache_dir, stats, cfg.seed, preparing)
    trainer = EncoderTrainer(cfg, train, validation, loop, resolve_device(device), ir_folder)
    trainer.run()
    return trainer.checkpoint_path


def train_cloner(cfg, songs_dir, loop, *, val_dir=None, cache_dir=None, stats=None, device: str = "auto",
                 threads: int | None = None, ir_folder=None, out: str | Path | None = None) -> Path:
    """Train (or continue) a MixFXcloner on cfg.encoder's embeddings (cfg: ClonerTrainingConfig).
    When the run reaches its last step, the pair is written to `out` (default:
    <run_dir>/model.safetensors) and that path returned; the checkpoint path when the run stopped
    early (loop.stop_after)."""
    from mixdaemon.train.cloner import ClonerTrainer, export_pair
    from mixdaemon.train.loop import configure_torch, resolve_device
    configure_torch(cfg.seed, threads)
    preparing, loop = _phases(loop)
    train, validation = training_libraries(songs_dir, val_dir, cache_dir, stats, cfg.seed, preparing)
    trainer = ClonerTrainer(cfg, train, validation, loop, resolve_device(device), ir_folder)
    return _run_and_export(trainer, train, loop, out, export_pair)


def train_automix(cfg, songs_dir, loop, *, val_dir=None, cache_dir=None, stats=None, device: str = "auto",
                  threads: int | None = None, out: str | Path | None = None) -> Path:
    """Train (or continue) an automix network (cfg: AutomixTrainingConfig) on FX-normalized stems
    with the original mixes as targets. When the run reaches its last step, the model is written to
    `out` (default: <run_dir>/model.safetensors) and that path returned; the checkpoint path when
    the run stopped early (loop.stop_after)."""
    from mixdaemon.train.automix import AutomixTrainer, MultitrackLibrary, export_automix_model
    from mixdaemon.train.loop import configure_torch, resolve_device
    configure_torch(cfg.seed, threads)
    preparing, loop = _phases(loop)
    train, validation = training_libraries(songs_dir, val_dir, cache_dir, stats, cfg.seed, preparing, "fxnorm",
                                           functools.partial(MultitrackLibrary, ir_folder=cfg.ir_folder))
    trainer = AutomixTrainer(cfg, train, validation, loop, resolve_device(device))
    return _run_and_export(trainer, train, loop, out, export_automix_model)


def store_path(name: str, store: str | Path | None = None) -> Path:
    """Where a trained model named `name` goes in the model store."""
    return store_dir(store) / f"{name}.safetensors"
