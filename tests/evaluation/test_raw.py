"""The raw protocol on a real song cut to four seconds (segments A and B of two seconds)."""
import numpy as np
import pytest

from mixdaemon.audio.io import read_audio, write_audio
from mixdaemon.audio.mastering import true_peak_dbtp
from mixdaemon.audio.stems import STEM_NAMES
from mixdaemon.errors import EngineUnavailable
from mixdaemon.evaluation.raw import evaluate_raw, format_table, raw_case, segments
from mixdaemon.evaluation.songs import MULTITRACK, load_stems
from mixdaemon.mixing.engine import Conversion

SECONDS, SEGMENT = 4.0, 2.0


@pytest.fixture(scope="module")
def songs_dir(real_stems, tmp_path_factory):
    """song_a's stems, first 4 s, beside its mixture (which the protocol ignores)."""
    root = tmp_path_factory.mktemp("raw_songs")
    for name in (*STEM_NAMES, "mixture"):
        audio = read_audio(real_stems / "song_a" / f"{name}.wav").samples[: int(SECONDS * 44100)]
        write_audio(root / "song_a" / f"{name}.wav", audio, subtype="FLOAT")
    return root


class _Engine:
    capabilities = frozenset()

    def __init__(self, name):
        self.name, self.info = name, {"name": name}


class CheatingEngine(_Engine):
    """Returns the ground truth of the case whose reference it is handed: what no engine can beat."""

    def __init__(self, songs_dir, seeds):
        super().__init__("cheat")
        stems = load_stems(songs_dir / "song_a")
        cases = [raw_case("song_a", stems, seed, SEGMENT) for seed in seeds]
        self.gt = {case.ref["drums"].tobytes(): case.gt for case in cases}

    def convert(self, input_stems, reference_stems, progress=None, reference_b_stems=None):
        return Conversion(self.gt[reference_stems["drums"].tobytes()])


class SilentEngine(_Engine):
    def convert(self, input_stems, reference_stems, progress=None, reference_b_stems=None):
        return Conversion({k: np.zeros_like(v) for k, v in input_stems.items()})


class FailingEngine(_Engine):
    def convert(self, input_stems, reference_stems, progress=None, reference_b_stems=None):
        raise EngineUnavailable("engine 'broken': no backend on this machine")


def test_material_follows_the_protocol(songs_dir):
    stems = load_stems(songs_dir / "song_a")
    case = raw_case("song_a", stems, 0, SEGMENT)
    n = int(SEGMENT * 44100)
    # x is the raw first segment, untouched
    assert all(np.array_equal(case.x[k], stems[k][:n]) for k in STEM_NAMES)
    # gt and ref: the same drawn chain on A and on B, then one trim for both
    trim = np.float32(10 ** (case.trim_db / 20))
    for k in STEM_NAMES:
        np.testing.assert_array_equal(case.gt[k], case.chains[k].apply(stems[k][:n]) * trim)
        np.testing.assert_array_equal(case.ref[k], case.chains[k].apply(stems[k][n:2 * n]) * trim)
    assert case.trim_db <= 0.0
    peaks = [true_peak_dbtp(sum(s[k] for k in STEM_NAMES)) for s in (case.gt, case.ref)]
    assert max(peaks) <= -1.5 + 1e-3
    if case.trim_db < 0:  # trimmed no further than needed
        assert max(peaks) == pytest.approx(-1.5, abs=0.01)
    # a song shorter than two segments is cut into halves
    assert segments(int(3.0 * 44100) + 1, SEGMENT) == (slice(0, 66150), slice(66150, 132300))
    assert segments(int(5.0 * 44100), SEGMENT) == (slice(0, n), slice(n, 2 * n))


def test_identity_is_one_the_ground_truth_zero_and_silence_worse(songs_dir):
    engines = [CheatingEngine(songs_dir, [0]), SilentEngine("silence"), FailingEngine("broken")]
    report = evaluate_raw(songs_dir, engines, seeds=[0], segment_seconds=SEGMENT)
    assert list(report["engines"]) == ["identity", "cheat", "silence", "broken"]
    summaries = {name: entry["summary"] for name, entry in report["engines"].items()}
    identity = summaries["identity"]
    for level in (identity[MULTITRACK], identity["stem"], *identity["per_stem"].values()):
        assert level["ratio_lr"] == 1.0 and level["ratio_ms"] == 1.0
    assert identity["stem"]["lr"] > 0.05  # the drawn chains moved gt away from x
    cheat = summaries["cheat"]
    for level in (cheat[MULTITRACK], cheat["stem"], *cheat["per_stem"].values()):
        assert level["ratio_lr"] < 0.01 and level["ratio_ms"] < 0.01
    silence = summaries["silence"]
    assert silence[MULTITRACK]["ratio_lr"] > 1.0 and silence["stem"]["ratio_lr"] > 1.0
    # a failing engine is recorded and scored as y = x, not fatal
    broken = report["engines"]["broken"]
    assert broken["failures"] == ["song_a (seed 0): engine 'broken': no backend on this machine"]
    assert broken["songs"] == report["engines"]["identity"]["songs"]
    # the report records the draws and the segments
    song = report["songs"]["song_a"]
    assert song["segments_s"] == [[0.0, SEGMENT], [SEGMENT, 2 * SEGMENT]]
    assert set(song["seeds"]["0"]["chains"]) == set(STEM_NAMES)
    table = format_table(report)
    assert table.splitlines()[0].startswith("| engine | ratio L/R stem | ratio L/R multitrack |")
    assert "| identity | 1.000 | 1.000 | 1.000 / 1.000 | 1.000 | 1.000 | 1.000 | 1.000 |" in table


def _without_timings(report):
    return {**report, "engines": {k: {**e, "seconds": None} for k, e in report["engines"].items()}}


def test_seeds_reproduce_the_report(songs_dir):
    first = evaluate_raw(songs_dir, ["rms"], seeds=[0, 1], segment_seconds=SEGMENT)
    again = evaluate_raw(songs_dir, ["rms"], seeds=[0, 1], segment_seconds=SEGMENT)
    assert _without_timings(first) == _without_timings(again)
    draws = first["songs"]["song_a"]["seeds"]
    assert draws["0"]["chains"] != draws["1"]["chains"]
    assert first["engines"]["rms"]["songs"]["song_a"]["0"] != first["engines"]["rms"]["songs"]["song_a"]["1"]
    # the rms anchor moves every stem's level to its reference: better than doing nothing here
    assert first["engines"]["rms"]["summary"]["stem"]["ratio_lr"] < 1.0
