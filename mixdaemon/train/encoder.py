"""Contrastive FXencoder training (docs/ALGORITHMS.md §3.3) with FX probability scheduling (§2.4).

Each update draws a batch of §3.2 pairs (`data.encoder_batch`): per group (the four stems and the
mixture of a row's four stems), row (i, m) of view A and of view B carry the same FX draw on
different content, and rows m ≠ m′ of item i carry different draws on the same content (strong
negatives). The loss is NT-Xent (SimCLR) with temperature τ over the 2N embeddings of a group,
averaged over the groups.

Validation uses fixed sets from held-out songs: "full" (default probabilities) and one set per FX in
which only that FX fires (eq, comp, pan, imager, reverb, gain). It reports each set's NT-Xent loss
and the full set's top-1 retrieval accuracy (the positive is the nearest of the 2N−1 others). With
scheduling on, the single-FX losses set the next stretch's probabilities,
p_f = clip(0.1 + 0.8·(ℓ_f − min ℓ)/(max ℓ − min ℓ), 0.1, 0.9) (fx/manipulator.py's schedule_from_losses):
the FX the encoder tells apart worst fire most often.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mixdaemon.errors import ConfigError
from mixdaemon.fx.manipulator import FX_NAMES, FXManipulator, schedule_from_losses
from mixdaemon.nets.mst import EncoderConfig, FXencoder
from mixdaemon.nets.store import load_pair
from mixdaemon.train.data import (
    STEMS,
    EncoderBatch,
    StemLibrary,
    encoder_batch,
    manipulators,
)
from mixdaemon.train.loop import (
    VALIDATION_STREAM,
    LoopSettings,
    Trainer,
    autocast,
    run_summary,
    step_rng,
)

ENCODER_PRESETS = {
    # tests: embedding 32, stride 512, ~20 k parameters
    "tiny": EncoderConfig(channels=(4, 8, 16, 32), kernels=(9, 9, 5, 5), strides=(8, 8, 4, 2)),
    # the shipped default (engines/MODEL_CARD.md): embedding 128, stride 1024, 0.48 M parameters (1.9 MB)
    "small": EncoderConfig(channels=(16, 32, 64, 128, 128, 128), kernels=(25, 15, 9, 9, 5, 5),
                           strides=(8, 4, 4, 4, 2, 1)),
    "full": EncoderConfig(),  # the authors' size: embedding 2048, 81 M parameters
}
VALIDATION_SETS = ("full", *FX_NAMES)


@dataclass
class EncoderTrainingConfig:
    """What a run is; a resumed run must repeat it (device, threads and workers may change)."""

    model: dict = field(default_factory=lambda: ENCODER_PRESETS["small"].to_dict())
    steps: int = 2000
    items: int = 8                      # contents per batch (each gives K+1 rows)
    segment: int = 2 ** 16              # L: manipulated length; crops are U[L/2, L)
    strong_negatives: int = 1           # K
    temperature: float = 0.1
    lr: float = 2e-4
    lr_final_fraction: float = 1.0      # < 1: cosine decay of the LR to this fraction
    mixture: bool = True                # also contrast the sum of a row's four stems
    schedule: bool = True               # §2.4 probability scheduling at each validation
    validation_items: int = 8
    precision: str = "fp32"
    seed: int = 0


def nt_xent(z_i: torch.Tensor, z_j: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent of positive pairs (z_i[k], z_j[k]) against every other of the 2N embeddings:
    (loss = cross-entropy summed over the 2N anchors / 2N, top-1 accuracy of the positive)."""
    z = F.normalize(torch.cat([z_i, z_j]).float(), dim=1)
    n = z_i.shape[0]
    similarity = (z @ z.T) / temperature
    similarity = similarity.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    loss = F.cross_entropy(similarity, positives, reduction="sum") / (2 * n)
    accuracy = (similarity.argmax(dim=1) == positives).float().mean()
    return loss, accuracy


