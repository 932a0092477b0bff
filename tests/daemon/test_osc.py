"""The OSC interface of a real daemon process over real UDP: bad packets and bad arguments get an
error reply and change nothing, paths outside the allowed roots are refused, and `mixdaemon send`
works for every command."""
import os
import socket
import struct
import subprocess
import sys

import numpy as np
import pytest
from pythonosc.osc_message_builder import OscMessageBuilder

from mixdaemon.daemon.osc import COMMANDS
from tests.support.daemon import (
    REPO,
    DaemonProcess,
    OscListener,
    daemon_config,
    request,
    send_cli,
    write_stems,
    write_toml,
)

ERROR = "/mixdaemon/error"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("osc")
    write_stems(tmp / "watch" / "song", seconds=0.5)  # a bounce with no reference: waits for one
    (tmp / "outside").mkdir()
    write_stems(tmp / "outside" / "song", seconds=0.5)
    os.symlink(tmp / "outside", tmp / "watch" / "escape")
    listener = OscListener()
    config = write_toml(tmp / "config.toml", daemon_config(tmp, listener.port))
    proc = DaemonProcess(config, tmp / "state").start()
    yield proc, listener, tmp
    listener.close()
    if proc.alive():
        proc.terminate()


def _is_error_without_job(address, args):
    return address == ERROR and args[0] == "-" and isinstance(args[1], str) and args[1]


def test_the_address_space_is_documented():
    doc = (REPO / "integrations" / "osc" / "ADDRESS_SPACE.md").read_text()
    for address, command in COMMANDS.items():
        assert f"`{address}`" in doc, address
        for reply in command.replies:
            assert reply in doc, reply


def test_malformed_packets_get_an_error_reply_and_the_daemon_keeps_serving(daemon):
    proc, listener, _ = daemon
    rng = np.random.default_rng(7)
    # Built with python-osc, not the daemon's own encoder: the truncated copy must be wrong by the
    # standard, not by the code under test.
    builder = OscMessageBuilder(address="/mixdaemon/status")
    builder.add_arg(1)
    valid = builder.build().dgram
    packets = {
        "random bytes": rng.integers(0, 256, 200, dtype=np.uint8).tobytes(),
        "empty": b"",
        "address only, unterminated": b"/mixdaemon/ping",
        "truncated argument": valid[:-2],
        "type tag without comma": b"/mixdaemon/status\0\0\0ii\0\0",
        "type tag promising more than sent": b"/mixdaemon/status\0\0\0,iii\0\0\0\0\0\0\x01",
        "unbalanced array": b"/mixdaemon/status\0\0\0,]\0\0",
        "garbage bundle": b"#bundle\0" + b"\0" * 8 + struct.pack(">i", 999) + b"xx",
        "bundle with a bad element size": b"#bundle\0" + b"\0" * 8 + struct.pack(">i", -5),
        "invalid utf-8 address": b"/mixdaemon/\xff\xfe\0\0\0\0",
    }
    for name, data in packets.items():
        start = len(listener.messages)
        listener.send_raw(proc.address, data)
        got = listener.wait_for(_is_error_without_job, 5, start)
        assert got is not None, name
    assert request(listener, proc.address, "/mixdaemon/ping", reply="/mixdaemon/pong")[0] == "/mixdaemon/pong"
    assert proc.alive()
    assert "malformed OSC packet" in proc.log()


