"""The unpaired protocol on two real songs cut to eight seconds (segments of four seconds)."""
import numpy as np
import pytest

from mixdaemon.audio.io import read_audio, write_audio
from mixdaemon.audio.mastering import true_peak_dbtp
from mixdaemon.audio.stems import STEM_NAMES
from mixdaemon.errors import ConfigError
from mixdaemon.evaluation.features import FEATURES
from mixdaemon.evaluation.songs import load_stems
from mixdaemon.evaluation.unpaired import (
    evaluate_unpaired,
    format_table,
    partner,
    segment,
    unpaired_case,
)
from mixdaemon.mixing.engine import Conversion

SECONDS, SEGMENT = 8.0, 4.0


@pytest.fixture(scope="module")
def songs_dir(real_stems, tmp_path_factory):
    root = tmp_path_factory.mktemp("unpaired_songs")
    for song in ("song_a", "song_b"):
        for stem in STEM_NAMES:
            audio = read_audio(real_stems / song / f"{stem}.wav").samples[: int(SECONDS * 44100)]
            write_audio(root / song / f"{stem}.wav", audio, subtype="FLOAT")
    return root


class _Engine:
    capabilities = frozenset()

    def __init__(self, name):
        self.name, self.info = name, {"name": name}


class ReferenceEngine(_Engine):
    """Returns the reference's own stems: its mixing features are the reference's."""

    def convert(self, input_stems, reference_stems, progress=None, reference_b_stems=None):
        return Conversion(dict(reference_stems))


class QuieterEngine(_Engine):
    """The input 6 dB down: only its level differs from the input's."""

    def convert(self, input_stems, reference_stems, progress=None, reference_b_stems=None):
        return Conversion({k: v * np.float32(0.5) for k, v in input_stems.items()})


@pytest.fixture(scope="module")
def report(songs_dir):
    return evaluate_unpaired(songs_dir, [ReferenceEngine("reference"), QuieterEngine("quieter")], seeds=[0],
                             segment_seconds=SEGMENT)


def test_pairs_and_segments_follow_the_protocol(songs_dir):
    for n in (2, 3, 5):
        for seed in range(6):
            assert all(partner(i, n, seed) != i for i in range(n))
        assert [partner(i, n, 0) for i in range(n)] == [(i + 1) % n for i in range(n)]
    assert len({partner(0, 5, seed) for seed in range(4)}) == 4  # the seeds shift the pairing
    n = int(SEGMENT * 44100)
    assert [segment(int(9.0 * 44100), seed, SEGMENT) for seed in range(3)] == [
        slice(0, n), slice(n, 2 * n), slice(0, n)]
    assert segment(1000, 3, SEGMENT) == slice(0, 1000)  # shorter than a segment: the whole song

    a, b = load_stems(songs_dir / "song_a"), load_stems(songs_dir / "song_b")
    case = unpaired_case("song_a", a, "song_b", b, 1, SEGMENT)
    assert all(np.array_equal(case.x[k], a[k][n:2 * n]) for k in STEM_NAMES)  # raw input, seed 1: segment 1
    trim = np.float32(10 ** (case.trim_db / 20))
    for k in STEM_NAMES:
        np.testing.assert_array_equal(case.ref[k], case.chains[k].apply(b[k][n:2 * n]) * trim)
    assert true_peak_dbtp(sum(case.ref[k] for k in STEM_NAMES)) <= -1.5 + 1e-3
    # a silent stem has no style: skipped, and said why
    silent = unpaired_case("song_a", {**a, "vocals": np.zeros_like(a["vocals"])}, "song_b", b, 1, SEGMENT)
    assert silent.skipped == {**case.skipped, "vocals": "input silent (-200.0 dBFS RMS)"}


def test_identity_is_one_and_the_reference_itself_near_zero(report):
    assert list(report["engines"]) == ["identity", "reference", "quieter"]
    assert list(report["pairs"]) == ["song_a <- song_b (seed 0)", "song_b <- song_a (seed 0)"]
    identity = report["engines"]["identity"]["summary"]
    assert all(identity[f"ratio_{f}"] == 1.0 for f in FEATURES) and identity["mean_ratio"] == 1.0
    assert identity["loudness"] > 1.0 and identity["spectral"] > 1.0  # input and reference do differ
    reference = report["engines"]["reference"]["summary"]
    for f in FEATURES:
        assert reference[f"ratio_{f}"] < 0.02, f
        assert reference[f] < 0.05, f
    assert reference["mean_ratio"] < 0.02
    table = format_table(report)
    assert table.splitlines()[0] == "| engine | loudness | spectral | dynamics | width | mean |"
    assert "| identity | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 |" in table


def test_a_gain_change_moves_only_the_loudness_distance(report):
    for key, pair in report["engines"]["quieter"]["pairs"].items():
        for stem, quieter in pair.items():
            identity = report["engines"]["identity"]["pairs"][key][stem]
            assert quieter["spectral"] == pytest.approx(identity["spectral"], abs=0.1), (key, stem)
            assert quieter["width"] == pytest.approx(identity["width"], abs=0.1), (key, stem)
            assert quieter["dynamics"] == pytest.approx(identity["dynamics"], abs=0.1), (key, stem)
            assert abs(quieter["loudness"] - identity["loudness"]) > 1.0, (key, stem)


def test_fewer_than_two_songs_is_refused(songs_dir, tmp_path):
    (tmp_path / "one").symlink_to(songs_dir / "song_a")
    with pytest.raises(ConfigError, match="two songs or more"):
        evaluate_unpaired(tmp_path, [], seeds=[0], segment_seconds=SEGMENT)
