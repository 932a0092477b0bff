"""`mixdaemon send` as a user types it: labelled status lines, percentages with one decimal, the
connection options and -v before or after the command, every command in the usage. The real
command line against a real OSC server over UDP (a stand-in daemon that answers fixed replies)."""
import contextlib
import io
import threading

import pytest

from mixdaemon.cli.main import COMMANDS, build_parser, main
from mixdaemon.daemon.osc import PREFIX, OscServer


class _StandIn:
    """Answers status, ping and submit as the daemon does; a submitted job runs to 22.2 % and ends."""

    def __init__(self):
        self.server = OscServer("127.0.0.1", 0, self)

    def cmd_ping(self, sender):
        return [(f"{PREFIX}/pong", ["0.1.0"])]

    def cmd_status(self, sender, job_id=None):
        if job_id is None:
            return [(f"{PREFIX}/status/summary", [0, 1, 3, 0, 0, 7])]
        return [(f"{PREFIX}/status/reply", [job_id, "running", 22.2, "matching drums", ""])]

    def cmd_submit(self, sender, stems, reference="", out="", options=""):
        def run():
            self.server.send(sender, f"{PREFIX}/progress", [7, 22.2, "matching drums"])
            self.server.send(sender, f"{PREFIX}/done", [7, "/out/song-7/manifest.json", "/out/song-7/drums.wav"])
        threading.Timer(0.1, run).start()
        return [(f"{PREFIX}/queued", [7, stems])]


@pytest.fixture(scope="module")
def port():
    stand_in = _StandIn()
    stand_in.server.start()
    yield stand_in.server.address[1]
    stand_in.server.stop()


def _send(*argv) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["send", *argv])
    return status, out.getvalue()


def test_status_is_labelled(port):
    status, out = _send("status", "--port", str(port))
    assert status == 0
    assert out.strip() == f"{PREFIX}/status/summary queued 0  running 1  done 3  error 0  cancelled 0  running job 7"
    status, out = _send("--port", str(port), "status", "7")
    assert out.strip() == f"{PREFIX}/status/reply job 7  running  22.2%  matching drums"


def test_wait_prints_progress_with_one_decimal(port, tmp_path):
    status, out = _send("submit", str(tmp_path), "--wait", "--port", str(port), "--timeout", "5")
    lines = out.strip().splitlines()
    assert status == 0 and lines[0] == f"{PREFIX}/queued 7 {tmp_path}"
    assert f"{PREFIX}/progress job 7  22.2%  matching drums" in lines  # not 22.200000762939453
    assert lines[-1].startswith(f"{PREFIX}/done 7 /out/song-7/manifest.json")


@pytest.mark.parametrize("argv", [
    ["send", "-v", "--port", "7711", "--timeout", "2", "ping"],
    ["send", "ping", "--port", "7711", "--timeout", "2", "-v"],
    ["-v", "send", "--port", "7711", "ping", "--timeout", "2"],
])
def test_options_and_verbose_anywhere(argv):
    args = build_parser(argv).parse_args(argv)
    assert (args.port, args.timeout, args.verbose, args.send_command) == (7711, 2.0, True, "ping")


def test_options_after_the_command_do_not_undo_those_before_it():
    argv = ["send", "--port", "7711", "--timeout", "2", "status"]
    args = build_parser(argv).parse_args(argv)
    assert (args.port, args.timeout, args.host, args.verbose) == (7711, 2.0, None, False)


def test_the_usage_names_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["send", "ping", "--no-such-option"])  # only send's module is imported
    usage = capsys.readouterr().err
    for name in COMMANDS:
        assert name in usage, name
