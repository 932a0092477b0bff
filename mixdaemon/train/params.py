"""Training the param engine's predictor (mixing/param_estimation.py's ParamPredictor) on FXmanipulator draws.

An example is one stem: x = a segment of a normalized training stem (train.data.StemLibrary),
reference = the FXmanipulator's manipulation of another segment of the same stem type: from
another song, as a user's reference is, or (`same_song_probability`) another passage of the same
stem, as in the evaluation protocol. The draw's parameters are known, so the target is
the chain equivalent to the draw (fx/chain.py's chain_from_draw, measured on the manipulated
segment), encoded as param_estimation.PREDICTED_SLOTS; the input is fx/features.py's
pair_vector(x, reference).

Making examples is the expensive part (the manipulator's compressor and reverb), so the examples
are made once, example k from the Generator of (seed, stream, k) (train.loop.step_rng), and kept in
RUN_DIR/examples-{train,validation}.npz; a rerun with the same settings reuses them. The MLP then
trains in seconds to minutes (full passes over the examples, Adam, the best validation epoch kept),
and is exported with its provenance.

The loss is a weighted squared error on the [0, 1] slots: an EQ band's frequency and Q count in
proportion to its gain (a flat band has no frequency), a compressor's or reverb's time constants
and room only when it fired.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mixdaemon.errors import ConfigError
from mixdaemon.files import atomic_write
from mixdaemon.fx import features as fxfeatures
from mixdaemon.fx.chain import chain_from_draw
from mixdaemon.fx.manipulator import FX_NAMES, MARGIN_SAMPLES
from mixdaemon.mixing.param_estimation import (
    PREDICTED_SLOTS,
    SLOT_INDEX,
    ParamPredictor,
    chain_to_unit,
)
from mixdaemon.progress import Progress, no_progress, span
from mixdaemon.train.data import STEMS, StemLibrary, manipulators
from mixdaemon.train.loop import LOG, TRAIN_STREAM, VALIDATION_STREAM, CsvLog, step_rng

EXAMPLES_FILE = "examples-{part}.npz"


@dataclass
class ParamsTrainingConfig:
    examples: int = 6000
    validation_examples: int = 600
    segment_seconds: float = 3.0
    hidden: list[int] = field(default_factory=lambda: [128, 128])
    epochs: int = 300
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    # None: the FXmanipulator's default firing probabilities (as the evaluation protocol draws);
    # a value: every effect fires with it, so that the predictor does not learn "a compressor is
    # almost always there" from the defaults and predict one on every stem.
    fx_probability: float | None = None
    # The share of examples whose reference is another passage of the input's own stem (as in the
    # evaluation protocol) instead of a stem of another song: across songs, content differences
    # drown what a compressor or reverb did, and the predictor learns to ignore the features that
    # show them (it then predicted a compressor on every stem).
    same_song_probability: float = 0.0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def slot_weights(unit: np.ndarray, fired: dict[str, bool]) -> np.ndarray:
    """Loss weight per slot of one example (see the module docstring)."""
    weights = np.ones(len(PREDICTED_SLOTS))
    for i in range(5):
        gain = abs(unit[SLOT_INDEX[f"eq{i}.gain_db"]] - 0.5) * 2.0  # |gain| / 15 dB
        for key in ("freq_hz", "q"):
            if f"eq{i}.{key}" in SLOT_INDEX:
                weights[SLOT_INDEX[f"eq{i}.{key}"]] = 0.1 + 0.9 * gain
    for key in ("comp.attack_ms", "comp.release_ms"):
        weights[SLOT_INDEX[key]] = 0.3 if fired.get("comp") else 0.02
    weights[SLOT_INDEX["reverb.room_size"]] = 0.3 if fired.get("reverb") else 0.02
    return weights


def make_example(library: StemLibrary, fx: dict, rng: np.random.Generator, length: int,
                 same_song_probability: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pair features, unit target, slot weights) of one example."""
    stem = STEMS[int(rng.integers(len(STEMS)))]
    if same_song_probability > 0.0 and rng.random() < same_song_probability:
        x, source = library.segments_of_one_file(stem, rng, (length, length + 2 * MARGIN_SAMPLES))
    else:
        x = library.segment(stem, rng, length)
        source = library.segment(stem, rng, length + 2 * MARGIN_SAMPLES)
    (reference,), drawn = fx[stem].manipulate([source], rng, padded=True)
    applied_to = source[MARGIN_SAMPLES:MARGIN_SAMPLES + length].astype(np.float64)
    chain = chain_from_draw(drawn, applied_to)
    unit = chain_to_unit(chain, fxfeatures.gated_level_db(applied_to))
    features = fxfeatures.pair_vector(fxfeatures.measure(x), fxfeatures.measure(reference))
    return features, unit, slot_weights(unit, drawn["fired"])


