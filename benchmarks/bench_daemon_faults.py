"""Fault benchmark of `mixdaemon serve`: odd and broken input files, SIGKILL at random moments,
random and malformed OSC packets. It counts daemon crashes, lost jobs, jobs processed twice and
partial outputs; the goal is zero of each.

    .venv/bin/python benchmarks/bench_daemon_faults.py                 # all four parts
    .venv/bin/python benchmarks/bench_daemon_faults.py --parts files --json files.json

Parts:
  files  bounces of generated files — every WAV/FLAC/AIFF bit depth, 8–192 kHz, mono, 3–8
         channels, NaN/Inf, silence, truncated headers and data, mismatched stem lengths, text and
         random bytes named .wav, empty files — dropped into a watched folder. Each bounce must end
         as the expected outcome (done, or an error whose reason names the problem).
  kills  good bounces in a watched folder (one more arrives every cycle); the daemon is SIGKILLed
         at a random moment (0–8 s after it serves; every 10th cycle during start-up, before it
         serves) and restarted, N times; then it runs to the end. Every bounce must be converted exactly once, and no visible entry in
         the output folder may ever be incomplete (polled every 2 ms throughout).
  osc    N random or malformed OSC packets (random bytes, mutated and truncated messages, wrong
         argument types and counts, odd bundles, huge strings, paths outside the allowed roots);
         the daemon must answer, log no internal error, stay up, and convert a bounce afterwards.
  probes one reproducible scenario per fault found by probing (issue F1–F12: planted symlinks and
         FIFOs, staging-name collisions, a lost lock, a deleted database, forged replies, disk
         full...), from probes_store.py, probes_inputs.py and probes_requests.py. Each counts
         files outside the roots read or written, user files deleted or replaced, lost or doubled
         jobs and silent worker deaths (all must be 0), and records the one-line reason given.

The daemon runs as a real subprocess (`python -m mixdaemon serve --config ...`, as a user starts
it) with the "match" engine; OSC goes through the package's client (daemon/osc.py).
"""
from __future__ import annotations

import argparse
import importlib
import io
import json
import random
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from daemon_harness import Daemon, PartialOutputWatch, job_rows, start, write_config
from pythonosc.osc_message_builder import OscMessageBuilder

from mixdaemon.audio.examples import make_example, synth_song
from mixdaemon.audio.io import resample
from mixdaemon.daemon.osc import COMMANDS, PREFIX, OscClient

REPO = Path(__file__).resolve().parents[1]
STEMS = ("drums", "bass", "other", "vocals")
RATES = (8000, 11025, 16000, 22050, 32000, 44100, 48000, 88200, 96000, 176400, 192000)


def _wav(x: np.ndarray, subtype: str = "PCM_24") -> bytes:
    return _encode(x, 44100, "WAV", subtype)


# --- part 1: files -------------------------------------------------------------------------------

