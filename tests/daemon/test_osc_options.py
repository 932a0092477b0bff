"""A job's options over real UDP to a real daemon process: `/mixdaemon/submit ... "amount=0"` runs
the job with that amount (its manifest says so, its stems are the input's), the options are part
of the job's key, bad options are refused in one line naming them, and `mixdaemon send submit
--amount --match --stem-amount` sends them."""
import json

import numpy as np
import pytest

from mixdaemon.audio.examples import synth_song
from mixdaemon.audio.io import read_audio, write_audio
from mixdaemon.daemon.osc import format_options, parse_options
from mixdaemon.errors import MixdaemonError
from tests.support.daemon import (
    DONE,
    ERROR,
    QUEUED,
    DaemonProcess,
    OscListener,
    daemon_config,
    make_reference,
    request,
    send_cli,
    write_toml,
)

STEMS = ("drums", "bass", "other", "vocals")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """A daemon with the match engine; quiet stems (the limiter leaves them alone) and a reference
    in an allowed folder outside the watch folder."""
    tmp = tmp_path_factory.mktemp("options")
    song = tmp / "songs" / "song"
    for name, x in synth_song(2.0, seed=0).items():
        write_audio(song / f"{name}.wav", x * (0.05 / np.max(np.abs(x))))
    reference = make_reference(tmp / "refs", seconds=2.0)
    listener = OscListener()
    config = write_toml(tmp / "config.toml", daemon_config(tmp, listener.port, allowed_roots=[str(tmp / "songs"),
                                                                                              str(tmp / "refs")]))
    proc = DaemonProcess(config, tmp / "state").start()
    yield proc, listener, song, reference
    listener.close()
    if proc.alive():
        proc.terminate()


def _submit(daemon, options: str | None) -> int:
    proc, listener, song, reference = daemon
    args = (str(song), str(reference), "") + (() if options is None else (options,))
    reply, values = request(listener, proc.address, "/mixdaemon/submit", *args, reply=QUEUED)
    assert reply == QUEUED, values
    return values[0]


def _manifest(daemon, job_id: int) -> dict:
    proc, listener, _, _ = daemon
    done = listener.wait_for(lambda a, args: a in (DONE, ERROR) and args[0] == job_id, timeout=90)
    assert done is not None and done[1] == DONE, (done, proc.log()[-2000:])
    return json.loads(open(done[2][1]).read())


def _largest_change(manifest: dict, song, stem: str) -> float:
    y = read_audio(manifest["outputs"][stem]).samples
    return float(np.max(np.abs(y - read_audio(song / f"{stem}.wav").samples)))


def test_amount_0_over_osc_runs_a_job_that_returns_the_input(daemon):
    proc, listener, song, _ = daemon
    kept = _submit(daemon, "amount=0")
    manifest = _manifest(daemon, kept)
    assert manifest["settings"]["amount"] == 0.0
    assert manifest["settings"]["match"] == ["level", "eq", "dynamics", "width", "space"]
    assert manifest["settings"]["stem_amount"] == {}
    for stem in STEMS:
        assert _largest_change(manifest, song, stem) < 1e-6, stem
    reply, values = request(listener, proc.address, "/mixdaemon/status", kept, reply="/mixdaemon/status/reply")
    assert values[:2] == [kept, "done"]

    # The options are part of the job's key: the same options (however they are spelled) are the
    # same job, no options (the configured amount 1) another one.
    assert _submit(daemon, "amount=0") == kept
    assert _submit(daemon, "amount=0.0;match=space,width,dynamics,eq,level") == kept
    moved = _submit(daemon, None)
    assert moved != kept
    manifest = _manifest(daemon, moved)
    assert manifest["settings"]["amount"] == 1.0
    assert all(_largest_change(manifest, song, stem) > 1e-3 for stem in STEMS)


@pytest.mark.parametrize("options, reason", [
    ("amount=2", "options: amount: Input should be less than or equal to 1 (got '2')"),
    ("amount=half", "options: amount: Input should be a valid number"),
    ("match=level,loud", "options: match[1]: Input should be 'level', 'eq', 'dynamics', 'width' or 'space' "
                         "(got 'loud')"),
    ("match=,", "options: match: choose at least one of level, eq, dynamics, width, space"),
    ("stem_amount.voice=0.5", "options: stem_amount: 'voice' is not a stem; use drums, bass, other, vocals"),
    ("stem_amount.vocals=-1", "options: stem_amount.vocals: Input should be greater than or equal to 0"),
    ("volume=1", "options: unknown option 'volume'; use amount=A, match=ASPECT,... or stem_amount.STEM=A"),
    ("engine=neural", "options: unknown option 'engine'"),
    ("amount", "options: 'amount': give key=value, e.g. amount=0.5"),
])
def test_bad_options_are_refused_in_one_line_and_nothing_is_queued(daemon, options, reason):
    proc, listener, song, reference = daemon
    reply, values = request(listener, proc.address, "/mixdaemon/status", reply="/mixdaemon/status/summary")
    before = values
    reply, values = request(listener, proc.address, "/mixdaemon/submit", str(song), str(reference), "", options)
    assert reply == ERROR and values[0] == "-" and values[1].startswith(reason), values
    assert "\n" not in values[1]
    reply, values = request(listener, proc.address, "/mixdaemon/status", reply="/mixdaemon/status/summary")
    assert values == before


def test_send_submit_sends_the_options(daemon):
    proc, listener, song, reference = daemon
    status, out, _ = send_cli(proc.port, "submit", str(song), "--reference", str(reference), "--amount", "0.5",
                              "--match", "level,eq", "--stem-amount", "vocals=0", "--wait", timeout=90)
    lines = out.strip().splitlines()
    # The job's first progress notification can overtake the reply (the worker starts at once).
    assert status == 0 and any(line.startswith(QUEUED) for line in lines) and lines[-1].startswith(DONE), out
    manifest = json.loads(open(lines[-1].split()[2]).read())
    assert manifest["settings"]["amount"] == 0.5 and manifest["settings"]["match"] == ["level", "eq"]
    assert manifest["settings"]["stem_amount"] == {"vocals": 0.0}
    assert _largest_change(manifest, song, "vocals") < 1e-6 and _largest_change(manifest, song, "drums") > 1e-3

    status, out, _ = send_cli(proc.port, "submit", str(song), "--reference", str(reference), "--amount", "7")
    assert status == 1 and "options: amount: Input should be less than or equal to 1" in out
    with pytest.raises(MixdaemonError, match="--amount, --stem-amount and --match need one folder or file"):
        send_cli(proc.port, "submit", str(song / "bass.wav"), str(song / "drums.wav"), "--amount", "0.5")


def test_options_text_round_trip():
    options = {"amount": "0.5", "match": ["level", "eq"], "stem_amount": {"vocals": "0.3", "drums": "1"}}
    text = format_options(options)
    assert text == "amount=0.5 match=level,eq stem_amount.vocals=0.3 stem_amount.drums=1"
    assert parse_options(text) == options
    assert parse_options("  amount=0.5;; match=level,eq ;stem_amount.vocals=0.3  stem_amount.drums=1") == options
    assert parse_options("") == {}