def make_examples(library: StemLibrary, count: int, cfg: ParamsTrainingConfig, stream: int, path: Path,
                  ir_folder=None, progress: Progress = no_progress) -> dict[str, np.ndarray]:
    """`count` examples, made once and kept in `path` (reused when made with the same settings)."""
    key = json.dumps({"count": count, "segment_seconds": cfg.segment_seconds, "seed": cfg.seed, "stream": stream,
                      "songs": library.songs, "library": library.key, "ir_folder": str(ir_folder),
                      "fx_probability": cfg.fx_probability, "same_song_probability": cfg.same_song_probability},
                     sort_keys=True)
    if path.is_file():
        with np.load(path) as stored:
            if str(stored["key"]) == key:
                return {k: stored[k] for k in ("features", "targets", "weights")}
    probabilities = None if cfg.fx_probability is None else {name: cfg.fx_probability for name in FX_NAMES}
    fx = manipulators(probabilities, ir_folder=ir_folder)
    length = int(cfg.segment_seconds * fxfeatures.WORKING_RATE)
    rows = []
    for k in range(count):
        rows.append(make_example(library, fx, step_rng(cfg.seed, stream, k), length, cfg.same_song_probability))
        progress(f"making {path.stem}", (k + 1) / count)
    data = {name: np.stack([row[i] for row in rows]).astype(np.float32)
            for i, name in enumerate(("features", "targets", "weights"))}
    with atomic_write(path) as f:   # a file object: np.savez would append ".npz" to other names
        np.savez(f, key=np.array(key), **data)
    return data


def eq_gain_error_db(predicted_unit: np.ndarray, target_unit: np.ndarray) -> float:
    """Mean absolute error of the five EQ band gains, dB."""
    slots = [SLOT_INDEX[f"eq{i}.gain_db"] for i in range(5)]
    scale = PREDICTED_SLOTS[slots[0]].high - PREDICTED_SLOTS[slots[0]].low
    return float(np.mean(np.abs(predicted_unit[:, slots] - target_unit[:, slots])) * scale)