def _encode(x: np.ndarray, sr: int, fmt: str, subtype: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def _at_rate(x: np.ndarray, sr: int) -> np.ndarray:
    return resample(x, 44100, sr)


def file_cases(seconds: float, rng: np.random.Generator) -> list[dict]:
    """Bounces: {"name", "files": {filename: bytes}, "expect": "done" | error words (str) | "error"}."""
    cases = []
    seed = [100]

    def stems(secs=seconds):
        seed[0] += 1
        return synth_song(secs, seed=seed[0])

    def bounce(name, files, expect):
        cases.append({"name": name, "files": files, "expect": expect})

    for fmt, subtypes in (("WAV", ("PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE")),
                          ("FLAC", ("PCM_S8", "PCM_16", "PCM_24")),
                          ("AIFF", ("PCM_S8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"))):
        ext = {"WAV": "wav", "FLAC": "flac", "AIFF": "aiff"}[fmt]
        for subtype in subtypes:
            rates = RATES if fmt == "WAV" else (8000, 44100, 96000 if fmt == "FLAC" else 192000)
            for sr in rates:
                if fmt == "FLAC" and sr > 655350:
                    continue
                mono = (len(cases) % 3 == 0)
                files = {}
                for k, (stem, x) in enumerate(stems().items()):
                    y = _at_rate(x, sr)
                    files[f"{stem}.{ext}"] = _encode(y[:, :1] if mono else y, sr, fmt, subtype)
                bounce(f"{fmt.lower()}_{subtype.lower()}_{sr}{'_mono' if mono else ''}", files, "done")
    for subtype in ("ULAW", "ALAW", "IMA_ADPCM", "MS_ADPCM"):
        bounce(f"wav_{subtype.lower()}", {f"{s}.wav": _encode(x, 44100, "WAV", subtype) for s, x in stems().items()}, "done")
    for channels in range(3, 9):
        files = {f"{s}.wav": _wav(x) for s, x in stems().items()}
        x = stems()["other"]
        files["other.wav"] = _wav(np.tile(x[:, :1], (1, channels)))
        bounce(f"channels_{channels}", files, f"{channels} channels")
    for value, label in ((np.nan, "nan"), (np.inf, "inf"), (-np.inf, "neg_inf")):
        for subtype in ("FLOAT", "DOUBLE"):
            files = {f"{s}.wav": _wav(x) for s, x in stems().items()}
            x = stems()["vocals"].copy()
            x[rng.integers(0, len(x), 7)] = value
            files["vocals.wav"] = _wav(x, subtype=subtype)
            bounce(f"{label}_{subtype.lower()}", files, "NaN or infinite")
    n = int(44100 * seconds)
    bounce("all_silent", {f"{s}.wav": _wav(np.zeros((n + k, 2), np.float32)) for k, s in enumerate(STEMS)}, "error")
    files = {f"{s}.wav": _wav(x) for s, x in stems().items()}
    files["vocals.wav"] = _wav(np.zeros((n, 2), np.float32))
    bounce("one_silent_stem", files, "done")
    for k, lengths in enumerate(((1.0, 0.5, 0.25, 1.2), (0.05, 1.0, 1.0, 1.0), (1.0, 0.001, 1.0, 0.3))):
        files = {f"{s}.wav": _wav(x) for s, x in zip(STEMS, (stems(L * seconds)["drums"] for L in lengths))}
        bounce(f"mismatched_lengths_{k}", files, "done")
    bounce("very_short", {f"{s}.wav": _wav(x[:64]) for s, x in stems().items()}, "done")
    full = _wav(stems()["vocals"])
    for cut in (4, 11, 12, 20, 30, 36, 40, 43, 44):
        files = {f"{s}.wav": _wav(x) for s, x in stems().items()}
        files["vocals.wav"] = full[:cut]
        bounce(f"truncated_header_{cut}", files, "error")
    for fraction in (0.1, 0.5, 0.99):
        files = {f"{s}.wav": _wav(x) for s, x in stems().items()}
        files["vocals.wav"] = full[: 44 + int((len(full) - 44) * fraction)]
        bounce(f"truncated_data_{fraction}", files, "truncated")
    flac = _encode(stems()["bass"], 44100, "FLAC", "PCM_16")
    files = {f"{s}.wav": _wav(x) for s, x in stems().items() if s != "bass"}
    files["bass.flac"] = flac[: len(flac) // 2]
    bounce("truncated_flac", files, "error")
    for label, data, words in (("text", b"just some text, not audio\n" * 50, "not a readable"),
                               ("random_bytes", rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), "not a readable"),
                               ("riff_garbage", b"RIFF" + struct.pack("<I", 4996) + b"WAVE" + rng.integers(0, 256, 4988, dtype=np.uint8).tobytes(), "error"),
                               ("empty", b"", "empty file")):
        files = {f"{s}.wav": _wav(x) for s, x in stems().items()}
        files["vocals.wav"] = data
        bounce(f"bad_{label}", files, words)
    return cases


def run_files(work: Path, reference: Path, seconds: float, rng, timeout: float) -> dict:
    cases = file_cases(seconds, rng)
    listener = OscClient()  # the daemon's reply target: it sends, nobody reads
    monitor = PartialOutputWatch(work / "out")
    proc = start(work, listener, reference, stale_seconds=1.0)
    t0 = time.monotonic()
    for case in cases:
        folder = work / "watch" / case["name"]
        folder.mkdir(parents=True)
        for name, data in case["files"].items():
            (folder / name).write_bytes(data)
    by_folder: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.alive():
        jobs = job_rows(work / "state") if (work / "state" / "jobs.sqlite3").exists() else []
        by_folder = {j["source"].removeprefix("watch:"): j for j in jobs}
        if len(by_folder) >= len(cases) and all(j["state"] in ("done", "error") for j in jobs):
            break
        time.sleep(0.5)
    elapsed = time.monotonic() - t0
    crashed = not proc.alive()
    if not crashed:
        proc.terminate()
    monitor.stop()
    listener.close()
    unexpected, lost = [], []
    n_files = sum(len(c["files"]) for c in cases)
    outcomes = {"done": 0, "error": 0}
    for case in cases:
        job = by_folder.get(str(work / "watch" / case["name"]))
        if job is None or job["state"] not in ("done", "error"):
            lost.append(case["name"])
            continue
        outcomes[job["state"]] += 1
        expect = case["expect"]
        ok = (job["state"] == "done") if expect == "done" else (
            job["state"] == "error" and (expect == "error" or expect in (job["error"] or "")))
        if not ok:
            unexpected.append({"bounce": case["name"], "expected": expect, "state": job["state"], "error": job["error"]})
    results = sorted(p.name for p in (work / "out").iterdir() if not p.name.startswith("."))
    errors = [j["error"] for j in by_folder.values() if j["state"] == "error"]
    tracebacks = (work / "state" / "mixdaemon.log").read_text().count("Traceback")
    return {"bounces": len(cases), "files": n_files, "done": outcomes["done"], "error": outcomes["error"],
            "internal_errors_logged": tracebacks,
            "unexpected_outcomes": unexpected, "lost_jobs": len(lost), "lost": lost, "daemon_crashes": int(crashed),
            "partial_outputs": len(monitor.violations), "result_folders": len(results),
            "result_folders_match_done_jobs": len(results) == outcomes["done"], "seconds": round(elapsed, 1),
            "sample_error_reasons": sorted(set(e.split(": ", 1)[-1] for e in errors))[:12]}


# --- part 2: kills -------------------------------------------------------------------------------

def run_kills(work: Path, reference: Path, kills: int, seconds: float, rng: random.Random, timeout: float) -> dict:
    listener = OscClient()  # the daemon's reply target: it sends, nobody reads
    monitor = PartialOutputWatch(work / "out")
    bounces = []

    def add_bounce():
        k = len(bounces)
        folder = work / "watch" / f"song{k:02d}"
        folder.mkdir(parents=True)
        for stem, x in synth_song(seconds, seed=1000 + k).items():
            (folder / f"{stem}.wav").write_bytes(_wav(x))
        bounces.append(folder)

    for _ in range(12):
        add_bounce()
    extra = {"max_attempts": 1000}  # see the report: random kills would trip the poison-job limit
    kill_log = []
    startup_seconds = 3.0
    t0 = time.monotonic()
    for cycle in range(kills):
        add_bounce()  # bounces keep arriving: kills also land while one is settling
        during_start = cycle % 10 == 9
        config = write_config(work, listener.port, reference, **extra)
        if during_start:  # within the time the last start took to serve: imports, recovery, binding
            proc = Daemon(config)
            delay = rng.uniform(0.05, 0.95) * startup_seconds
            time.sleep(delay)
            moment = f"{delay:.2f} s after spawn"
        else:
            spawned = time.monotonic()
            proc = Daemon(config).wait_serving()
            startup_seconds = time.monotonic() - spawned
            delay = rng.uniform(0.0, 8.0)  # a job takes 2–4 s here: some cycles finish jobs, some do not
            time.sleep(delay)
            moment = f"{delay:.2f} s after serving"
        if not proc.alive():
            kill_log.append({"cycle": cycle, "moment": moment, "crash": proc.process.returncode})
            continue
        serving = proc.serving()
        proc.kill()
        # Recovery runs before the daemon serves, so a "running" job seen while serving is this
        # instance's: the kill landed mid-job.
        running = [j["id"] for j in job_rows(work / "state") if j["state"] == "running"] if serving else []
        phase = "start-up" if not serving else ("mid-job" if running else "idle or grouping")
        kill_log.append({"cycle": cycle, "moment": moment, "phase": phase, "running_job": running[0] if running else None})
    proc = start(work, listener, reference, **extra)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.alive():
        jobs = job_rows(work / "state")
        if len(jobs) >= len(bounces) and all(j["state"] in ("done", "error") for j in jobs):
            break
        time.sleep(0.5)
    crashed = not proc.alive()
    if not crashed:
        proc.terminate()
    time.sleep(0.5)
    monitor.stop()
    listener.close()
    jobs = job_rows(work / "state")
    by_folder: dict[str, list] = {}
    for j in jobs:
        by_folder.setdefault(j["source"].removeprefix("watch:"), []).append(j)
    lost = [str(b.name) for b in bounces if not any(j["state"] == "done" for j in by_folder.get(str(b), []))]
    results = [p.name for p in (work / "out").iterdir() if not p.name.startswith(".")]
    staging = [p.name for p in (work / "out").iterdir() if p.name.startswith(".")]
    per_bounce = {b.name: sum(1 for r in results if r.rsplit("-", 1)[0] == b.name) for b in bounces}
    log = (work / "state" / "mixdaemon.log").read_text()
    phases: dict[str, int] = {}
    for k in kill_log:
        if "phase" in k:
            phases[k["phase"]] = phases.get(k["phase"], 0) + 1
    return {"kills": sum(1 for k in kill_log if "phase" in k), "kills_by_phase": phases,
            "daemon_crashes": int(crashed) + sum(1 for k in kill_log if "crash" in k),
            "bounces": len(bounces), "lost_jobs": len(lost), "lost": lost,
            "processed_twice": sum(1 for n in per_bounce.values() if n > 1),
            "missing_results": sum(1 for n in per_bounce.values() if n == 0),
            "partial_outputs": len(monitor.violations), "violations": monitor.violations[:5],
            "staging_left": len(staging), "jobs_in_error": [j["error"] for j in jobs if j["state"] == "error"],
            "max_attempts_seen": max((j["attempts"] for j in jobs), default=0),
            "jobs_with_3_or_more_attempts": sum(1 for j in jobs if j["attempts"] >= 3),
            "resumed_after_kill": log.count("queued again"), "internal_errors_logged": log.count("Traceback"),
            "finished_before_db_update_recovered": log.count("had completed before the daemon stopped"),
            "seconds": round(time.monotonic() - t0, 1)}


# --- part 3: OSC ---------------------------------------------------------------------------------

def _random_arg(rng: random.Random):
    kind = rng.randrange(9)
    if kind == 0:
        return rng.randint(-2**31, 2**31 - 1)
    if kind == 1:
        return rng.choice([0.0, -1.5, 1e30, float("inf"), float("nan"), rng.random()])
    if kind == 2:
        return "".join(chr(rng.randint(1, 0x2FFF)) for _ in range(rng.randint(0, 40)))
    if kind == 3:
        return rng.choice(["/etc/passwd", "/", "..", "../../etc", "relative/song", "", "/tmp", "~", "/proc/self/mem"])
    if kind == 4:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
    if kind == 5:
        return rng.choice([True, False, None])
    if kind == 6:
        return rng.randint(2**31, 2**62)
    if kind == 7:
        return [rng.randint(0, 9), "x"]
    return "x" * rng.randint(1000, 60000)


def _mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    op = rng.randrange(4)
    if op == 0 and b:
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.getrandbits(8)
    elif op == 1:
        b = b[: rng.randint(0, len(b))]
    elif op == 2:
        b += bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 32)))
    else:
        i = rng.randint(0, len(b))
        b = b[:i] + bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 16))) + b[i:]
    return bytes(b)


