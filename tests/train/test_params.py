"""`mixdaemon train params` on a tiny procedural song set: examples from FXmanipulator draws, a
predictor file the param engine loads, with its provenance, and examples reused by a rerun."""
from __future__ import annotations

import numpy as np
import pytest

from mixdaemon.cli.main import main
from mixdaemon.mixing.param_estimation import (
    PREDICTED_SLOTS,
    ParamPredictor,
    estimate_chain,
)
from mixdaemon.train.material import make_material


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    root = tmp_path_factory.mktemp("params-material")
    make_material(root / "train", songs=2, seconds=3.0, seed=0, renderer="numpy")
    make_material(root / "val", songs=1, seconds=3.0, seed=1, renderer="numpy")
    return root


def test_tiny_training_run_writes_a_predictor_the_engine_uses(material, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "params", str(material / "train"), "--val-dir", str(material / "val"), "--run-dir", str(run),
            "--examples", "24", "--validation-examples", "8", "--segment-seconds", "1.0", "--epochs", "5",
            "--hidden", "16", "--threads", "1", "--seed", "3", "-q"]
    assert main(args) == 0
    assert "val_eq_gain_mae_db" in capsys.readouterr().out
    predictor = ParamPredictor.load(run / "predictor.safetensors")
    provenance = predictor.metadata["provenance"]
    assert provenance["trained_by"] == "mixdaemon train params" and provenance["config"]["examples"] == 24
    assert provenance["training_song_count"] == 2 and "val_loss" in provenance["metrics"]
    assert [w.shape for w, _ in predictor.layers] == [(predictor.mean.size, 16), (16, len(PREDICTED_SLOTS))]

    stems = sorted((material / "val").glob("*/vocals.wav"))
    import soundfile as sf
    audio = sf.read(stems[0], dtype="float32", always_2d=True)[0]
    chain = estimate_chain(predictor, audio, audio[::-1].copy()).chain
    assert all(-15.0 <= band.gain_db <= 15.0 for band in chain.eq) and -1.0 <= chain.pan <= 1.0

    examples = run / "examples-train.npz"
    made = examples.stat().st_mtime_ns
    data = np.load(examples)
    assert data["features"].shape[0] == 24 and np.all((data["targets"] >= 0) & (data["targets"] <= 1))
    assert main(args[:-1] + ["--epochs", "2", "-q"]) == 0  # same examples, other training: reused
    assert examples.stat().st_mtime_ns == made


def test_examples_follow_the_chosen_fx_probability(material, tmp_path):
    """--fx-probability 0: no effect fires, so every target EQ is flat; the FXmanipulator's default
    probabilities give EQ targets away from flat."""
    from mixdaemon.fx.stats import default_stats_path
    from mixdaemon.mixing.param_estimation import SLOT_INDEX
    from mixdaemon.train.data import StemLibrary
    from mixdaemon.train.params import ParamsTrainingConfig, make_examples

    library = StemLibrary(material / "train", default_stats_path("mst"), tmp_path / "cache")
    targets = {p: make_examples(library, 12, ParamsTrainingConfig(segment_seconds=1.0, fx_probability=p), 0,
                                tmp_path / f"examples-{p}.npz")["targets"] for p in (0.0, None)}
    gains = [SLOT_INDEX[f"eq{i}.gain_db"] for i in range(5)]
    np.testing.assert_allclose(targets[0.0][:, gains], 0.5, atol=1e-6)  # 0 dB on a ±15 dB unit scale
    assert np.abs(targets[None][:, gains] - 0.5).max() > 0.05


def _position_in(files, segment):
    """(file index, start) of a segment copied out of one of the library's cached files."""
    for i, (path, _) in enumerate(files):
        audio = np.load(path)
        for start in np.flatnonzero(audio[:len(audio) - len(segment) + 1, 0] == segment[0, 0]):
            if np.array_equal(audio[start:start + len(segment)], segment):
                return i, int(start)
    raise AssertionError("segment not found in any file")


def test_same_song_examples_pair_two_passages_of_one_stem(material, tmp_path):
    from mixdaemon.fx.stats import default_stats_path
    from mixdaemon.train.data import StemLibrary, manipulators
    from mixdaemon.train.params import make_example

    library = StemLibrary(material / "train", default_stats_path("mst"), tmp_path / "cache")
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = library.segments_of_one_file("bass", rng, (4410, 6000))
        (file_a, start_a), (file_b, start_b) = (_position_in(library.files["bass"], s) for s in (a, b))
        assert file_a == file_b                                              # one song's stem
        assert start_a + 4410 <= start_b or start_b + 6000 <= start_a        # two passages that do not overlap

    # the share decides which kind of pair an example is made from
    def refuse(*args):
        raise AssertionError("this kind of pair was not asked for")

    fx, length = manipulators(), 22050
    same_song = StemLibrary(material / "train", default_stats_path("mst"), tmp_path / "cache")
    same_song.segment = refuse
    make_example(same_song, fx, np.random.default_rng(1), length, same_song_probability=1.0)
    other_song = StemLibrary(material / "train", default_stats_path("mst"), tmp_path / "cache")
    other_song.segments_of_one_file = refuse
    make_example(other_song, fx, np.random.default_rng(1), length, same_song_probability=0.0)
