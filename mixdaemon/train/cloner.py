"""MixFXcloner training (docs/ALGORITHMS.md §4) against a frozen FXencoder, and export of the pair.

Each update draws §4.2 triplets per stem (`data.cloner_batch`): input A1 = normalized A, target A2
= manipulated A, reference B2 = the same manipulation of other content B. The manipulation is the
FXmanipulator's (the paper's), the mixing chains of train/effects.py, or either by a coin
(`fx_family`). The frozen encoder (eval mode, no gradient; an encoder run or a model pair's) embeds
B2; the cloner maps A1 under that embedding; the loss is L_MSS(L/R) + L_MSS(M/S) (§4.3 [I]), the
two quantities of Table 2. One cloner serves all stems. A run starts from the identity
(`identity_init`) or from a model pair's cloner (`init`: fine-tuning a shipped model on another
family).

Validation: a fixed set of triplets from held-out songs (default FX probabilities), scored with
the same losses and as ratios to the identity (y = A1), the number `mixdaemon evaluate` reports on
real songs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mixdaemon.audio.metrics import mss_loss_lr, mss_loss_ms
from mixdaemon.errors import ConfigError
from mixdaemon.nets.mst import ClonerConfig, MixFXcloner
from mixdaemon.nets.store import PairInfo, load_pair, save_pair, weights_sha256
from mixdaemon.train import loop as training_loop
from mixdaemon.train.data import ClonerBatch, StemLibrary, cloner_batch, manipulators
from mixdaemon.train.effects import TrainingFx
from mixdaemon.train.encoder import load_trained_encoder
from mixdaemon.train.loop import VALIDATION_STREAM, LoopSettings, Trainer, autocast, step_rng
from mixdaemon.train.material import material_settings

CLONER_PRESETS = {  # cond_dim always comes from the encoder
    "tiny": {"nblocks": 3, "channel_width": 4, "kernel_size": 3, "dilation_growth": 2},
    # the shipped default (engines/MODEL_CARD.md): receptive field 0.5 s, 61 k parameters
    "small": {"nblocks": 7, "channel_width": 24, "kernel_size": 5, "dilation_growth": 4},
    "full": {k: v for k, v in ClonerConfig().to_dict().items() if k != "cond_dim"},
}


@dataclass
class ClonerTrainingConfig:
    """What a run is; a resumed run must repeat it (device, threads and workers may change)."""

    encoder: str = ""                   # the encoder run (folder or checkpoint file), or a model pair
    encoder_sha256: str = ""            # its weights, so a retrained encoder cannot sneak into a resume
    model: dict = field(default_factory=lambda: dict(CLONER_PRESETS["small"]))
    steps: int = 2000
    items_per_stem: int = 2
    segment: int = 2 ** 16              # L
    lr: float = 1e-4
    lr_final_fraction: float = 1.0
    identity_init: bool = True          # start as y = x (see identity_init)
    validation_items: int = 4           # per stem
    precision: str = "fp32"
    seed: int = 0
    fx_family: str = "fxmanipulator"    # what mixes targets and references (train/effects.py)
    init: str = ""                      # a model pair whose cloner the run starts from (fine-tuning)


def identity_init(model: MixFXcloner) -> None:
    """Start the cloner as the identity: every block's residual path passes its input through
    (block 0 copies the left channel into the first half of the channels and the right channel into
    the second half), FiLM starts at γ = β = 0 so no processed branch is added yet, and the output
    layer averages each half back to its channel. Training then learns corrections to the input
    instead of first rebuilding the input from noise, which on a CPU budget of a few hundred
    updates decides whether the model ends up better or worse than doing nothing."""
    width = model.config.channel_width
    with torch.no_grad():
        for block in model.blocks:
            block.res.weight.fill_(1.0)
            block.film.film_fc.weight.zero_()
            block.film.film_fc.bias.zero_()
        model.output.weight.zero_()
        model.output.bias.zero_()
        half = width // 2
        model.output.weight[0, :half, 0] = 1.0 / half
        model.output.weight[1, half:, 0] = 1.0 / half


def training_fx(family: str, ir_folder=None) -> dict[str, TrainingFx]:
    """Per stem, what mixes a run's targets and references (train/effects.py)."""
    return {stem: TrainingFx(fx, family) for stem, fx in manipulators(None, ir_folder).items()}