def _bundle(elements: list[bytes], rng: random.Random) -> bytes:
    out = b"#bundle\0" + struct.pack(">Q", rng.getrandbits(64))
    for e in elements:
        size = len(e) if rng.random() < 0.8 else rng.randint(-8, 1 << 20)
        out += struct.pack(">i", size) + e
    return out


def osc_packet(address: str, *args) -> bytes:
    """A message exactly as python-osc builds it: unlike the daemon's osc.encode, which cleans
    what the daemon sends, it carries NaN and whatever else a careless sender might send."""
    builder = OscMessageBuilder(address=address)
    for a in args:
        builder.add_arg(a)
    return builder.build().dgram


def osc_packets(n: int, rng: random.Random, addresses: list[str]) -> list[tuple[str, bytes]]:
    packets = []
    for _ in range(n):
        kind = rng.randrange(7)
        if kind == 0:
            data = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 600)))
            packets.append(("random bytes", data))
            continue
        address = rng.choice(addresses + ["/mixdaemon/nope", "/mixdaemon", "/", "mixdaemon/ping", "/mixdaemon/submit/x"])
        args = [_random_arg(rng) for _ in range(rng.randint(0, 5))]
        try:
            valid = osc_packet(address, *args)
        except Exception:
            valid = osc_packet(address)
        if kind == 1:
            packets.append(("wrong arguments", valid))
        elif kind in (2, 3):
            packets.append(("mutated message", _mutate(valid, rng)))
        elif kind == 4:
            inner = [osc_packet(rng.choice(addresses)) for _ in range(rng.randint(0, 3))]
            if rng.random() < 0.3:
                inner.append(_bundle([osc_packet("/mixdaemon/ping")], rng))
            packets.append(("bundle", _bundle(inner, rng) if rng.random() < 0.5 else _mutate(_bundle(inner, rng), rng)))
        elif kind == 5:
            packets.append(("long address", osc_packet("/mixdaemon/" + "a" * rng.randint(100, 60000))))
        else:
            tag = "," + "".join(rng.choice("ifsbhdtTFNIrm[]c") for _ in range(rng.randint(0, 12)))
            body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
            packets.append(("odd type tags", _osc_string(address) + _osc_string(tag) + body))
    return packets


