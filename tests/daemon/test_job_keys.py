"""Job keys survive an upgrade that adds settings: work done before a setting existed keeps its key
while the setting is at its default, and a changed setting is other work."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace

from mixdaemon.daemon.jobstore import ADDED_SETTINGS, job_key
from mixdaemon.mixing.settings import TransferSettings

INPUTS = {"/music/song/drums.wav": "aa", "/music/song/bass.wav": "bb"}
REFERENCE = {"/music/ref.wav": "cc"}


def key_before_the_controls(settings: TransferSettings) -> str:
    """The key as stored by a daemon whose settings had none of ADDED_SETTINGS."""
    h = hashlib.sha256()
    for path, digest in [("bass.wav", "bb"), ("drums.wav", "aa")]:  # sorted by file name
        h.update(f"in {path} {digest}\n".encode())
    h.update("ref cc\n".encode())
    old = {k: v for k, v in asdict(settings).items() if k not in ADDED_SETTINGS}
    h.update(json.dumps(old, sort_keys=True).encode())
    return h.hexdigest()


def test_default_controls_keep_the_key_stored_before_them():
    settings = TransferSettings()
    assert job_key(INPUTS, REFERENCE, settings) == key_before_the_controls(settings)


def test_a_changed_control_is_other_work():
    base = job_key(INPUTS, REFERENCE, TransferSettings())
    keys = {job_key(INPUTS, REFERENCE, s) for s in (
        replace(TransferSettings(), amount=0.5), replace(TransferSettings(), match=("level",)),
        replace(TransferSettings(), stem_amount={"vocals": 0.2}))}
    assert base not in keys and len(keys) == 3
