"""Automix jobs end to end: a daemon subprocess, an automix watch folder with no reference anywhere,
real UDP (/mixdaemon/automix and `mixdaemon send automix`), real SQLite, a (tiny) automix model."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from mixdaemon.audio.mastering import true_peak_dbtp
from mixdaemon.files import file_sha256
from mixdaemon.fx.stats import default_stats_path
from mixdaemon.nets.automix import AUTOMIX_PRESETS, AutomixNet
from mixdaemon.nets.store import save_automix_model
from tests.support.daemon import (
    DONE,
    ERROR,
    PROGRESS,
    QUEUED,
    DaemonProcess,
    daemon_config,
    request,
    send_cli,
    write_stems,
    write_toml,
)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    net = AutomixNet(AUTOMIX_PRESETS["tiny"])
    with torch.no_grad():
        net.conv1.weight.mul_(8.0)  # loud: the limiter must keep the mix under the ceiling
    path = tmp_path_factory.mktemp("engines") / "tiny-automix.safetensors"
    save_automix_model(path, net.eval(), "automix",
                       normalization={"order": "fxnorm", "stats_sha256": file_sha256(default_stats_path("fxnorm"))})
    return path


def test_automix_folder_and_osc_requests_give_a_limited_mix_without_any_reference(tmp_path, listener, model):
    config = daemon_config(tmp_path, listener.port, allowed_roots=[str(tmp_path)],
                           watch=[{"path": str(tmp_path / "watch"), "job_type": "automix"}],
                           automix={"model": str(model)})
    (tmp_path / "watch").mkdir(parents=True, exist_ok=True)
    proc = DaemonProcess(write_toml(tmp_path / "config.toml", config), tmp_path / "state").start()
    try:
        stems = write_stems(tmp_path / "watch" / "Song", seconds=2.5, seed=3)
        done = listener.wait_for(lambda a, _: a in (DONE, ERROR), timeout=90)
        assert done is not None and done[1] == DONE, (done, proc.log()[-2000:])
        job_id, manifest_path, mix_path = done[2]
        result = tmp_path / "out" / f"Song-{job_id}"
        assert {p.name for p in result.iterdir()} == {"mix.wav", "manifest.json", "report.png"}
        assert mix_path == str(result / "mix.wav")
        mix, rate = sf.read(mix_path)
        assert rate == 44100 and mix.shape == (int(2.5 * 44100), 2) and true_peak_dbtp(mix) <= -1.0
        manifest = json.loads(open(manifest_path).read())
        assert manifest["job_type"] == "automix" and manifest["reference"] is None and manifest["engine"] == "automix"
        assert manifest["model"]["path"] == str(model) and manifest["outputs"] == {"mixture": mix_path}
        assert {i["path"] for i in manifest["inputs"]} == set(map(str, stems))
        assert any(args[0] == job_id for args in listener.of(PROGRESS))

        # The same stems over OSC: the same job, and its result at once.
        start = len(listener.messages)
        reply, args = request(listener, proc.address, "/mixdaemon/automix", str(stems[0].parent), reply=QUEUED)
        assert (reply, args[0]) == (QUEUED, job_id)
        assert listener.wait_for(lambda a, a_: a == DONE and a_[0] == job_id, 5, start) is not None

        # Other stems elsewhere, followed to the end by `mixdaemon send automix --wait`.
        other = write_stems(tmp_path / "elsewhere" / "Other Song", seconds=1.5, seed=5)
        status, out, _ = send_cli(proc.port, "automix", str(other[0].parent), "--wait", timeout=60)
        lines = out.splitlines()
        assert status == 0 and lines[0].startswith(QUEUED) and lines[-1].startswith(DONE), out
        assert lines[-1].endswith("/mix.wav")

        # A full mix is not stems: the job fails with the reason, the daemon keeps serving.
        mixture = tmp_path / "elsewhere" / "Mix Only" / "mix.wav"
        mixture.parent.mkdir()
        sf.write(mixture, np.zeros((44100, 2)), 44100)
        reply, args = request(listener, proc.address, "/mixdaemon/automix", str(mixture.parent), reply=QUEUED)
        failed = listener.wait_for(lambda a, a_: a == ERROR and a_[0] == args[0], 30)
        assert failed is not None and "automix needs the stems" in failed[2][1]
        reply, _ = request(listener, proc.address, "/mixdaemon/ping", reply="/mixdaemon/pong")
        assert reply == "/mixdaemon/pong"
    finally:
        assert proc.terminate() == 0