def _osc_string(s: str) -> bytes:
    b = s.encode() + b"\0"
    return b + b"\0" * (-len(b) % 4)


def run_osc(work: Path, reference: Path, n: int, rng: random.Random, seconds: float) -> dict:
    client = OscClient()  # sends the packets, and is the daemon's reply target
    proc = start(work, client, reference)
    client.target = proc.address
    packets = osc_packets(n, rng, list(COMMANDS))
    kinds: dict[str, int] = {}
    unanswered: dict[str, int] = {}
    replies: list[tuple[str, list]] = []
    t0 = time.monotonic()
    for i, (kind, data) in enumerate(packets):
        kinds[kind] = kinds.get(kind, 0) + 1
        client.send_packet(data[:65507])
        # One at a time: every packet must be answered, and no socket buffer may overflow.
        first = client.receive(1.0)
        if first is None:
            unanswered[kind] = unanswered.get(kind, 0) + 1
            if not proc.alive():
                break
            continue
        replies.append(first)
        while (more := client.receive(0.0)) is not None:  # the rest of a bundle's replies
            replies.append(more)
    time.sleep(1.0)
    while (late := client.receive(0.0)) is not None:
        replies.append(late)
    elapsed = time.monotonic() - t0
    alive = proc.alive()
    answered_ping = False
    converted_after = False
    if alive:
        pong = client.request(f"{PREFIX}/ping", timeout=10)
        answered_ping = pong is not None and pong[0] == f"{PREFIX}/pong"
        folder = work / "watch" / "after-fuzz"
        folder.mkdir(parents=True)
        for stem, x in synth_song(seconds, seed=77).items():
            (folder / f"{stem}.wav").write_bytes(_wav(x))
        done = client.wait_for(lambda a, args: a == f"{PREFIX}/done" and "after-fuzz" in str(args[1]), 120)
        converted_after = done is not None
        proc.terminate()
    client.close()
    log = (work / "state" / "mixdaemon.log").read_text()
    return {"packets": len(packets), "by_kind": kinds, "replies": len(replies),
            "unanswered_packets": sum(unanswered.values()), "unanswered_by_kind": unanswered,
            "error_replies": sum(1 for a, _ in replies if a == f"{PREFIX}/error"),
            "other_replies": sorted({a for a, _ in replies if a != f"{PREFIX}/error"}),
            "daemon_crashes": int(not alive), "answered_ping_after": answered_ping,
            "converted_a_bounce_after": converted_after,
            "internal_errors_logged": log.count("Traceback"),  # any unexpected exception is logged with one
            "seconds": round(elapsed, 1)}


