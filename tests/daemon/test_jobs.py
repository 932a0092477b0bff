"""The SQLite job store: durable states, no duplicate work, crash recovery, poison-job protection."""
import json
import os
import sqlite3

from mixdaemon.daemon.confine import Roots
from mixdaemon.daemon.jobstore import (
    MANIFEST_NAME,
    STAGING_PREFIX,
    Job,
    JobStore,
    hash_files,
    job_key,
)
from mixdaemon.daemon.worker import LocalExecutor, output_folder_name
from mixdaemon.mixing.settings import TransferSettings
from tests.support.daemon import write_stems


def _job(tmp_path, key="k1", **kw) -> Job:
    values = dict(id=0, key=key, state="queued", inputs=[str(tmp_path / "in" / "drums.wav")],
                  reference=str(tmp_path / "ref"), out_root=str(tmp_path / "out"), settings={"engine": "match"},
                  folder_name="song")
    values.update(kw)
    return Job(**values)


def _events():
    got = []
    return got, got.append


def test_same_contents_same_key_wherever_they_lie(tmp_path):
    a = write_stems(tmp_path / "a", seconds=0.5, seed=0)
    b = write_stems(tmp_path / "b", seconds=0.5, seed=0)
    c = write_stems(tmp_path / "c", seconds=0.5, seed=1)
    ref = hash_files(write_stems(tmp_path / "ref", seconds=0.5, seed=2))
    settings = TransferSettings()
    assert job_key(hash_files(a), ref, settings) == job_key(hash_files(b), ref, settings)
    assert job_key(hash_files(a), ref, settings) != job_key(hash_files(c), ref, settings)
    assert job_key(hash_files(a), ref, settings) != job_key(hash_files(a), ref, TransferSettings(ceiling_dbtp=-2.0))
    assert job_key(hash_files(a), ref, settings) != job_key(hash_files(a), hash_files(c), settings)


def test_store_refuses_duplicate_work_and_survives_reopening(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    first, created = store.add(_job(tmp_path))
    assert created and first.state == "queued" and first.id == 1
    again, created = store.add(_job(tmp_path))
    assert not created and again.id == first.id
    store.set_state(first.id, "error", error="bad file")
    retry, created = store.add(_job(tmp_path))  # failed work may be submitted again
    assert created and retry.id == 2
    result = tmp_path / "out" / "song-2"
    result.mkdir(parents=True)
    store.set_state(retry.id, "done", out_dir=str(result))
    assert store.add(_job(tmp_path)) == (store.get(2), False)  # finished work is not redone...
    result.rmdir()
    assert store.add(_job(tmp_path), redo_if_results_gone=False) == (store.get(2), False)
    redo, created = store.add(_job(tmp_path))  # ... unless its results were deleted and it is asked for
    assert created and redo.id == 3
    store.close()

    reopened = JobStore(tmp_path / "jobs.sqlite3")
    assert [(j.id, j.state) for j in reopened.list()] == [(1, "error"), (2, "done"), (3, "queued")]
    assert reopened.get(1).error == "bad file"
    # The database itself, not only the code, refuses a second live job with the same key.
    db = sqlite3.connect(tmp_path / "jobs.sqlite3")
    try:
        db.execute("INSERT INTO jobs (key, state, inputs, reference, out_root, settings, created) "
                   "VALUES ('k1', 'queued', '[]', '', '', '{}', 0)")
        raised = False
    except sqlite3.IntegrityError:
        raised = True
    assert raised
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_text_naming_files_in_no_encoding_is_kept_as_given(tmp_path):
    # A folder name that is not UTF-8 reaches Python as lone surrogates, which SQLite text cannot hold.
    folder = tmp_path / os.fsdecode(b"Take \xff\xfe")
    store = JobStore(tmp_path / "jobs.sqlite3")
    job, _ = store.add(_job(tmp_path, reference=str(folder / "reference.wav"), out_root=str(folder)))
    store.update(job.id, out_dir=str(folder / "song-1"))
    assert store.set_state(job.id, "error", error=f"{folder}/drums.wav: not a readable WAV/FLAC/AIFF audio file")
    store.set_setting(f"reference:{folder}", str(folder / "ref.wav"))
    store.close()
    reopened = JobStore(tmp_path / "jobs.sqlite3")
    got = reopened.get(job.id)
    assert (got.reference, got.out_root, got.out_dir) == (str(folder / "reference.wav"), str(folder),
                                                         str(folder / "song-1"))
    assert got.error.startswith(f"{folder}/drums.wav") and os.fsencode(got.error).startswith(os.fsencode(folder))
    assert reopened.settings_with_prefix("reference:") == {str(folder): str(folder / "ref.wav")}
    assert reopened.get_setting(f"reference:{folder}") == str(folder / "ref.wav")


def test_interrupted_jobs_resume_and_a_job_that_keeps_killing_the_daemon_is_failed(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    job, _ = store.add(_job(tmp_path))
    for attempt in (1, 2, 3):
        claimed = store.claim_next()
        assert claimed.id == job.id and claimed.state == "running" and claimed.attempts == attempt
        store.close()  # the daemon dies here, mid-job
        store = JobStore(path)
        events, sink = _events()
        LocalExecutor(store, "{folder}-{job_id}", sink, Roots([tmp_path]), max_attempts=3).recover()
        state = store.get(job.id)
        if attempt < 3:
            assert state.state == "queued", attempt
        else:
            assert state.state == "error"
            assert "stopped 3 times while running this job" in state.error


def test_recovery_keeps_a_finished_rename_and_removes_staging(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    out = tmp_path / "out"
    finished, _ = store.add(_job(tmp_path, key="a"))
    unfinished, _ = store.add(_job(tmp_path, key="b"))
    for job in (finished, unfinished):
        claimed = store.claim_next()
        store.update(claimed.id, out_dir=str(out / output_folder_name("{folder}-{job_id}", claimed)))
    # Job a: its result folder was renamed into place, then the daemon died before the database said so.
    final = out / f"song-{finished.id}"
    final.mkdir(parents=True)
    (final / MANIFEST_NAME).write_text(json.dumps({"job_id": finished.id, "inputs": [], "outputs": {"mixture": "m.wav"}}))
    # Job b: died while writing the staging folder the store recorded for it.
    staging = out / f"{STAGING_PREFIX}{unfinished.id}-0123456789abcdef"
    staging.mkdir()
    (staging / "drums.wav").write_bytes(b"RIFF")
    st = staging.stat()
    store.update(unfinished.id, staging=str(staging), staging_inode=f"{st.st_dev}:{st.st_ino}")
    LocalExecutor(store, "{folder}-{job_id}", lambda e: None, Roots([tmp_path])).recover()
    assert store.get(finished.id).state == "done" and store.get(finished.id).outputs == {"mixture": "m.wav"}
    assert store.get(unfinished.id).state == "queued"
    assert not staging.exists() and store.get(unfinished.id).staging is None


def test_queued_job_is_cancelled_only_once(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    job, _ = store.add(_job(tmp_path))
    assert store.set_state(job.id, "cancelled", only_from=("queued",))
    assert not store.set_state(job.id, "cancelled", only_from=("queued",))
    assert store.claim_next() is None
