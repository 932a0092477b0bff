"""Hashes of every engine's outputs on ../shared's real songs, to show that a change which must not
change behaviour (a refactoring) leaves every written file bit-identical.

    .venv/bin/python benchmarks/output_hashes.py --out new.json                     # this checkout
    .venv/bin/python benchmarks/output_hashes.py --tree OLD_TREE --out old.json     # OLD_TREE: a checkout of another commit
    .venv/bin/python benchmarks/output_hashes.py --compare old.json new.json

Each run converts through the command line (`python -m mixdaemon`, with OLD_TREE first on the
import path when given), so any commit whose commands match can be hashed: transfer with the match,
neural and param engines (song_a → song_b and song_c → song_a, stem folders), neural with
--reference-b and on ONNX Runtime, fxnorm apply, automix and embed. fx_params.json names the
predictor file by its path; the hash is taken with that path reduced to the file name, so checkouts
in different folders compare equal.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SONGS = REPO.parent / "shared" / "data" / "real_stems"
STEMS = ("drums", "bass", "other", "vocals")


def stem_folders(work: Path) -> dict[str, Path]:
    """The songs as folders of the four stems only (a folder with the mix beside them is another case)."""
    folders = {}
    for song in ("song_a", "song_b", "song_c"):
        folders[song] = work / "in" / song
        folders[song].mkdir(parents=True)
        for stem in STEMS:
            (folders[song] / f"{stem}.wav").symlink_to(SONGS / song / f"{stem}.wav")
    return folders


def runs(songs: dict[str, Path], out: Path) -> dict[str, list[str]]:
    jobs = {}
    for engine in ("match", "neural", "param"):
        jobs[f"{engine}-ab"] = ["transfer", str(songs["song_a"]), "--reference", str(songs["song_b"]),
                                "--out", str(out / f"{engine}-ab"), "--engine", engine]
        jobs[f"{engine}-ca"] = ["transfer", str(songs["song_c"]), "--reference", str(songs["song_a"]),
                                "--out", str(out / f"{engine}-ca"), "--engine", engine]
    jobs["neural-fade"] = [*jobs["neural-ab"][:4], "--reference-b", str(songs["song_c"]),
                           "--out", str(out / "neural-fade"), "--engine", "neural"]
    jobs["neural-onnx"] = [*jobs["neural-ab"][:4], "--out", str(out / "neural-onnx"), "--engine", "neural",
                           "--backend", "onnxruntime"]
    jobs["fxnorm"] = ["fxnorm", "apply", str(songs["song_b"]), "--out", str(out / "fxnorm")]
    jobs["automix"] = ["automix", str(songs["song_c"]), "--out", str(out / "automix" / "mix.wav")]
    jobs["embed"] = ["embed", str(SONGS / "song_a" / "mixture.wav"), str(SONGS / "song_b" / "drums.wav"),
                     "--out", str(out / "embed" / "embeddings.npy")]
    return {name: argv + ([] if name == "embed" else ["-q"]) for name, argv in jobs.items()}


def digest(path: Path) -> str:
    data = path.read_bytes()
    if path.name == "fx_params.json":
        document = json.loads(data)
        predictor = document.get("engine", {}).get("predictor")
        if predictor:
            document["engine"]["predictor"] = Path(predictor).name
        data = json.dumps(document, sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()


def hash_outputs(tree: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree.resolve()), env.get("PYTHONPATH", "")])
    with tempfile.TemporaryDirectory(prefix="mixdaemon-hashes-") as tmp:
        work = Path(tmp)
        for name, argv in runs(stem_folders(work), work / "out").items():
            done = subprocess.run([sys.executable, "-m", "mixdaemon", *argv], env=env, cwd=tree or REPO,
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{name}: mixdaemon exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
        return {str(p.relative_to(work / "out")): digest(p) for p in sorted((work / "out").rglob("*")) if p.is_file()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, help="a checkout of the package to run instead of this one")
    parser.add_argument("--out", type=Path, help="JSON file of {output file: sha256}")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"), help="compare two such files")
    args = parser.parse_args()
    if args.compare:
        a, b = (json.loads(p.read_text()) for p in args.compare)
        differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        print(f"{len(a)} and {len(b)} files; {len(a.keys() | b.keys()) - len(differ)} identical; "
              f"differing or missing: {', '.join(differ) or 'none'}")
        return 1 if differ else 0
    hashes = hash_outputs(args.tree)
    text = json.dumps(hashes, indent=1)
    if args.out is None:
        print(text)
    else:
        args.out.write_text(text + "\n")
        print(f"{len(hashes)} output files hashed → {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