# Each probe module lists its scenarios as (name, scenario); a scenario runs in its own empty work
# folder with the shared reference and returns a dict holding every count in PROBE_COUNTS (each
# must be 0), "reason" (the one line the daemon gave for a refused input, or None) and "passed".
PROBE_MODULES = ("probes_store", "probes_inputs", "probes_requests")
PROBE_COUNTS = ("outside_read", "outside_written", "user_files_lost", "jobs_lost", "jobs_doubled",
                "silent_worker_deaths")


def run_probes(work: Path, reference: Path, only: set[str]) -> dict:
    results = {}
    for module_name in PROBE_MODULES:
        for name, scenario in importlib.import_module(module_name).SCENARIOS:
            if only and name not in only:
                continue
            folder = work / name
            folder.mkdir(parents=True)
            results[name] = outcome = scenario(folder, reference)
            print(f"{name}: {'passed' if outcome['passed'] else 'FAILED'} "
                  + " ".join(f"{k}={outcome[k]}" for k in PROBE_COUNTS if outcome[k])
                  + (f" — {outcome['reason']}" if outcome.get("reason") else ""), flush=True)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="files,kills,osc,probes")
    p.add_argument("--probes", default="", help="comma-separated probe names to run (default: all)")
    p.add_argument("--kills", type=int, default=50)
    p.add_argument("--packets", type=int, default=10000)
    p.add_argument("--seconds", type=float, default=1.0, help="length of the generated stems")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", help="work folder (default: a temporary one)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="mixdaemon-faults-"))
    _, reference = make_example(work / "reference", seconds=3.0)  # its reference is in a distinct style
    results = {}
    parts = args.parts.split(",")
    if "files" in parts:
        results["files"] = run_files(work / "files", reference, args.seconds, np.random.default_rng(args.seed), 900)
        print(json.dumps({"files": results["files"]}, indent=1), flush=True)
    if "kills" in parts:
        results["kills"] = run_kills(work / "kills", reference, args.kills, 3.0, random.Random(args.seed), 900)
        print(json.dumps({"kills": results["kills"]}, indent=1), flush=True)
    if "osc" in parts:
        results["osc"] = run_osc(work / "osc", reference, args.packets, random.Random(args.seed), args.seconds)
        print(json.dumps({"osc": results["osc"]}, indent=1), flush=True)
    if "probes" in parts:
        results["probes"] = run_probes(work / "probes", reference, set(filter(None, args.probes.split(","))))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"work folder: {work}")
    bad = sum(r.get("daemon_crashes", 0) + r.get("lost_jobs", 0) + r.get("partial_outputs", 0) + r.get("processed_twice", 0)
              + len(r.get("unexpected_outcomes", [])) + r.get("internal_errors_logged", 0)
              for part, r in results.items() if part != "probes")
    bad += sum(not outcome["passed"] for outcome in results.get("probes", {}).values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