def fit_predictor(train: dict[str, np.ndarray], validation: dict[str, np.ndarray], cfg: ParamsTrainingConfig,
                  log: CsvLog, progress: Progress = no_progress) -> tuple[ParamPredictor, dict]:
    """Train the MLP; returns the predictor of the best validation epoch and its validation metrics."""
    import torch
    torch.manual_seed(cfg.seed)
    mean = train["features"].mean(axis=0)
    std = train["features"].std(axis=0) + 1e-3

    def tensors(part):
        return (torch.from_numpy((part["features"] - mean) / std).float(), torch.from_numpy(part["targets"]).float(),
                torch.from_numpy(part["weights"]).float())

    (x_train, y_train, w_train), (x_val, y_val, w_val) = tensors(train), tensors(validation)
    sizes = [fxfeatures.PAIR_FEATURE_SIZE, *cfg.hidden, len(PREDICTED_SLOTS)]
    layers = []
    for k in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[k], sizes[k + 1]))
        if k < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.epochs)
    generator = torch.Generator().manual_seed(cfg.seed)

    def loss_of(x, y, w):
        return (w * (torch.sigmoid(model(x)) - y) ** 2).sum() / w.sum()

    best = (float("inf"), None, 0)
    started = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        total = 0.0
        for batch in torch.randperm(len(x_train), generator=generator).split(cfg.batch_size):
            loss = loss_of(x_train[batch], y_train[batch], w_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        schedule.step()
        model.eval()
        with torch.no_grad():
            val_loss = float(loss_of(x_val, y_val, w_val))
        log.write(epoch, "train", {"loss": total / len(x_train)}, time.perf_counter() - started)
        log.write(epoch, "val", {"loss": val_loss}, time.perf_counter() - started)
        if val_loss < best[0]:
            best = (val_loss, {k: v.detach().clone() for k, v in model.state_dict().items()}, epoch)
        progress("training predictor", epoch / cfg.epochs)
    model.load_state_dict(best[1])
    linear = [m for m in model if isinstance(m, torch.nn.Linear)]
    arrays = {"feature_mean": mean.astype(np.float64), "feature_std": std.astype(np.float64)}
    for k, m in enumerate(linear):
        arrays[f"layer{k}.weight"] = m.weight.detach().numpy().T.astype(np.float64)
        arrays[f"layer{k}.bias"] = m.bias.detach().numpy().astype(np.float64)
    predictor = ParamPredictor(arrays, {})
    predicted = predictor.predict(validation["features"].astype(np.float64))
    metrics = {"val_loss": round(best[0], 5), "best_epoch": best[2],
               "val_eq_gain_mae_db": round(eq_gain_error_db(predicted, validation["targets"]), 3),
               "val_eq_gain_mae_db_if_predicting_flat": round(
                   eq_gain_error_db(np.full_like(predicted, 0.5), validation["targets"]), 3)}
    return predictor, metrics


def train_params(cfg: ParamsTrainingConfig, train_library: StemLibrary, validation_library: StemLibrary,
                 run_dir: str | Path, out: str | Path, *, ir_folder=None, progress: Progress = no_progress,
                 provenance: dict | None = None) -> tuple[Path, dict]:
    """Make (or reuse) the examples, train, and write the predictor to `out`; returns (path, metrics)."""
    if cfg.examples < 1 or cfg.validation_examples < 1 or cfg.epochs < 1:
        raise ConfigError("examples, validation examples and epochs must be positive")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # Making the examples is most of the time (renders of FXmanipulator draws); the MLP fits in seconds.
    train = make_examples(train_library, cfg.examples, cfg, TRAIN_STREAM, run_dir / EXAMPLES_FILE.format(part="train"),
                          ir_folder, span(progress, 0.0, 0.85))
    validation = make_examples(validation_library, cfg.validation_examples, cfg, VALIDATION_STREAM,
                               run_dir / EXAMPLES_FILE.format(part="validation"), ir_folder, span(progress, 0.85, 0.1))
    made = time.perf_counter() - started
    predictor, metrics = fit_predictor(train, validation, cfg, CsvLog(run_dir / LOG, None), span(progress, 0.95, 0.05))
    metrics["seconds_making_examples"] = round(made, 1)
    metrics["seconds_total"] = round(time.perf_counter() - started, 1)
    predictor.metadata["provenance"] = {
        "trained_by": "mixdaemon train params", "config": cfg.to_dict(), "metrics": metrics,
        "training_songs": str(train_library.songs_dir), "training_song_count": len(train_library.songs),
        "validation_songs": str(validation_library.songs_dir), "validation_song_count": len(validation_library.songs),
        "fx_normalization_stats_sha256": train_library.key["stats_sha256"],
        "ir_folder": str(ir_folder) if ir_folder else None,
        "date": time.strftime("%Y-%m-%d", time.gmtime()), **(provenance or {})}
    path = predictor.save(out)
    with atomic_write(run_dir / "metrics.json", "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=1)
    return path, metrics

