"""Batches: every song folder below a folder converted toward one reference, as the daemon's jobs.

    song folders → one job each in a job store kept in OUT/.mixdaemon-batch (content keys, as the
    daemon's) → N executors on that store, local threads or Ray workers (daemon/ray_executor.py)
    → OUT/<song>/ per song (stems, mixture, manifest, report), each appearing whole → one outcome
      per song

The store makes a batch resumable: run it again and the songs whose results are there are not
converted again (same contents, same reference, same settings: same key), failed songs are tried
again, and a batch that was killed picks up its interrupted songs.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from mixdaemon.audio.io import is_audio_file
from mixdaemon.daemon.confine import Roots
from mixdaemon.daemon.executors import ExecutorPool, make_executors
from mixdaemon.daemon.jobstore import Job, JobStore, input_files, make_job, reference_files
from mixdaemon.errors import ConfigError, MixdaemonError
from mixdaemon.files import lock_exclusive
from mixdaemon.mixing.settings import TransferSettings
from mixdaemon.progress import Progress, no_progress

log = logging.getLogger("mixdaemon.batch")

STATE_FOLDER = ".mixdaemon-batch"  # in OUT: the batch's job store
POLL_SECONDS = 0.25


@dataclass
class SongOutcome:
    song: str                  # the song folder, relative to the songs folder
    state: str                 # done | error | cancelled
    result: str | None = None  # the song's result folder
    error: str | None = None
    seconds: float | None = None
    earlier: bool = False      # done by an earlier run of the batch (not converted again)


def song_folders(songs_dir: Path, skip: Path) -> list[Path]:
    """Every folder below songs_dir (itself included) that holds audio files, sorted; hidden
    folders, reference folders and `skip` (the output folder, if it lies inside) left out. Linked
    folders are followed (each real folder once): whether their files may be read is the
    confinement check's to say, song by song."""
    songs, seen = [], set()
    for folder, subfolders, files in os.walk(songs_dir, followlinks=True):
        here = Path(folder)
        if here.resolve() in seen:
            subfolders[:] = []
            continue
        seen.add(here.resolve())
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and d.lower() != "reference"
                               and (here / d).resolve() != skip)
        if any(is_audio_file(here / f) and not f.startswith(".") for f in files):
            songs.append(here)
    return songs


def _song_name(songs_dir: Path, song: Path) -> str:
    relative = song.relative_to(songs_dir)
    return "-".join(relative.parts) if relative.parts else songs_dir.name


def _lock(state: Path) -> int:
    """One batch at a time on an output folder: two would claim the same songs' jobs twice."""
    try:
        return lock_exclusive(state, os.O_RDONLY | os.O_DIRECTORY)
    except BlockingIOError:
        raise ConfigError(f"{state.parent}: another batch is writing to this output folder") from None


def run_batch(songs_dir: str | os.PathLike, reference: str | os.PathLike, out: str | os.PathLike,
              settings: TransferSettings | None = None, *, executor: str = "local", workers: int = 1,
              progress: Progress = no_progress, max_attempts: int = 3) -> list[SongOutcome]:
    """Convert every song folder below songs_dir toward the reference into out/<song>/. With
    executor "ray", Ray must be connected (ray_executor.connect). One outcome per song, in order."""
    settings = settings or TransferSettings()
    songs_dir, out = Path(songs_dir).absolute(), Path(out).absolute()
    if not songs_dir.is_dir():
        raise MixdaemonError(f"{songs_dir}: not a folder of song folders")
    out.mkdir(parents=True, exist_ok=True)
    songs = song_folders(songs_dir, skip=out.resolve())
    if not songs:
        raise MixdaemonError(f"{songs_dir}: no folder with WAV/FLAC/AIFF stems below it")
    reference = Path(reference).absolute()
    roots = Roots([songs_dir, reference, out])
    state = out / STATE_FOLDER
    state.mkdir(exist_ok=True)
    lock = _lock(state)
    store = JobStore(state / "jobs.sqlite")
    pool: ExecutorPool | None = None
    try:
        pool = make_executors(executor, workers, store, "{folder}", lambda event: None, roots, max_attempts)
        # First what a killed run left: its running songs queued again; with a new job store,
        # the results already in OUT adopted, so that their songs are not converted again.
        pool.recover(result_roots=[out])
        ref_files = reference_files(reference, roots)
        jobs: dict[str, Job] = {}
        earlier: set[str] = set()
        refused: dict[str, str] = {}
        for song in songs:
            name = _song_name(songs_dir, song)
            try:
                job, created = store.add(make_job(input_files(song, roots), reference, ref_files, out, settings,
                                                  source="batch", folder_name=name))
            except MixdaemonError as exc:  # this song's files (a link out of SONGS, an unreadable file)
                refused[name] = str(exc)
                continue
            if job.state in ("error", "cancelled"):  # failed in an earlier run: this run tries again
                store.set_state(job.id, "queued", attempts=0, error=None)
            elif job.state == "done" and not created:
                earlier.add(name)
            jobs[name] = job
        pool.start()
        _wait(store, jobs, pool, progress)
        outcomes = {o.song: o for o in _outcomes(store, jobs, earlier)}
        outcomes.update({name: SongOutcome(name, "error", error=reason) for name, reason in refused.items()})
        return [outcomes[_song_name(songs_dir, song)] for song in songs]
    finally:
        if pool is not None:
            pool.stop(timeout=10.0)
        store.close()
        os.close(lock)


def _wait(store: JobStore, jobs: dict[str, Job], pool: ExecutorPool, progress: Progress) -> None:
    ids = {job.id for job in jobs.values()}
    while True:
        # one query per poll, whatever the batch's size
        states = {job.id: job.state for job in store.list() if job.id in ids}
        finished = sum(s in ("done", "error", "cancelled") for s in states.values())
        running = [i for i, s in states.items() if s == "running"]
        moved = sum(p[0] / 100.0 for p in map(pool.progress_of, running) if p is not None)
        progress(f"{finished}/{len(ids)} songs", (finished + moved) / len(ids))
        if finished == len(ids):
            return
        time.sleep(POLL_SECONDS)


def _outcomes(store: JobStore, jobs: dict[str, Job], earlier: set[str]) -> list[SongOutcome]:
    outcomes = []
    for name, job in jobs.items():
        job = store.get(job.id)
        seconds = round(job.finished - job.started, 1) if job.finished and job.started else None
        outcomes.append(SongOutcome(name, job.state, job.out_dir if job.state == "done" else None, job.error,
                                    None if name in earlier else seconds, name in earlier))
    return outcomes