class EncoderTrainer(Trainer):
    kind = "encoder"

    def __init__(self, cfg: EncoderTrainingConfig, train: StemLibrary, validation: StemLibrary,
                 loop: LoopSettings, device: torch.device, ir_folder=None):
        super().__init__(loop)
        self.cfg, self.train_library, self.device, self.ir_folder = cfg, train, device, ir_folder
        self.model = FXencoder(EncoderConfig.from_dict(cfg.model)).to(device)
        if cfg.segment // 2 < self.model.config.min_input_length:
            raise ConfigError(f"segment {cfg.segment}: crops of half of it are shorter than the encoder's minimum "
                              f"input {self.model.config.min_input_length}")
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        if cfg.lr_final_fraction < 1.0:
            self.cosine_schedule(cfg.lr_final_fraction)
        self.probabilities: dict[str, float] = {}  # base probabilities; empty = the FXmanipulator's defaults
        self.fx = manipulators(self.probabilities, ir_folder)
        self.validation_sets = self._validation_sets(validation)

    def _validation_sets(self, library: StemLibrary) -> dict[str, EncoderBatch]:
        sets = {}
        for index, name in enumerate(VALIDATION_SETS):
            fx = manipulators(None, self.ir_folder) if name == "full" else \
                {stem: FXManipulator(stem, ir_folder=self.ir_folder, single_fx=name) for stem in STEMS}
            sets[name] = encoder_batch(library, fx, step_rng(self.cfg.seed, VALIDATION_STREAM, index),
                                       self.cfg.validation_items, self.cfg.segment, self.cfg.strong_negatives,
                                       self.cfg.mixture)
        return sets

    def make_batch(self, rng: np.random.Generator) -> EncoderBatch:
        return encoder_batch(self.train_library, self.fx, rng, self.cfg.items, self.cfg.segment,
                             self.cfg.strong_negatives, self.cfg.mixture)

    def _losses(self, batch: EncoderBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean NT-Xent and accuracy over the groups; every group's view A goes through the encoder
        in one call, and every view B in another (the views of a batch share their lengths)."""
        groups = list(batch.views)
        with autocast(self.device, self.cfg.precision):
            z_a = self.model(torch.cat([batch.views[g][0] for g in groups]).to(self.device))
            z_b = self.model(torch.cat([batch.views[g][1] for g in groups]).to(self.device))
        losses, accuracies = zip(*(nt_xent(a, b, self.cfg.temperature)
                                   for a, b in zip(z_a.chunk(len(groups)), z_b.chunk(len(groups)))))
        return torch.stack(losses).mean(), torch.stack(accuracies).mean()

    def train_step(self, batch: EncoderBatch) -> dict[str, float]:
        loss, accuracy = self._losses(batch)
        self.apply_gradients(loss)
        return {"loss": loss.item(), "accuracy": accuracy.item()}

    def validate(self) -> dict[str, float]:
        metrics = {}
        for name, batch in self.validation_sets.items():
            loss, accuracy = self._losses(batch)
            metrics["loss" if name == "full" else f"loss_{name}"] = float(loss)
            if name == "full":
                metrics["accuracy"] = float(accuracy)
        if self.cfg.schedule:
            self.probabilities = schedule_from_losses({fx: metrics[f"loss_{fx}"] for fx in FX_NAMES})
            self.fx = manipulators(self.probabilities, self.ir_folder)
            metrics.update({f"p_{fx}": p for fx, p in self.probabilities.items()})
        return metrics

    def extra_state(self) -> dict:
        return {"probabilities": dict(self.probabilities)}

    def load_extra_state(self, state: dict) -> None:
        self.probabilities = dict(state["probabilities"])
        self.fx = manipulators(self.probabilities, self.ir_folder)


def load_trained_encoder(path, device: str | torch.device = "cpu") -> tuple[FXencoder, dict]:
    """The FXencoder of an encoder run (its folder or checkpoint file), or of a model pair (a store
    name or a .safetensors file: a cloner is then trained for a shipped encoder), eval mode, and a
    summary of its training for provenance records."""
    if not (Path(path).is_dir() or Path(path).suffix == ".pt"):
        encoder, _, info = load_pair(path, device=device)
        return encoder, {"model_pair": info.name, "path": str(info.path), "weights_sha256": info.encoder.weights_sha256,
                         "training": (info.training or {}).get("encoder")}
    state, summary = run_summary(path, "encoder")
    model = FXencoder(EncoderConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model"])
    summary["final_probabilities"] = state["extra"]["probabilities"]
    return model.to(device).eval(), summary
