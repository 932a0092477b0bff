"""The request-file bridge under hostile or broken request files (issue 16, F6), with a real daemon
subprocess, real files, FIFOs and symlinks: every request file is either served or answered with
one error reply, without reading what it must not, blocking, looping or stopping the daemon."""
import os
import socket
import time

import pytest

from mixdaemon.daemon.config import load_config
from mixdaemon.daemon.osc import encode
from mixdaemon.daemon.requestfiles import MAX_REQUEST_BYTES, escape, parse_reply
from mixdaemon.daemon.service import Daemon
from tests.support.daemon import DaemonProcess, daemon_config, make_reference, write_stems, write_toml

PING = "mixdaemon-request 1\naddress=/mixdaemon/ping\nend\n"
FINAL = ("done", "error", "cancelled", "ok", "warning")


def put(folder, name: str, text: str) -> None:
    """Write a request as a client should: under another name, then renamed into place."""
    (folder / f".{name}.tmp").write_text(text, encoding="utf-8")
    (folder / f".{name}.tmp").rename(folder / f"{name}.request")


def reply(folder, name: str) -> dict | None:
    path = folder / f"{name}.reply"
    return parse_reply(path.read_text(encoding="utf-8")) if path.exists() else None


def wait_final(folder, names, timeout: float = 20.0) -> dict[str, dict]:
    """The final replies of the requests `names` (those that have one after timeout)."""
    deadline, got = time.monotonic() + timeout, {}
    while time.monotonic() < deadline and len(got) < len(names):
        for name in names:
            status = reply(folder, name)
            if status is not None and status.get("state") in FINAL:
                got[name] = status
        time.sleep(0.05)
    return got


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("requests")
    reference = make_reference(tmp / "refs", seconds=3.0)
    config = write_toml(tmp / "config.toml", daemon_config(tmp, None, reference=str(reference),
                                                           allowed_roots=[str(tmp / "music")]))
    proc = DaemonProcess(config, tmp / "state").start()
    running = {"proc": proc, "config": config, "tmp": tmp, "folder": tmp / "state" / "requests"}
    yield running
    if running["proc"].alive():
        running["proc"].kill()


def test_a_fifo_or_a_link_as_a_request_is_refused_unread_and_the_next_one_is_served(daemon, tmp_path):
    folder = daemon["folder"]
    outside = tmp_path / "outside.request"  # a valid request, but not in the request folder
    outside.write_text(PING)
    os.mkfifo(folder / "a1-fifo.request")  # opened plainly, it blocks until someone writes
    os.symlink("/dev/zero", folder / "a2-zero.request")  # read whole, it never ends
    os.symlink(outside, folder / "a3-outside.request")
    put(folder, "a4-ping", PING)
    names = ["a1-fifo", "a2-zero", "a3-outside", "a4-ping"]
    replies = wait_final(folder, names, timeout=10)
    assert replies.get("a4-ping", {}).get("state") == "ok", "a request after a FIFO or a link was not served"
    assert "not a regular file" in replies["a1-fifo"]["message"]
    for name in ("a2-zero", "a3-outside"):
        assert replies[name]["state"] == "error" and "a symbolic link" in replies[name]["message"]
    for name in names[:3]:
        assert "\n" not in replies[name]["message"] and f"{name}.request" in replies[name]["message"]
    assert (folder / "a1-fifo.request").exists() and outside.read_text() == PING  # nothing removed or written
    assert daemon["proc"].alive()


def test_a_reply_file_holds_only_what_the_daemon_itself_sent(daemon):
    # A job that runs for a while, followed through a request file; meanwhile another local program
    # sends the daemon's own notifications for that job to the daemon's port (the only socket there
    # is), as if it were the daemon: the reply file must show none of it.
    folder, tmp = daemon["folder"], daemon["tmp"]
    stems = tmp / "music" / "Long Song"
    write_stems(stems, seconds=10.0, seed=4)
    put(folder, "b1-submit", f"mixdaemon-request 1\naddress=/mixdaemon/submit\narg={escape(str(stems))}\nend\n")
    deadline = time.monotonic() + 30
    while (reply(folder, "b1-submit") or {}).get("job_id") is None and time.monotonic() < deadline:
        time.sleep(0.02)
    job_id = int(reply(folder, "b1-submit")["job_id"])
    forger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for address, args in (("/mixdaemon/progress", [job_id, 99.0, "forged"]),
                              ("/mixdaemon/done", [job_id, "/forged/manifest.json"]),
                              ("/mixdaemon/error", [job_id, "forged failure"])):
            forger.sendto(encode(address, args), daemon["proc"].address)
        put(folder, "b2-ping", PING)
        forger.sendto(encode("/mixdaemon/ping"), daemon["proc"].address)  # answered after the forged ones
        forger.settimeout(10)
        forger.recvfrom(65535)
    finally:
        forger.close()
    during = reply(folder, "b1-submit")
    assert during["state"] in ("queued", "running"), f"the job ended before the forged messages came: {during}"
    assert "forged" not in str(during)
    final = wait_final(folder, ["b1-submit"], timeout=120)["b1-submit"]
    assert final["state"] == "done" and "forged" not in str(final)
    manifest = final["manifest"]
    assert manifest.startswith(str(tmp / "out")) and os.path.isfile(manifest)


