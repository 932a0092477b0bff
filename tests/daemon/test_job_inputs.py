"""What a job reads is what was checked and keyed when it was submitted: the reference files
recorded then (not the folder listed again), each stem by the name the user gave it (a link named
vocals.wav is vocals, whatever its target is called). The real worker, in process, on real files."""
import json
import os
import shutil
import threading
from dataclasses import asdict

from mixdaemon.daemon.confine import Roots
from mixdaemon.daemon.jobstore import Job, JobStore, input_files, make_job, reference_files
from mixdaemon.daemon.worker import LocalExecutor
from mixdaemon.mixing.settings import TransferSettings
from tests.support.daemon import write_stems

SILENT_LUFS = -70.0  # how the manifest reads a silent track


def _submit(tmp_path, store: JobStore, roots: Roots, stems, reference) -> Job:
    """A transfer job as the daemon's submit makes one."""
    files, refs = input_files(stems, roots), reference_files(reference, roots)
    job, _ = store.add(make_job(files, reference, refs, tmp_path / "out", TransferSettings(engine="match"),
                                folder_name="song"))
    return job


def _finish(store: JobStore, roots: Roots, job: Job) -> Job:
    """Run the job with the real worker until it ends; the job as it ended."""
    ended = threading.Event()
    executor = LocalExecutor(store, "{folder}-{job_id}", lambda e: e.kind in ("done", "error") and ended.set(), roots)
    executor.start()
    try:
        assert ended.wait(60)
    finally:
        executor.stop(5)
    return store.get(job.id)


def _run(tmp_path, store: JobStore, roots: Roots, job: Job) -> dict:
    """Run the job with the real worker; its manifest."""
    finished = _finish(store, roots, job)
    assert finished.state == "done", finished.error
    return json.loads(open(finished.manifest, encoding="utf-8").read())


def test_a_file_added_to_the_reference_folder_after_the_submit_is_not_read(tmp_path, reference):
    refs = tmp_path / "refs"
    refs.mkdir()
    for name in ("drums", "bass", "other"):
        shutil.copy(reference / f"{name}.wav", refs / f"{name}.wav")
    stems = write_stems(tmp_path / "song", seconds=1.0, seed=3)
    store, roots = JobStore(tmp_path / "jobs.sqlite3"), Roots([tmp_path])
    job = _submit(tmp_path, store, roots, stems, refs)
    shutil.copy(reference / "vocals.wav", refs / "vocals.wav")  # not part of the job's key
    manifest = _run(tmp_path, store, roots, job)
    assert [f["path"] for f in manifest["reference"]["files"]] == sorted(str(refs / f"{n}.wav")
                                                                        for n in ("drums", "bass", "other"))
    assert manifest["loudness_lufs"]["reference"]["vocals"] == SILENT_LUFS  # the recorded reference has none
    store.close()


def test_a_stem_given_as_a_link_keeps_its_role_from_the_name_the_user_gave(tmp_path, reference):
    takes = tmp_path / "takes"
    takes.mkdir()
    song = tmp_path / "song"
    for path in write_stems(song, seconds=1.0, seed=4):
        if path.stem == "vocals":  # the bounce's vocals.wav is a link to a take of another name
            os.replace(path, takes / "take 3.wav")
            os.symlink(takes / "take 3.wav", path)
    store, roots = JobStore(tmp_path / "jobs.sqlite3"), Roots([tmp_path, reference])
    job = _submit(tmp_path, store, roots, song, reference)
    manifest = _run(tmp_path, store, roots, job)
    assert {(os.path.basename(i["path"]), i["role"]) for i in manifest["inputs"]} == {
        ("drums.wav", "drums"), ("bass.wav", "bass"), ("other.wav", "other"), ("vocals.wav", "vocals")}
    assert manifest["loudness_lufs"]["before"]["vocals"] > SILENT_LUFS  # read as the vocals, not as "other"
    store.close()


def test_a_link_changed_to_point_out_of_the_roots_after_the_submit_is_refused_unread(tmp_path, reference):
    song = tmp_path / "roots" / "song"
    stems = write_stems(song, seconds=1.0, seed=5)
    outside = write_stems(tmp_path / "outside", seconds=1.0, seed=5)  # the same contents: the hashes agree
    os.replace(stems[-1], tmp_path / "roots" / "take.wav")
    os.symlink(tmp_path / "roots" / "take.wav", stems[-1])
    shutil.copytree(reference, tmp_path / "roots" / "ref")
    store, roots = JobStore(tmp_path / "jobs.sqlite3"), Roots([tmp_path / "roots"])
    job = _submit(tmp_path / "roots", store, roots, song, tmp_path / "roots" / "ref")
    os.unlink(stems[-1])
    os.symlink(outside[-1], stems[-1])
    failed = _finish(store, roots, job)
    assert failed.state == "error" and f"{stems[-1]} (a link to {outside[-1]})" in failed.error
    assert "refused, outside the allowed roots" in failed.error and "\n" not in failed.error
    store.close()


def test_the_same_work_asked_for_in_another_output_folder_is_copied_there_whole(tmp_path, reference):
    song = tmp_path / "project" / "renders" / "song"
    write_stems(song, seconds=1.0, seed=6)
    store, roots = JobStore(tmp_path / "jobs.sqlite3"), Roots([tmp_path, reference])
    first = _submit(tmp_path, store, roots, song, reference)
    first_manifest = _run(tmp_path, store, roots, first)
    first_dir = tmp_path / "out" / f"song-{first.id}"

    # The REAPER script asks for the same stems again, with the result in its project folder.
    again = Job(**{**asdict(store.get(first.id)), "id": 0, "state": "queued", "out_root": str(tmp_path / "project"),
                   "out_dir": None, "manifest": None, "outputs": {}})
    copy, created = store.add(again)
    assert created and copy.id != first.id
    manifest = _run(tmp_path, store, roots, copy)
    copied_dir = tmp_path / "project" / f"song-{copy.id}"
    assert manifest["job_id"] == copy.id and manifest["copied_from"] == str(first_dir)
    assert manifest["outputs"] == {name: str(copied_dir / os.path.basename(p))
                                   for name, p in first_manifest["outputs"].items()}
    for name in sorted(os.listdir(first_dir)):
        if name != "manifest.json":
            assert (copied_dir / name).read_bytes() == (first_dir / name).read_bytes(), name
    # Asked for again in either folder: the result already there, no new job.
    assert store.add(again)[0].id == copy.id
    assert store.add(Job(**{**asdict(again), "out_root": str(tmp_path / "out")}))[0].id == first.id
    store.close()