@pytest.mark.parametrize("address, args, words", [
    ("/mixdaemon/cancel", ("abc",), "argument 1 (job_id) must be a job id (an integer from 0 to 2147483647), got string 'abc'"),
    ("/mixdaemon/status", (1.5,), "argument 1 (job_id) must be a job id (an integer from 0 to 2147483647), got float"),
    ("/mixdaemon/status", (2**40,), "argument 1 (job_id) must be a job id"),  # int64: no job
    ("/mixdaemon/preview", ("9" * 30,), "argument 1 (job_id) must be a job id"),
    ("/mixdaemon/cancel", (1e30,), "argument 1 (job_id) must be a job id"),
    ("/mixdaemon/submit", (42,), "argument 1 (stems_path) must be a string, got integer"),
    ("/mixdaemon/preview", (1, 2), "argument 2 (mode) must be a string"),
    ("/mixdaemon/cancel", (), "expects job_id, got 0 argument(s)"),
    ("/mixdaemon/ping", ("extra",), "expects no arguments, got 1"),
    ("/mixdaemon/launch", (), "unknown address"),
    ("/mixdaemon/status", (99999,), "job 99999: no such job"),
    ("/mixdaemon/preview", (1, "loud"), "mode 'loud': choose converted, original, ab"),
    ("/mixdaemon/submit", ("relative/path",), "give an absolute path"),
])
def test_wrong_arguments_get_an_error_that_names_the_problem(daemon, address, args, words):
    proc, listener, _ = daemon
    reply, values = request(listener, proc.address, address, *args)
    assert reply == ERROR and values[0] == "-"
    assert words in values[1]
    assert proc.alive()


def test_paths_outside_the_allowed_roots_are_refused(daemon):
    proc, listener, tmp = daemon
    for address, args in [("/mixdaemon/submit", ("/etc",)),
                          ("/mixdaemon/submit", (str(tmp / "outside" / "song"),)),
                          ("/mixdaemon/submit", (str(tmp / "watch" / "escape" / "song"),)),  # a symlink out
                          ("/mixdaemon/submit", (str(tmp / "watch" / "song"), "/etc/passwd")),
                          ("/mixdaemon/submit", (str(tmp / "watch" / "song"), "", "/tmp/elsewhere-out")),
                          ("/mixdaemon/submit/files", ("", "", str(tmp / "watch" / "song" / "bass.wav"), "/etc/hosts")),
                          ("/mixdaemon/reference", ("/etc/passwd",)),
                          ("/mixdaemon/reference", (str(tmp / "watch"), str(tmp / "outside" / "song")))]:
        reply, values = request(listener, proc.address, address, *args)
        assert reply == ERROR and "refused, outside the allowed roots" in values[1], (args, values)
    assert not (tmp / "elsewhere-out").exists()
    reply, values = request(listener, proc.address, "/mixdaemon/status", reply="/mixdaemon/status/summary")
    assert values[:5] == [0, 0, 0, 0, 0]  # nothing was queued


def _free_udp_port() -> int:
    """A UDP port number that nothing listens on (bound, then released)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_send_command_line_client(daemon):
    proc, listener, tmp = daemon
    # Once as a real command, through the module entry point.
    ping = subprocess.run([sys.executable, "-m", "mixdaemon", "send", "--port", str(proc.port), "ping"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert ping.returncode == 0 and ping.stdout.startswith("/mixdaemon/pong 0.")
    status, out, _ = send_cli(proc.port, "status")
    assert status == 0 and out.startswith("/mixdaemon/status/summary")
    status, out, _ = send_cli(proc.port, "status", "4242")
    assert status == 1 and "job 4242: no such job" in out
    status, out, _ = send_cli(proc.port, "cancel", "4242")
    assert status == 1 and "job 4242: no such job" in out
    status, out, _ = send_cli(proc.port, "preview", "4242", "--mode", "ab")
    assert status == 1 and "job 4242: no such job" in out
    status, out, _ = send_cli(proc.port, "submit", "/etc")
    assert status == 1 and "outside the allowed roots" in out
    status, out, _ = send_cli(proc.port, "preview-stop")
    assert status == 0 and out.strip() == "/mixdaemon/preview/stopped 0"
    status, out, _ = send_cli(proc.port, "subscribe")
    assert status == 0 and out.strip() == "/mixdaemon/subscribed"
    # The default reference: set (kept in the job database), then cleared.
    ref = tmp / "watch" / "song" / "drums.wav"
    status, out, _ = send_cli(proc.port, "reference", str(ref))
    assert status == 0 and out.strip() == f"/mixdaemon/reference/ok  {ref}"
    status, out, _ = send_cli(proc.port, "reference", "--clear")
    assert status == 0 and out.strip() == "/mixdaemon/reference/ok"
    # Nobody listening on that port: exit status 3 after the timeout.
    status, _, err = send_cli(_free_udp_port(), "ping", timeout=0.5)
    assert status == 3 and "no reply from" in err
