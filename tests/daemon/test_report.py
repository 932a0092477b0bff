"""What a finished job leaves beside its audio, drawn from the job's result alone: report.png needs
none of the audio files (the job measured the spectra on the audio it held), and manifest.json stays
small (no spectra in it)."""
import json
import shutil
from dataclasses import asdict

import matplotlib.image

from mixdaemon.daemon.jobstore import Job
from mixdaemon.daemon.report import write_manifest, write_report
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