def _loss(y: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = y.float()
    return mss_loss_lr(y, target), mss_loss_ms(y, target)


class ClonerTrainer(Trainer):
    kind = "cloner"

    def __init__(self, cfg: ClonerTrainingConfig, train: StemLibrary, validation: StemLibrary,
                 loop: LoopSettings, device: torch.device, ir_folder=None):
        super().__init__(loop)
        self.cfg, self.train_library, self.device = cfg, train, device
        self.encoder, self.encoder_summary = load_trained_encoder(cfg.encoder, device)
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        sha = weights_sha256(self.encoder.state_dict())
        if cfg.encoder_sha256 and cfg.encoder_sha256 != sha:
            raise ConfigError(f"{cfg.encoder}: the encoder's weights changed since this cloner run started "
                              f"(sha256 {sha[:12]}…, the run used {cfg.encoder_sha256[:12]}…)")
        cfg.encoder_sha256 = sha
        if cfg.init:
            _, start, _ = load_pair(cfg.init)
            if start.config.cond_dim != self.encoder.config.embedding_dim:
                raise ConfigError(f"{cfg.init}: its cloner takes {start.config.cond_dim}-d embeddings, the encoder "
                                  f"gives {self.encoder.config.embedding_dim}-d")
            cfg.model = {k: v for k, v in start.config.to_dict().items() if k != "cond_dim"}
        model_config = ClonerConfig.from_dict({**cfg.model, "cond_dim": self.encoder.config.embedding_dim})
        self.model = MixFXcloner(model_config).to(device)
        if cfg.init:
            self.model.load_state_dict(start.state_dict())  # a resumed run then loads its checkpoint over it
        elif cfg.identity_init:
            identity_init(self.model)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        if cfg.lr_final_fraction < 1.0:
            self.cosine_schedule(cfg.lr_final_fraction)
        self.fx = training_fx(cfg.fx_family, ir_folder)
        self.validation_set = cloner_batch(validation, training_fx(cfg.fx_family, ir_folder),
                                           step_rng(cfg.seed, VALIDATION_STREAM, 0), cfg.validation_items, cfg.segment)
        with torch.no_grad():
            self.validation_embedding = self._embed(self.validation_set.reference)
            lr, ms = _loss(self.validation_set.input, self.validation_set.target)
        self.identity = {"lr": float(lr), "ms": float(ms)}

    def _embed(self, reference: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(self.device, self.cfg.precision):
            return self.encoder(reference.to(self.device)).float()

    def make_batch(self, rng: np.random.Generator) -> ClonerBatch:
        return cloner_batch(self.train_library, self.fx, rng, self.cfg.items_per_stem, self.cfg.segment)

    def train_step(self, batch: ClonerBatch) -> dict[str, float]:
        embedding = self._embed(batch.reference)
        with autocast(self.device, self.cfg.precision):
            y = self.model(batch.input.to(self.device), embedding)
        lr, ms = _loss(y, batch.target.to(self.device))
        loss = lr + ms
        self.apply_gradients(loss)
        return {"loss": loss.item(), "lr_loss": lr.item(), "ms_loss": ms.item()}

    def validate(self) -> dict[str, float]:
        batch = self.validation_set
        with autocast(self.device, self.cfg.precision):
            y = self.model(batch.input.to(self.device), self.validation_embedding)
        lr, ms = _loss(y, batch.target.to(self.device))
        return {"loss": float(lr + ms), "lr_loss": float(lr), "ms_loss": float(ms),
                "ratio_lr": float(lr) / self.identity["lr"], "ratio_ms": float(ms) / self.identity["ms"]}


def _material_summary(library: StemLibrary) -> dict:
    summary = {"songs_dir": str(library.songs_dir.resolve()), "songs": len(library.songs),
               "seconds_per_stem_after_trimming": {s: round(library.seconds(s), 1) for s in library.files}}
    material = material_settings(library.songs_dir, ("generator", "renderer", "seed", "seconds", "soundfont"))
    if material is not None:
        summary["material"] = material
    return summary


def export_pair(cloner_run, out: str | Path, train_library: StemLibrary | None = None,
                notes: dict | None = None) -> PairInfo:
    """Write the pair (the run's encoder + its cloner checkpoint) as one model file with its
    training record: both runs' settings, steps, wall time and last validation numbers."""
    state, cloner_summary = training_loop.run_summary(cloner_run, "cloner", ("ratio_lr", "ratio_ms", "loss"))
    cfg = state["config"]
    encoder, encoder_summary = load_trained_encoder(cfg["encoder"])
    cloner = MixFXcloner(ClonerConfig.from_dict(state["model_config"]))
    cloner.load_state_dict(state["model"])
    run_dir = training_loop.run_folder(cloner_run)
    training = {
        **training_loop.trained_with("mixdaemon train encoder / cloner"),
        "encoder": encoder_summary,
        "cloner": cloner_summary,
        "data": _material_summary(train_library) if train_library is not None else None,
        **(notes or {}),
    }
    encoder_provenance = ({"source": "trained by mixdaemon train encoder",
                           "run": str(training_loop.run_folder(cfg["encoder"]).resolve())}
                          if "model_pair" not in encoder_summary else
                          {"source": f"the encoder of model pair {encoder_summary['model_pair']}",
                           "path": encoder_summary["path"]})
    cloner_provenance = {"source": "trained by mixdaemon train cloner", "run": str(run_dir.resolve()),
                         "encoder_sha256": weights_sha256(encoder.state_dict())}
    return save_pair(out, encoder, cloner.eval(), encoder_provenance=encoder_provenance,
                     cloner_provenance=cloner_provenance, training=training)