def test_an_oversized_request_is_refused_unread_and_a_long_one_is_logged_in_short(daemon):
    folder, proc = daemon["folder"], daemon["proc"]
    log_before = len(proc.log())
    (folder / "c1-huge.request").write_bytes(b"mixdaemon-request 1\naddress=/mixdaemon/ping\narg=" + b"x" * (4 << 20))
    long_arg = "y" * (MAX_REQUEST_BYTES - 100)
    put(folder, "c2-long", f"mixdaemon-request 1\naddress=/mixdaemon/ping\narg={long_arg}\nend\n")
    replies = wait_final(folder, ["c1-huge", "c2-long"])
    assert replies["c1-huge"]["state"] == "error" and f"over the {MAX_REQUEST_BYTES}-byte limit" in replies["c1-huge"]["message"]
    assert replies["c2-long"]["state"] == "error" and "expects no arguments" in replies["c2-long"]["message"]
    logged = proc.log()[log_before:]
    assert len(logged) < 3000 and "y" * 200 in logged and "y" * 250 not in logged


def test_a_request_that_fails_is_answered_once_and_the_ones_after_it_are_served(daemon):
    folder, proc = daemon["folder"], daemon["proc"]
    put(folder, "d1-cancel", "mixdaemon-request 1\naddress=/mixdaemon/cancel\narg=\u00b2\nend\n")  # isdigit(), not int()
    long_name = "d2-" + "n" * 244  # its request fits in a file name, its reply's partial file does not
    put(folder, long_name, PING)
    put(folder, "d3-ping", PING)
    replies = wait_final(folder, ["d1-cancel", "d3-ping"])
    assert replies["d1-cancel"]["state"] == "error" and "must be a job id" in replies["d1-cancel"]["message"]
    assert replies["d3-ping"]["state"] == "ok"
    time.sleep(1.0)  # five more scans: none may take either request again
    log = proc.log()
    assert log.count("cannot write its reply") == 1 and "unexpected error" not in log
    assert log.count("request d1-cancel: /mixdaemon/cancel") == 1


def test_a_half_written_request_is_read_only_once_its_end_line_is_there(daemon):
    folder, proc = daemon["folder"], daemon["proc"]
    music = daemon["tmp"] / "music"
    path = folder / "e1-submit.request"
    # Written in place, in pieces, by a client that does not rename: cut in a line, then at a line's end.
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"mixdaemon-request 1\naddress=/mixdaemon/submit\narg={music}/Half")
        f.flush()
        time.sleep(0.6)  # three scans
        assert reply(folder, "e1-submit") is None, "a request cut in a line was read"
        f.write(" Song\n")
        f.flush()
        time.sleep(0.6)
        assert reply(folder, "e1-submit") is None, "a request without its end line was read"
        f.write("end\n")
    replies = wait_final(folder, ["e1-submit"])
    # The whole path, not the part written first.
    assert replies["e1-submit"]["state"] == "error" and f"{music}/Half Song: not found" in replies["e1-submit"]["message"]
    assert f"/mixdaemon/submit {music}/Half Song" in proc.log()
    (folder / "e2-junk.request").write_text("hello\n")  # no header: refused at once, not waited for
    assert "not a request file" in wait_final(folder, ["e2-junk"], timeout=2)["e2-junk"]["message"]


def test_a_request_that_never_gets_its_end_line_is_answered_with_an_error(tmp_path):
    config = write_toml(tmp_path / "config.toml", daemon_config(tmp_path, None))
    daemon = Daemon(load_config(config))
    daemon.requests.answer_seconds = 0.5
    daemon.start()
    try:
        folder = daemon.requests.folder
        (folder / "f1.request").write_text("mixdaemon-request 1\naddress=/mixdaemon/ping\n")
        status = wait_final(folder, ["f1"], timeout=5)["f1"]
        assert status["state"] == "error" and "no final 'end' line after 0.5 s" in status["message"]
    finally:
        daemon.stop()


def test_a_bad_pending_reply_file_is_reported_and_skipped_at_start(tmp_path):
    config = write_toml(tmp_path / "config.toml", daemon_config(tmp_path, None))
    folder = tmp_path / "state" / "requests"
    folder.mkdir(parents=True)
    submit = "mixdaemon-request 1\naddress=/mixdaemon/submit\narg=/nowhere\nend\n"
    (folder / "g1.request").write_text(submit)
    (folder / "g1.reply").write_text("mixdaemon-reply 1\nstate=queued\njob_id=\u00b2\n")  # not a job id
    (folder / "g2.request").write_text(submit)
    os.mkfifo(folder / "g2.reply")  # read plainly at start, it blocks the start
    (folder / "g3.request").write_bytes(b"\xff\xfe not UTF-8")
    (folder / "g3.reply").write_text("mixdaemon-reply 1\nstate=running\njob_id=1\n")
    proc = DaemonProcess(config, tmp_path / "state").start(timeout=30)
    try:
        put(folder, "g4-ping", PING)
        replies = wait_final(folder, ["g1", "g4-ping"], timeout=10)
        assert replies["g4-ping"]["state"] == "ok"
        assert replies["g1"]["state"] == "error" and "stopped before answering" in replies["g1"]["message"]
        log = proc.log()
        assert "request g2: cannot resume it, skipped: reply file" in log and "not a regular file" in log
        assert "request g3: cannot resume it, skipped:" in log
    finally:
        proc.kill()


def test_a_burst_of_300_requests_is_answered_in_full(daemon):
    folder = daemon["folder"]
    names = [f"h{i:03d}" for i in range(300)]
    for name in names:
        put(folder, name, PING)
    replies = wait_final(folder, names, timeout=60)
    assert sorted(n for n, r in replies.items() if r["state"] == "ok") == names


def test_a_link_planted_at_a_reply_name_is_replaced_and_never_written_through(daemon, tmp_path):
    folder = daemon["folder"]
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's file\n")
    os.symlink(victim, folder / ".i1.reply.tmp")  # the old bridge's temporary name
    put(folder, "i1", PING)
    assert wait_final(folder, ["i1"])["i1"]["state"] == "ok"
    assert victim.read_text() == "the user's file\n" and not (folder / "i1.reply").is_symlink()
