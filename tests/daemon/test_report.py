"""What a finished job leaves beside its audio, drawn from the job's result alone: report.png needs
none of the audio files (the job measured the spectra on the audio it held), and manifest.json stays
small (no spectra in it)."""
import json
import shutil
from dataclasses import asdict

import matplotlib.image

from mixdaemon.daemon.jobstore import Job
from mixdaemon.daemon.report import frequency_label, report_figure, write_manifest, write_report
from mixdaemon.mixing.settings import TransferSettings
from mixdaemon.mixing.transfer import transfer
from tests.support.daemon import make_reference, write_stems


def test_report_and_manifest_come_from_the_result_without_reading_any_audio_file(tmp_path):
    stems = write_stems(tmp_path / "song", seconds=2.0, seed=1)
    reference = make_reference(tmp_path / "reference", seconds=2.0)
    settings = TransferSettings(engine="match")
    result = transfer(tmp_path / "song", reference, tmp_path / "out", settings, spectra=True)
    job = Job(id=7, key="k", state="running", inputs=[str(p) for p in stems], reference=str(reference),
              out_root=str(tmp_path), settings=asdict(settings), folder_name="song", created=0.0)
    for folder in (tmp_path / "song", reference, tmp_path / "out"):
        shutil.rmtree(folder)  # from here on, only the result is left

    report = write_report(tmp_path / "report.png", job, result)
    image = matplotlib.image.imread(report)
    assert image.shape[:2] == (600, 1040)  # 13 × 7.5 inches at 80 dpi
    assert image[..., :3].std() > 0.05  # curves and bars, not a blank canvas

    manifest = json.loads(write_manifest(tmp_path / "manifest.json", job, result, result.outputs,
                                         str(tmp_path / "report.png"), result.timings).read_text())
    assert "spectra" not in manifest and (tmp_path / "manifest.json").stat().st_size < 8000
    assert manifest["loudness_lufs"]["after"] == result.loudness_after and manifest["report"] == str(report)

    # What a musician reads off it: frequencies as on an EQ, units on every axis, one legend that
    # names the reference, the reference's loudness beside every track's (the mix's too), a loudness
    # axis that spans the values shown (not -70 to 0 LUFS), and a caption.
    fig = report_figure(job, result)
    spectrum, loudness = fig.axes[0], fig.axes[5]
    assert [t.get_text() for t in spectrum.get_xticklabels()] == ["50", "100", "200", "500", "1k", "2k", "5k",
                                                                   "10k", "20k"]
    assert (spectrum.get_xlabel(), spectrum.get_ylabel()) == ("frequency (Hz)", "level (dB)")
    assert "LUFS" in loudness.get_ylabel()
    assert len(fig.legends) == 1 and not any(ax.get_legend() for ax in fig.axes)
    assert [t.get_text() for t in fig.legends[0].get_texts()][-1] == "reference: reference"
    assert set(result.reference_loudness) == set(result.loudness_after) and "mixture" in result.reference_loudness
    shown = [*result.loudness_before.values(), *result.loudness_after.values(), *result.reference_loudness.values()]
    low, high = loudness.get_ylim()
    assert low <= min(shown) and max(shown) <= high and high - low < 40  # 1 LU is a visible step
    assert any("LUFS" in t.get_text() and t.get_text().endswith(".") for t in fig.texts)  # the caption


def test_frequencies_read_as_on_an_eq():
    assert [frequency_label(f) for f in (20, 50, 500, 1000, 2500, 20000)] == ["20", "50", "500", "1k", "2.5k", "20k"]
