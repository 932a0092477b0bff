"""FxNorm-automix training (docs/ALGORITHMS.md §6.4): FX-normalized wet stems in, the original mix out.

`MultitrackLibrary` turns a folder of songs (MUSDB18 layout: song/{drums,bass,other,vocals}.wav,
optionally song/mixture.wav) into aligned network inputs and targets, computed once and cached as
``<cache>/<song>/inputs_normalized_fxnorm.npy`` (the 8-channel network input) and ``mix.npy``
(memory-mapped when read). Inputs are the stems FX-normalized exactly as `mixdaemon automix`
normalizes them (mixing/automix.py's normalize_for_automix); the target is the song's mixture.wav when present, else the sum of
its (wet) stems. Unlike the MST library, nothing is silence-trimmed: stems and mix must stay
sample-aligned. The cache is keyed on the statistics file's sha256, the order and the seed.

Each training example is an excerpt with one start for all tracks of a song (song and start drawn
uniformly); past the song's end it wraps around, a song shorter than the excerpt is zero-padded
(§6.4). Batches are pure functions of the (run seed, step) Generator, so --resume continues the
same loss curve.

Optimizer as §6.4 (Adam with AMSGrad, weight decay 1e-7, gradient norm clipped to 0.2); loss La or
Lb (§6.3). Validation scores a fixed set of excerpts of held-out songs, also as a ratio to the
loss of the "sum of normalized stems" baseline (below 1: the model is closer to the original mix).

With `ir_folder`, vocals and other get the reverb normalization of §1.7 first (fx/normalization.py's
ReverbNormalization, as `mixdaemon automix --ir-folder` applies it). Not implemented: the
"prereverb" of dry inputs, the pre-training stage, and AMP.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mixdaemon.audio.dsp import WORKING_RATE
from mixdaemon.audio.io import read_audio
from mixdaemon.audio.stems import load_song
from mixdaemon.errors import ConfigError
from mixdaemon.files import atomic_write, file_sha256
from mixdaemon.fx.normalization import ReverbNormalization
from mixdaemon.fx.stats import FxStats
from mixdaemon.mixing.automix import (
    NORMALIZE_ORDER,
    network_input,
    normalize_for_automix,
)
from mixdaemon.nets.automix import (
    ARCHITECTURES,
    AUTOMIX_PRESETS,
    INPUT_STEMS,
    automix_loss,
    build_model,
    min_loss_length,
    model_context,
)
from mixdaemon.nets.store import AutomixModelInfo, save_automix_model
from mixdaemon.progress import Progress, no_progress
from mixdaemon.train import loop as training_loop
from mixdaemon.train.data import cached_songs, song_folders
from mixdaemon.train.loop import VALIDATION_STREAM, LoopSettings, Trainer, autocast, step_rng
from mixdaemon.train.material import material_settings

CACHE_FORMAT = 1
CACHE_MANIFEST = "automix-cache.json"
TARGET_FILE = "mix.npy"
SEGMENT = 132_288  # 3 s, a multiple of 64: the paper's pre-training excerpt (its full models use 10 s)


def model_presets(architecture: str) -> dict:
    """The size presets (tiny, small, full) of an automix architecture's model config."""
    return ARCHITECTURES[architecture][2]


@dataclass
class AutomixTrainingConfig:
    """What a run is; a resumed run must repeat it (device, threads and workers may change)."""

    architecture: str = "automix"       # or "wave-u-net"
    model: dict = field(default_factory=lambda: AUTOMIX_PRESETS["small"].to_dict())
    loss: str = "Lb"
    steps: int = 1000
    batch: int = 2
    segment: int = SEGMENT
    lr: float = 1e-3
    lr_final_fraction: float = 1.0
    weight_decay: float = 1e-7
    grad_clip: float = 0.2
    validation_items: int = 8
    precision: str = "fp32"
    stats_sha256: str = ""              # the FX-normalization statistics of the inputs
    ir_folder: str | None = None        # impulse responses for the reverb normalization (§1.7)
    seed: int = 0


