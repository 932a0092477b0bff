"""The Table-2 evaluation protocol on (cropped copies of) a real song."""
import json

import numpy as np
import pytest

from mixdaemon.audio.io import read_audio, write_audio
from mixdaemon.evaluation.anchors import IdentityEngine
from mixdaemon.evaluation.table2 import (
    MULTITRACK,
    Embedder,
    build_songs,
    format_table,
    score_engine,
    summarize,
)
from mixdaemon.fx.stats import FxStats, default_stats_path
from mixdaemon.mixing.engine import Conversion
from mixdaemon.nets.mst import ClonerConfig, EncoderConfig, FXencoder, MixFXcloner
from mixdaemon.nets.store import save_pair

STEMS = ("drums", "bass", "other", "vocals")
SECONDS = 6.0


@pytest.fixture(scope="module")
def songs_dir(real_stems, tmp_path_factory):
    """song_a's stems, first 6 s (segments A and B of 3 s), in a temporary folder."""
    root = tmp_path_factory.mktemp("eval_songs")
    for stem in STEMS:
        audio = read_audio(real_stems / "song_a" / f"{stem}.wav").samples[: int(SECONDS * 44100)]
        write_audio(root / "song_a" / f"{stem}.wav", audio, subtype="FLOAT")
    return root


@pytest.fixture(scope="module")
def stats():
    return FxStats.load(default_stats_path("mst"))


@pytest.fixture(scope="module")
def songs(songs_dir, stats):
    return build_songs(songs_dir, stats, seed=0)


class OracleEngine:
    """Returns the ground truth it is handed: the best any engine can do."""

    def __init__(self, songs):
        self.gt = {id(song.x["drums"]): song.gt for song in songs}

    name, info, capabilities = "oracle", {"name": "oracle"}, frozenset()

    def convert(self, input_stems, reference_stems, progress=None, reference_b_stems=None):
        return Conversion(self.gt[id(input_stems["drums"])])


def test_material_is_seeded_and_follows_the_protocol(songs_dir, stats, songs):
    (song,) = songs
    assert set(song.x) == set(song.gt) == set(song.ref) == set(STEMS)
    assert all(len(song.x[s]) == len(song.gt[s]) == len(song.ref[s]) == int(SECONDS * 44100) // 2 for s in STEMS)
    assert all(np.abs(song.x[s]).max() <= 1.0 for s in STEMS)
    # gt and ref carry the same draw, recorded as plain data
    assert all(song.draws[s]["stem"] == s and set(song.draws[s]["fired"]) for s in STEMS)
    json.dumps(song.draws)
    (again,) = build_songs(songs_dir, stats, seed=0)
    assert all(np.array_equal(again.gt[s], song.gt[s]) and again.draws[s] == song.draws[s] for s in STEMS)
    (other_seed,) = build_songs(songs_dir, stats, seed=1)
    assert any(other_seed.draws[s] != song.draws[s] for s in STEMS)


def test_scores_rank_identity_against_the_ground_truth(songs):
    embedder = Embedder(None)
    identity = score_engine(IdentityEngine(), songs, embedder)
    oracle = score_engine(OracleEngine(songs), songs, embedder)
    for key in (*STEMS, MULTITRACK):
        assert oracle["song_a"][key]["lr"] == pytest.approx(0.0, abs=1e-6)
        assert oracle["song_a"][key]["ms"] == pytest.approx(0.0, abs=1e-6)
    assert identity["song_a"][MULTITRACK]["lr"] > 0.05
    summary = summarize(identity, identity)
    assert summary[MULTITRACK]["ratio_lr"] == summary["stem"]["ratio_ms"] == 1.0
    assert summarize(oracle, identity)["stem"]["ratio_lr"] == pytest.approx(0.0, abs=1e-6)


def test_evaluate_writes_a_report_with_embedding_distances(songs_dir, tmp_path, monkeypatch):
    """Through the command: a neural engine from a model pair in a temporary store, embedding
    distances measured with that pair's encoder."""
    from mixdaemon.cli.main import build_parser
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    encoder = FXencoder(EncoderConfig(channels=(4, 8, 16), kernels=(9, 5, 5), strides=(16, 8, 4)))
    cloner = MixFXcloner(ClonerConfig(nblocks=2, channel_width=4, kernel_size=3, cond_dim=16))
    save_pair(tmp_path / "store" / "tiny.safetensors", encoder.eval(), cloner.eval())
    monkeypatch.setenv("MIXDAEMON_ENGINES", str(tmp_path / "store"))
    out = tmp_path / "report.json"
    argv = ["evaluate", str(songs_dir), "--engine", "neural:tiny", "--embedding-model", "tiny", "--out", str(out), "-q"]
    args = build_parser(argv).parse_args(argv)
    assert args.func(args) == 0
    report = json.loads(out.read_text())
    assert list(report["engines"]) == ["identity", "neural:tiny"]
    neural = report["engines"]["neural:tiny"]
    assert set(neural["songs"]["song_a"]) == {*STEMS, MULTITRACK}
    assert all(neural["songs"]["song_a"][k]["y_gt"] is not None for k in (*STEMS, MULTITRACK))
    assert report["engines"]["identity"]["summary"][MULTITRACK]["ratio_lr"] == 1.0
    assert "| neural:tiny |" in format_table(report)
