"""The REAPER integration: the Lua ReaScripts in integrations/reaper run under a real Lua 5.4
against a stub `reaper` API (tests/support/reaper_stub.lua, which records every call and renders real
WAV files), and talk to a real daemon process, through request files and through OSC."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from mixdaemon.daemon.requestfiles import escape, unescape
from tests.support.daemon import (
    REPO,
    DaemonProcess,
    daemon_config,
    make_reference,
    song_stems,
    write_toml,
)
from tests.support.reaper import (
    HAS_LUASOCKET,
    LUA,
    LUAC,
    SCRIPTS,
    STUB,
    Reaper,
    calls_named,
    render_settings_before,
    tone,
    write_wav,
)

pytestmark = pytest.mark.skipif(LUA is None or LUAC is None,
                                reason="lua5.4/luac5.4 not installed (apt-get install lua5.4, or scripts/setup.sh as root)")
RENDER_ACTION = 42230


# --- a running daemon ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reaper")
    projects = tmp / "projects"
    reference = make_reference(projects / "refs", seconds=2.5)
    config = write_toml(tmp / "config.toml", daemon_config(tmp, None, allowed_roots=[str(projects)]))
    proc = DaemonProcess(config, tmp / "state").start()
    assert (tmp / "state" / "requests").is_dir(), "the daemon does not serve its request folder (Daemon.requests)"
    running = {"proc": proc, "config": config, "tmp": tmp, "projects": projects, "reference": reference,
               "state": tmp / "state"}
    yield running
    if running["proc"].alive():  # a test may have restarted it
        running["proc"].terminate()


# The user's own render settings, which the scripts must leave as they found them.
USER_RENDER_SETTINGS = {"RENDER_FILE": "/somewhere/else", "RENDER_PATTERN": "$project", "RENDER_FORMAT": "l3pm",
                        "RENDER_SETTINGS": 0, "RENDER_BOUNDSFLAG": 2, "RENDER_CHANNELS": 1, "RENDER_SRATE": 48000,
                        "RENDER_ADDTOPROJ": 1, "RENDER_NORMALIZE": 1, "RENDER_TAILFLAG": 4}
TRACKS = (  # name, stem of the synthetic song it plays, first item position (s), selected
    ("Kick", "drums", 0.5, True),
    ("Snare", "drums", 0.25, True),
    ("Bass DI", "bass", 0.5, True),
    ("Piano", "other", 0.0, False),
    ("Lead Vöx", "vocals", 1.0, True),
)


def make_project(daemon: dict, name: str, seed: int, transport: str = "file", last_job: str = "",
                 **settings) -> tuple[Reaper, Path]:
    """A REAPER project folder (under the daemon's allowed root) with tracks whose renders are a
    synthetic song's stems; `settings` go to the scripts' ExtState."""
    folder = daemon["projects"] / name
    stems = song_stems(2.5, seed=seed)
    tracks = []
    for i, (track, stem, start, selected) in enumerate(TRACKS):
        # Two drum tracks share the drum stem: each plays half of it.
        audio = stems[stem] * (0.5 if stem == "drums" else 1.0)
        render_source = write_wav(folder / "fixtures" / f"{track}.wav", audio)
        tracks.append({"guid": f"{{GUID-{i}}}", "name": track, "selected": selected, "render_source": str(render_source),
                       "items": [{"position": start, "length": 2.5 - start, "takes": []}]})
    project = {
        "project_file": str(folder / f"{name}.rpp"), "project_media_path": str(folder / "Media"),
        "tracks": tracks,
        "ext_state": {"mixdaemon": {"transport": transport, "state_dir": str(daemon["state"]), "auto_import": "0",
                                    **settings}},
        "proj_ext_state": {"mixdaemon": {"reference": str(daemon["reference"]), "last_job": last_job}},
        "render": dict(USER_RENDER_SETTINGS),
    }
    return Reaper(folder, project), folder


def last_job(result: dict) -> dict:
    """The project's record of its last conversion (escaped twice, like the scripts write it)."""
    text = unescape(result["proj_ext_state"]["mixdaemon"]["last_job"])
    job: dict = {}
    for line in text.split("\n"):
        key, _, value = line.partition("=")
        job.setdefault(key, []).append(unescape(value))
    return job


def request_files(daemon) -> list[str]:
    return sorted(p.name for p in (daemon["state"] / "requests").iterdir())


@pytest.fixture(scope="module")
def converted(daemon):
    """A project whose selected tracks the convert script rendered and sent (request files), and
    whose job the daemon finished."""
    reaper, folder = make_project(daemon, "Song", seed=11)
    result = reaper.run("mixdaemon_convert_selected_tracks.lua")
    return {"reaper": reaper, "folder": folder, "result": result, "job": last_job(result),
            "requests_left": request_files(daemon)}


# --- the scripts themselves ------------------------------------------------------------------------

def test_every_lua_file_compiles():
    files = sorted(SCRIPTS.glob("*.lua")) + [STUB]
    assert len(files) >= 10
    for path in files:
        done = subprocess.run([LUAC, "-p", str(path)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


def run_lua(folder: Path, code: str, *args: str) -> str:
    """Run a Lua chunk (arg[1], arg[2]... are args) and return what it printed."""
    script = folder / "chunk.lua"
    script.write_text(code, encoding="utf-8")
    return subprocess.run([LUA, str(script), *args], capture_output=True, encoding="utf-8", check=True).stdout


def test_lua_osc_messages_are_the_ones_python_osc_reads_and_writes(tmp_path):
    osc = str(SCRIPTS / "mixdaemon_osc.lua")
    encode = """local OSC = dofile(arg[1])
for _, case in ipairs({{"/mixdaemon/submit", {"/home/me/Bounces/Sóng 1", "", "/out"}}, {"/mixdaemon/status", {12}},
                       {"/mixdaemon/ping", {}}, {"/t", {1.5, -3, true, false, {blob = "\\0\\1\\2"}, "abcd"}}}) do
  io.write((OSC.encode(case[1], case[2]):gsub(".", function(c) return ("%02x"):format(c:byte()) end)), "\\n")
end"""
    lines = run_lua(tmp_path, encode, osc).split()
    decoded = [OscMessage(bytes.fromhex(line)) for line in lines]
    assert [(m.address, list(m.params)) for m in decoded] == [
        ("/mixdaemon/submit", ["/home/me/Bounces/Sóng 1", "", "/out"]), ("/mixdaemon/status", [12]),
        ("/mixdaemon/ping", []), ("/t", [1.5, -3, True, False, b"\0\1\2", "abcd"])]

    def built(address, *args):
        builder = OscMessageBuilder(address)
        for a in args:
            builder.add_arg(a)
        return builder.build()

    done = built("/mixdaemon/done", 7, "/r/manifest.json", "/r/drums.wav")
    bundle = (b"#bundle\0" + bytes(8) + len(done.dgram).to_bytes(4, "big") + done.dgram
              + len(built("/mixdaemon/progress", 7, 42.5, "limiting").dgram).to_bytes(4, "big")
              + built("/mixdaemon/progress", 7, 42.5, "limiting").dgram)
    decode = """local OSC = dofile(arg[1])
for i = 2, #arg do
  for _, m in ipairs(OSC.decode((arg[i]:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end)))) do
    local parts = {m.address}
    for j = 1, m.n do parts[#parts + 1] = (math.type(m.args[j]) or type(m.args[j])) .. ":" .. tostring(m.args[j]) end
    print(table.concat(parts, "|"))
  end
end"""
    packets = [built("/mixdaemon/error", "-", "ü: refused").dgram, built("/mixdaemon/pong", "0.1.0").dgram, bundle]
    out = run_lua(tmp_path, decode, osc, *(p.hex() for p in packets)).splitlines()
    assert out == ["/mixdaemon/error|string:-|string:ü: refused", "/mixdaemon/pong|string:0.1.0",
                   "/mixdaemon/done|integer:7|string:/r/manifest.json|string:/r/drums.wav",
                   "/mixdaemon/progress|integer:7|float:42.5|string:limiting"]


def test_set_reference_renders_the_selected_item_to_a_wav_in_the_project(tmp_path):
    song = write_wav(tmp_path / "media" / "Great Song.wav", tone(1.0, 440))
    tracks = [{"guid": "{R}", "name": "Ref", "items": [{"position": 4.0, "length": 1.0, "selected": True,
                                                         "takes": [{"name": "Great Song", "startoffs": 0,
                                                                    "source": {"file": str(song), "length": 1.0}}]}]}]
    reaper = Reaper(tmp_path, {"project_file": str(tmp_path / "P.rpp"), "tracks": tracks, "render": dict(USER_RENDER_SETTINGS)})
    result = reaper.run("mixdaemon_set_reference.lua")
    assert result.get("error") is None and result["boxes"] == []
    reference = Path(result["proj_ext_state"]["mixdaemon"]["reference"])
    assert reference.parent == tmp_path / "mixdaemon" / "references" and reference.name.startswith("Great Song-")
    assert reference.read_bytes() == song.read_bytes()
    render_at = [i for i, (name, _) in enumerate(result["calls"]) if name == "Main_OnCommand"]
    assert calls_named(result, "Main_OnCommand") == [[RENDER_ACTION, 0]]
    assert render_settings_before(result, render_at[0]) == {
        "RENDER_FILE": str(reference.parent), "RENDER_PATTERN": reference.stem, "RENDER_FORMAT": "evaw",
        "RENDER_SETTINGS": 32, "RENDER_BOUNDSFLAG": 4, "RENDER_CHANNELS": 2, "RENDER_SRATE": 0,
        "RENDER_ADDTOPROJ": 0, "RENDER_NORMALIZE": 0, "RENDER_TAILFLAG": 0}
    assert result["render"] == USER_RENDER_SETTINGS  # the user's render settings are back


def test_set_reference_without_a_selected_item_asks_for_a_file(tmp_path):
    song = write_wav(tmp_path / "Ref.wav", tone(0.5, 110))
    reaper = Reaper(tmp_path, {"project_file": str(tmp_path / "P.rpp"), "answers": {"user_file": str(song)}})
    result = reaper.run("mixdaemon_set_reference.lua")
    assert result["proj_ext_state"]["mixdaemon"]["reference"] == str(song)
    assert calls_named(result, "Main_OnCommand") == [] and len(calls_named(result, "GetUserFileNameForRead")) == 1


def test_a_full_mix_comes_back_as_four_stem_tracks_below_it(tmp_path):
    # One track not named like a stem is a full mix: the daemon separated it into four stems.
    render = write_wav(tmp_path / "renders" / "Bounce ñ.wav", tone(1.0, 220))
    result_dir = tmp_path / "Bounce-7"
    outputs = {s: str(write_wav(result_dir / f"{s}.wav", tone(1.0, hz))) for s, hz in (("drums", 60), ("bass", 80),
                                                                                        ("other", 500), ("vocals", 900))}
    manifest = result_dir / "manifest.json"
    manifest.write_text(json.dumps({"job_id": 7, "inputs": [{"path": str(render), "role": "other", "sha256": None}],
                                    "outputs": {**outputs, "mixture": outputs["drums"]}, "loudness_lufs": {"after": {"bass": -1e-05}}},
                                   ensure_ascii=True, indent=2))
    record = ["name=Bounce", "job_id=7", "state=done", f"manifest={escape(str(manifest))}", "render_start=0",
              "track_guid={MIX}", f"track_name={escape('Bounce ñ')}", f"track_file={escape(str(render))}", "track_start=0.5"]
    tracks = [{"guid": "{A}", "name": "Click", "items": []}, {"guid": "{MIX}", "name": "Bounce ñ", "items": []},
              {"guid": "{B}", "name": "Notes", "items": []}]
    reaper = Reaper(tmp_path, {"tracks": tracks, "proj_ext_state": {"mixdaemon": {"last_job": escape("\n".join(record))}}})
    result = reaper.run("mixdaemon_import_result.lua")
    assert result.get("error") is None and result["boxes"] == [], result
    assert [t["name"] for t in result["tracks"]] == ["Click", "Bounce ñ"] + [
        f"Bounce ñ {s} (converted)" for s in ("drums", "bass", "other", "vocals")] + ["Notes"]
    for track in result["tracks"][2:6]:
        stem = track["name"].split()[-2]
        assert track["items"][0]["takes"][0]["source"]["file"] == outputs[stem]
        assert track["items"][0]["position"] == 0.5


def test_settings_are_saved_and_a_wrong_transport_is_refused(tmp_path):
    answers = "file,127.0.0.1,9001,/state,,/work,0,/opt/luasocket/?.so"
    reaper = Reaper(tmp_path, {"answers": {"user_inputs": answers}})
    result = reaper.run("mixdaemon_settings.lua")
    assert result["ext_state"]["mixdaemon"] == {"transport": "file", "osc_host": "127.0.0.1", "osc_port": "9001",
                                                "state_dir": "/state", "requests_dir": "", "work_dir": "/work",
                                                "auto_import": "0", "lua_cpath": "/opt/luasocket/?.so"}
    reaper = Reaper(tmp_path, {"answers": {"user_inputs": "udp,,,,,,,"}})
    result = reaper.run("mixdaemon_settings.lua")
    assert "mixdaemon" not in result["ext_state"] and "transport 'udp'" in result["boxes"][0]


def test_without_a_daemon_nothing_is_rendered_and_the_user_is_told(tmp_path):
    nothing_there = {"projects": tmp_path, "state": tmp_path / "no-daemon-here", "reference": tmp_path / "ref.wav"}
    reaper, _ = make_project(nothing_there, "NoDaemon", seed=1)
    result = reaper.run("mixdaemon_convert_selected_tracks.lua")
    assert calls_named(result, "Main_OnCommand") == []
    assert len(result["boxes"]) == 1 and "is `mixdaemon serve` running" in result["boxes"][0]


# --- with the daemon: request files ----------------------------------------------------------------

def test_convert_renders_the_selected_tracks_as_stems_and_leaves_the_render_settings_as_they_were(converted):
    result, folder = converted["result"], converted["folder"]
    assert result.get("error") is None, result["error"]
    render_at = [i for i, (name, _) in enumerate(result["calls"]) if name == "Main_OnCommand"]
    assert len(render_at) == 1 and result["calls"][render_at[0]][1] == [RENDER_ACTION, 0]
    before = render_settings_before(result, render_at[0])
    render_dir = Path(before["RENDER_FILE"])
    assert render_dir.parent == folder / "mixdaemon" / "renders" and render_dir.name.startswith("Song-")
    assert before == {"RENDER_FILE": str(render_dir), "RENDER_PATTERN": "$track", "RENDER_FORMAT": "evaw",
                      "RENDER_SETTINGS": 2, "RENDER_BOUNDSFLAG": 1, "RENDER_CHANNELS": 2, "RENDER_SRATE": 0,
                      "RENDER_ADDTOPROJ": 0, "RENDER_NORMALIZE": 0, "RENDER_TAILFLAG": 0}
    assert ["RecursiveCreateDirectory", [str(render_dir), 0]] in [list(c) for c in result["calls"][:render_at[0]]]
    selected = [name for name, _, _, chosen in TRACKS if chosen]
    assert sorted(p.name for p in render_dir.iterdir()) == sorted(f"{n}.wav" for n in selected)
    for name in selected:
        assert (render_dir / f"{name}.wav").read_bytes() == (folder / "fixtures" / f"{name}.wav").read_bytes()
    assert result["render"] == USER_RENDER_SETTINGS


def test_the_daemon_converts_what_the_script_sent_and_the_script_shows_it(converted, daemon):
    job, folder, result = converted["job"], converted["folder"], converted["result"]
    job_id = int(job["job_id"][0])
    assert job["state"] == ["done"]
    manifest_path = Path(job["manifest"][0])
    assert manifest_path.parent == folder / "mixdaemon" / f"{job['name'][0]}-{job_id}"
    manifest = json.loads(manifest_path.read_text())
    render_dir = Path(job["render_dir"][0])
    assert manifest["job_id"] == job_id and manifest["engine"] == "match"
    assert {Path(i["path"]).name: i["role"] for i in manifest["inputs"]} == {
        "Kick.wav": "drums", "Snare.wav": "drums", "Bass DI.wav": "bass", "Lead Vöx.wav": "vocals"}
    assert all(Path(i["path"]).parent == render_dir.resolve() for i in manifest["inputs"])
    assert manifest["reference"]["path"] == str(daemon["reference"].resolve())
    assert job["track_file"] == [str(render_dir / f"{n}.wav") for n, _, _, chosen in TRACKS if chosen]
    console = result["console"]
    # Progress lines (which ones depends on when the script polls), then done.
    assert re.search(rf"^mixdaemon: job {job_id}: \d+% \w", console, re.M)
    assert console.rstrip().endswith(f"mixdaemon: job {job_id} done: {manifest_path.parent}") and result["boxes"] == []
    log = daemon["proc"].log()
    assert f"/mixdaemon/submit {render_dir}" in log and f"job {job_id}: done" in log  # the daemon's request folder
    assert f"job {job_id}: queued from request:" in log  # served in the daemon's process, not over UDP
    assert converted["requests_left"] == []  # the script removed its request and reply


def test_import_puts_each_converted_stem_below_its_tracks_where_they_start(converted):
    reaper, job = converted["reaper"], converted["job"]
    result = reaper.run("mixdaemon_import_result.lua")
    assert result.get("error") is None and result["boxes"] == [], result
    out_dir = Path(job["manifest"][0]).parent
    assert [t["name"] for t in result["tracks"]] == [
        "Kick", "Snare", "Kick + Snare (converted)", "Bass DI", "Bass DI (converted)", "Piano", "Lead Vöx",
        "Lead Vöx (converted)"]
    # Bottom up, so that the positions above stay valid: below Lead Vöx (5), Bass DI (3), Snare (2).
    assert calls_named(result, "InsertTrackAtIndex") == [[5, True], [3, True], [2, True]]
    assert calls_named(result, "PCM_Source_CreateFromFile") == [[str(out_dir / f"{s}.wav")] for s in ("vocals", "bass", "drums")]
    assert calls_named(result, "Undo_EndBlock") == [["mixdaemon: import converted stems", -1]]
    new = {t["name"]: t for t in result["tracks"] if t["name"].endswith("(converted)")}
    for name, stem, start in (("Kick + Snare (converted)", "drums", 0.25), ("Bass DI (converted)", "bass", 0.5),
                              ("Lead Vöx (converted)", "vocals", 1.0)):
        [item] = new[name]["items"]
        [take] = item["takes"]
        seconds = sf.info(out_dir / f"{stem}.wav").duration
        assert take["source"]["file"] == str(out_dir / f"{stem}.wav") and take["name"] == f"{stem}.wav"
        assert item["position"] == start and take["startoffs"] == start  # aligned with the render's start (0)
        assert item["length"] == pytest.approx(seconds - start) and seconds == pytest.approx(2.5)
    originals = {t["name"]: t["items"] for t in result["tracks"] if not t["name"].endswith("(converted)")}
    assert originals["Kick"] == [{"position": 0.5, "length": 2.0, "takes": []}]
    assert "imported 3 converted stem(s)" in result["console"]


def test_import_asks_the_daemon_where_a_result_is_that_the_project_has_not_seen(converted, daemon):
    # As after REAPER was closed during the job: the project knows the job, not its result.
    job = converted["job"]
    record = [f"{key}={escape(job[key][0])}" for key in ("name", "job_id", "render_dir", "render_start")]
    record.append("state=running")
    for i in range(len(job["track_guid"])):
        record += [f"track_{key}={escape(job['track_' + key][i])}" for key in ("guid", "name", "file", "start")]
    reaper, _ = make_project(daemon, "SongReopened", seed=11, last_job=escape("\n".join(record)))
    result = reaper.run("mixdaemon_import_result.lua")
    assert result.get("error") is None and result["boxes"] == [], result
    assert f"mixdaemon: job {job['job_id'][0]}: done 100% done " in result["console"]
    assert "imported 3 converted stem(s)" in result["console"]
    assert last_job(result)["manifest"] == job["manifest"]
    assert len(calls_named(result, "InsertTrackAtIndex")) == 3


def test_preview_stop_cancel_and_status_show_the_daemons_replies(converted):
    reaper, job_id = converted["reaper"], converted["job"]["job_id"][0]
    preview = reaper.run("mixdaemon_preview_ab.lua")
    # No audio device here: the daemon answers with a warning, shown in a message box.
    assert len(preview["boxes"]) == 1 and preview["boxes"][0].startswith("warning: ") and "audio" in preview["boxes"][0]
    stop = reaper.run("mixdaemon_stop_preview.lua")
    assert "mixdaemon: nothing was playing" in stop["console"] and stop["boxes"] == []
    cancel = reaper.run("mixdaemon_cancel.lua")  # too late: the job is done
    assert cancel["boxes"] == [f"error: job {job_id}: is done; only queued or running jobs can be cancelled"]
    status = reaper.run("mixdaemon_status.lua")
    lines = status["console"].splitlines()
    assert any(" queued, 0 running, " in line and " done, " in line for line in lines), lines
    assert f"mixdaemon: job {job_id}: done 100% done " in status["console"]


def test_a_refused_request_is_shown_with_the_daemons_reason(daemon, tmp_path):
    reaper, _ = make_project(daemon, "Elsewhere", seed=2, work_dir=str(tmp_path / "not-allowed"))
    started = time.monotonic()
    result = reaper.run("mixdaemon_convert_selected_tracks.lua")
    assert time.monotonic() - started < 20
    assert len(result["boxes"]) == 1 and "outside the allowed roots" in result["boxes"][0]
    assert "error: " in result["console"]


def test_bad_request_files_get_an_error_reply_and_good_ones_an_answer(daemon):
    folder = daemon["state"] / "requests"
    files = {"t1-junk": "hello\n", "t2-unknown": "mixdaemon-request 1\naddress=/mixdaemon/fly\nend\n",
             "t3-ping": "mixdaemon-request 1\naddress=/mixdaemon/ping\nend\n",
             "t4-status": "mixdaemon-request 1\naddress=/mixdaemon/status\narg=99999\nend\n"}
    for name, text in files.items():
        (folder / f".{name}.tmp").write_text(text)
        (folder / f".{name}.tmp").rename(folder / f"{name}.request")
    deadline = time.monotonic() + 20
    replies = {}
    while time.monotonic() < deadline and len(replies) < len(files):
        for name in files:
            reply = folder / f"{name}.reply"
            if reply.exists() and name not in replies:
                text = reply.read_text()
                if any(f"state={s}\n" in text for s in ("ok", "error")):
                    replies[name] = text
        time.sleep(0.05)
    assert "state=error" in replies["t1-junk"] and "not a request file" in replies["t1-junk"]
    assert "state=error" in replies["t2-unknown"] and "/mixdaemon/fly: unknown address" in replies["t2-unknown"]
    assert "state=ok" in replies["t3-ping"] and "reply=/mixdaemon/pong\nreply_arg=0.1.0" in replies["t3-ping"]
    assert "state=error" in replies["t4-status"] and "job 99999: no such job" in replies["t4-status"]
    for name in files:
        (folder / f"{name}.request").unlink()
        (folder / f"{name}.reply").unlink()


def test_after_a_restart_an_unfinished_submission_is_followed_to_its_result(converted, daemon):
    # The daemon stops while a submission's reply file says "running"; an old finished pair lies
    # beside it. The daemon that starts next follows the job to its result and removes the old pair.
    job, folder = converted["job"], daemon["state"] / "requests"
    assert daemon["proc"].terminate() == 0
    (folder / "r1.request").write_text(f"mixdaemon-request 1\naddress=/mixdaemon/submit\narg={escape(job['render_dir'][0])}\nend\n")
    (folder / "r1.reply").write_text(f"mixdaemon-reply 1\nstate=running\njob_id={job['job_id'][0]}\npercent=40.0\n")
    (folder / "r0.request").write_text("mixdaemon-request 1\naddress=/mixdaemon/ping\nend\n")
    (folder / "r0.reply").write_text("mixdaemon-reply 1\nstate=ok\n")
    old = time.time() - 8 * 86400
    os.utime(folder / "r0.reply", (old, old))
    daemon["proc"] = DaemonProcess(daemon["config"], daemon["state"]).start()
    deadline = time.monotonic() + 10
    while "state=done" not in (folder / "r1.reply").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    reply = (folder / "r1.reply").read_text()
    assert "state=done" in reply and f"manifest={escape(job['manifest'][0])}\n" in reply
    assert request_files(daemon) == ["r1.reply", "r1.request"]
    for name in request_files(daemon):
        (folder / name).unlink()


def test_send_status_prints_the_running_daemons_state(daemon, converted):
    done = subprocess.run([sys.executable, "-m", "mixdaemon", "send", "--port", str(daemon["proc"].port), "status"],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    address, *labelled = done.stdout.split()
    counts = dict(zip(labelled[::2], labelled[1::2]))  # queued 0  running 0  done 1 ...
    assert address == "/mixdaemon/status/summary" and list(counts)[:5] == ["queued", "running", "done", "error",
                                                                          "cancelled"]
    assert int(counts["done"]) >= 1  # the conversion above is done


# --- with the daemon: OSC -----------------------------------------------------------------------

@pytest.mark.skipif(not HAS_LUASOCKET, reason="LuaSocket for Lua 5.4 not installed (apt-get install lua-socket)")
def test_over_osc_one_action_renders_converts_and_imports(daemon):
    reaper, folder = make_project(daemon, "OscSong", seed=12, transport="osc", auto_import="1")
    before = request_files(daemon)
    result = reaper.run("mixdaemon_convert_selected_tracks.lua")
    assert result.get("error") is None and result["boxes"] == [], result
    assert "sending them over OSC (127.0.0.1:" in result["console"]
    job_id = int(last_job(result)["job_id"][0])
    assert re.search(rf"^mixdaemon: job {job_id}: \d+% \w", result["console"], re.M)  # progress shown
    assert f"job {job_id} done" in result["console"] and "imported 3 converted stem(s)" in result["console"]
    assert [t["name"] for t in result["tracks"]][-2:] == ["Lead Vöx", "Lead Vöx (converted)"]
    assert request_files(daemon) == before  # no request files: real OSC
    assert f"job {job_id}: queued from osc:127.0.0.1:" in daemon["proc"].log()
