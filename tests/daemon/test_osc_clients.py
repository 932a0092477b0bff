"""Clients that do not receive on the port they send from (liblo's oscsend, python-osc's
SimpleUDPClient) get every reply at the configured reply target: a real daemon process, real UDP,
and the real liblo tools where they are installed."""
import shutil
import socket
import subprocess
import time

import pytest

from mixdaemon.daemon.osc import OscClient
from tests.support.daemon import DONE, QUEUED, DaemonProcess, daemon_config, write_stems, write_toml

SUMMARY, ERROR = "/mixdaemon/status/summary", "/mixdaemon/error"


@pytest.fixture
def daemon(tmp_path, listener, reference):
    """A daemon whose reply target is the listener."""
    config = write_toml(tmp_path / "config.toml", daemon_config(tmp_path, listener.port, reference=str(reference)))
    proc = DaemonProcess(config, tmp_path / "state").start()
    yield proc
    proc.kill()


def test_replies_to_a_client_go_to_the_reply_target_too_each_message_once(tmp_path, listener, daemon):
    client = OscClient(*daemon.address)  # sends from a port of its own, which is not the reply target
    try:
        start = len(listener.messages)
        assert client.request("/mixdaemon/status")[0] == SUMMARY
        assert listener.wait_for(lambda a, _: a == SUMMARY, 5, start) is not None
        assert client.request("/mixdaemon/status", [4242])[0] == ERROR
        assert listener.wait_for(lambda a, args: a == ERROR and "job 4242: no such job" in args[1], 5, start)

        # A job submitted by the client: the reply target hears its queued message once (as a copy
        # of the reply, not again as a notification), and the end.
        song = tmp_path / "watch" / "song"
        write_stems(song, seconds=1.0, seed=3)
        done = listener.wait_for(lambda a, _: a == DONE, 60, start)
        assert done is not None, daemon.log()[-2000:]
        reply, args = client.request("/mixdaemon/submit", [str(song)], timeout=10)
        assert (reply, args[0]) == (QUEUED, done[2][0])  # the same work: that job, done
        time.sleep(0.3)
        queued = [m for m in listener.messages[start:] if m[1] == QUEUED]
        assert [m[2][0] for m in queued] == [done[2][0], done[2][0]]  # the watcher's, then the reply's copy
    finally:
        client.close()


@pytest.mark.skipif(not (shutil.which("oscsend") and shutil.which("oscdump")),
                    reason="liblo's oscsend and oscdump are not installed (Debian: liblo-tools)")
def test_liblo_oscsend_gets_its_status_reply_at_the_reply_port(tmp_path, reference):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a free port for oscdump
        s.bind(("127.0.0.1", 0))
        reply_port = s.getsockname()[1]
    dump = subprocess.Popen(["oscdump", "-L", str(reply_port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    config = write_toml(tmp_path / "config.toml", daemon_config(tmp_path, reply_port, reference=str(reference)))
    proc = DaemonProcess(config, tmp_path / "state").start()
    try:
        host, port = proc.address
        for address in ("/mixdaemon/status", "/mixdaemon/ping"):
            sent = subprocess.run(["oscsend", host, str(port), address], capture_output=True, text=True, timeout=10)
            assert sent.returncode == 0, sent.stderr
        time.sleep(1.0)
    finally:
        proc.kill()
        dump.terminate()
    lines = dump.communicate(timeout=10)[0].splitlines()
    assert any(line.endswith(f" {SUMMARY} iiiiii 0 0 0 0 0 -1") for line in lines), lines  # after a time tag
    assert any(' /mixdaemon/pong s "0.' in line for line in lines), lines