class MultitrackLibrary:
    """Aligned normalized stems and original mixes of a folder of songs (see the module docstring).
    Same constructor as data.StemLibrary, so data.libraries builds either."""

    def __init__(self, songs_dir: str | Path, stats_path: str | Path, cache_dir: str | Path | None = None,
                 seed: int = 0, songs: list[str] | None = None, progress: Progress = no_progress,
                 ir_folder: str | Path | None = None):
        self.songs_dir = Path(songs_dir)
        self.stats_path = Path(stats_path)
        self.cache_dir = Path(cache_dir) if cache_dir else self.songs_dir / ".mixdaemon-automix"
        folders = song_folders(self.songs_dir)
        if songs is not None:
            folders = [f for f in folders if f.name in songs]
        self.reverb = ReverbNormalization(ir_folder) if ir_folder else None
        key = {"format": CACHE_FORMAT, "order": NORMALIZE_ORDER, "stats_sha256": file_sha256(self.stats_path),
               "seed": seed}
        if self.reverb is not None:  # a different IR set makes different inputs
            key["reverb_irs"] = {"folder": str(Path(ir_folder).resolve()), "files": self.reverb.library.files}
        lengths = cached_songs(self.cache_dir / CACHE_MANIFEST, key, folders, self.stats_path,
                               lambda folder, stats: self._prepare(folder, stats, seed), progress)
        self.key = key
        self.songs = [f.name for f in folders]
        self.lengths = [lengths[name] for name in self.songs]
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _prepare(self, folder: Path, stats: FxStats, seed: int) -> int:
        stems = {}
        for stem in INPUT_STEMS:
            found = sorted(folder.glob(f"{stem}.*"))
            if found:
                stems[stem] = load_song(found[:1]).stems[stem]
        if not stems:
            raise ConfigError(f"{folder}: no {'/'.join(INPUT_STEMS)} stems")
        length = max(len(x) for x in stems.values())
        stems = {s: np.pad(stems[s], ((0, length - len(stems[s])), (0, 0))) if s in stems
                 else np.zeros((length, 2), np.float32) for s in INPUT_STEMS}
        mixture = sorted(folder.glob("mixture.*"))
        if mixture:
            target = read_audio(mixture[0]).samples[:length]
            target = np.pad(target, ((0, length - len(target)), (0, 0)))
        else:
            target = np.sum(list(stems.values()), axis=0)
        folder_cache = self.cache_dir / folder.name
        folder_cache.mkdir(parents=True, exist_ok=True)
        with atomic_write(folder_cache / f"inputs_normalized_{NORMALIZE_ORDER}.npy") as f:
            np.save(f, network_input(normalize_for_automix(stems, stats, seed, reverb=self.reverb)))
        with atomic_write(folder_cache / TARGET_FILE) as f:
            np.save(f, np.ascontiguousarray(target.T, dtype=np.float32))
        return length

    def _song(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        name = self.songs[index]
        if name not in self._arrays:
            folder = self.cache_dir / name
            self._arrays[name] = (np.load(folder / f"inputs_normalized_{NORMALIZE_ORDER}.npy", mmap_mode="r"),
                                  np.load(folder / TARGET_FILE, mmap_mode="r"))
        return self._arrays[name]

    def seconds(self) -> float:
        return sum(self.lengths) / WORKING_RATE

    def excerpt(self, rng: np.random.Generator, length: int, index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(inputs (8, length), target (2, length)) float32 from one start in a song (drawn
        uniformly unless `index` is given); wraps past the end, zero-pads a shorter song."""
        index = int(rng.integers(len(self.songs))) if index is None else index
        inputs, target = self._song(index)
        n = inputs.shape[1]
        if n >= length:
            positions = (int(rng.integers(n)) + np.arange(length)) % n
            return np.array(inputs[:, positions]), np.array(target[:, positions])
        pad = ((0, 0), (0, length - n))
        return np.pad(np.array(inputs), pad), np.pad(np.array(target), pad)


@dataclass
class AutomixBatch:
    inputs: torch.Tensor   # [B, 8, segment]
    target: torch.Tensor   # [B, 2, segment]


def automix_batch(library: MultitrackLibrary, rng: np.random.Generator, size: int, length: int,
                  indices: list[int] | None = None) -> AutomixBatch:
    pairs = [library.excerpt(rng, length, None if indices is None else indices[i]) for i in range(size)]
    return AutomixBatch(torch.from_numpy(np.stack([p[0] for p in pairs])),
                        torch.from_numpy(np.stack([p[1] for p in pairs])))


def _centre(x: torch.Tensor, length: int) -> torch.Tensor:
    start = (x.shape[-1] - length) // 2
    return x[..., start:start + length]


def sum_of_stems(inputs: torch.Tensor) -> torch.Tensor:
    """The "sum of normalized stems" baseline of [B, 8, T] inputs: [B, 2, T]."""
    return inputs.reshape(inputs.shape[0], len(INPUT_STEMS), 2, -1).sum(dim=1)


class AutomixTrainer(Trainer):
    kind = "automix"

    def __init__(self, cfg: AutomixTrainingConfig, train: MultitrackLibrary, validation: MultitrackLibrary,
                 loop: LoopSettings, device: torch.device):
        super().__init__(loop)
        if cfg.stats_sha256 and cfg.stats_sha256 != train.key["stats_sha256"]:
            raise ConfigError(f"{train.stats_path}: not the statistics this run started with")
        cfg.stats_sha256 = train.key["stats_sha256"]
        self.cfg, self.library, self.device = cfg, train, device
        self.model = build_model(cfg.architecture, cfg.model).to(device)
        _, multiple = model_context(self.model)
        if cfg.segment % multiple:
            raise ConfigError(f"--segment {cfg.segment}: must be a multiple of {multiple} (the model's pooling)")
        shrink = self.model.config.shrink if cfg.architecture == "wave-u-net" else 0
        if cfg.segment - shrink < min_loss_length():
            raise ConfigError(f"--segment {cfg.segment}: the loss needs at least {min_loss_length() + shrink} samples")
        self.max_grad_norm = cfg.grad_clip
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                          amsgrad=True)
        if cfg.lr_final_fraction < 1.0:
            self.cosine_schedule(cfg.lr_final_fraction)
        # one excerpt per validation song in turn, from fixed starts
        count = cfg.validation_items
        self.validation_set = automix_batch(validation, step_rng(cfg.seed, VALIDATION_STREAM, 0), count, cfg.segment,
                                            [i % len(validation.songs) for i in range(count)])
        with torch.no_grad():
            self.baseline_loss = self._mean_validation_loss(sum_of_stems)

    def _loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The configured loss, the target centred on the output (Wave-U-Net's is shorter)."""
        return automix_loss(output.float(), _centre(target, output.shape[-1]).to(output.device), self.cfg.loss)

    def _mean_validation_loss(self, mix: Callable[[torch.Tensor], torch.Tensor]) -> float:
        """Mean loss of mix(inputs) over the validation excerpts, one at a time (bounded memory)."""
        batch = self.validation_set
        return float(np.mean([float(self._loss(mix(batch.inputs[i:i + 1].to(self.device)), batch.target[i:i + 1]))
                              for i in range(len(batch.inputs))]))

    def make_batch(self, rng: np.random.Generator) -> AutomixBatch:
        return automix_batch(self.library, rng, self.cfg.batch, self.cfg.segment)

    def train_step(self, batch: AutomixBatch) -> dict[str, float]:
        with autocast(self.device, self.cfg.precision):
            y = self.model(batch.inputs.to(self.device))
        loss = self._loss(y, batch.target)
        self.apply_gradients(loss)
        return {"loss": loss.item()}

    def validate(self) -> dict[str, float]:
        with autocast(self.device, self.cfg.precision):
            loss = self._mean_validation_loss(self.model)
        return {"loss": loss, "ratio_to_sum": loss / self.baseline_loss}


def export_automix_model(run, out: str | Path, train_library: MultitrackLibrary | None = None) -> AutomixModelInfo:
    """Write the run's current checkpoint as an automix model file with its training record."""
    state, summary = training_loop.run_summary(run, "automix", ("loss", "ratio_to_sum"))
    cfg = state["config"]
    model = build_model(cfg["architecture"], state["model_config"])
    model.load_state_dict(state["model"])
    run_dir = training_loop.run_folder(run)
    data = None
    if train_library is not None:
        data = {"songs_dir": str(train_library.songs_dir.resolve()), "songs": len(train_library.songs),
                "seconds": round(train_library.seconds(), 1)}
        material = material_settings(train_library.songs_dir, ("generator", "renderer", "seed"))
        if material is not None:
            data["material"] = material
    training = {**training_loop.trained_with("mixdaemon train automix"), **summary, "data": data}
    return save_automix_model(out, model.eval(), cfg["architecture"],
                              normalization={"order": NORMALIZE_ORDER, "stats_sha256": cfg["stats_sha256"],
                                             "reverb_ir_folder": cfg.get("ir_folder")},
                              provenance={"source": "trained by mixdaemon train automix",
                                          "run": str(run_dir.resolve())},
                              training=training)

