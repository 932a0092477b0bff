"""A tiny, randomly initialised HTDemucs saved as a local demucs model folder, for tests that need
separation to run (fast, offline) without the pretrained weights.

The folder has the layout demucs's LocalRepo reads: `<name>_model-<checksum>.th` (a torch-saved
package {"klass", "args", "kwargs", "state"}) and `<name>.yaml`, a bag listing that one model, the
way the official names (htdemucs, mdx_extra) are bags. So `get_model(name, repo=folder)` and
`mixdaemon.mixing.separation.Separator(name, model_dir=folder)` load it.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
import torch
import yaml
from demucs.htdemucs import HTDemucs
from demucs.states import save_with_checksum

from mixdaemon.audio.stems import STEM_NAMES

# Depth 4 keeps the transformer's input short; a shallower HTDemucs with a transformer tries to
# allocate ~100 GB. A 2 s training segment makes every model pass cover 2 s of audio.
TINY_HTDEMUCS = dict(channels=8, depth=4, t_layers=1, t_heads=2, segment=Fraction(2))


def build_tiny_demucs_repo(folder: Path, name: str = "tiny", *, seed: int = 0, samplerate: int = 44100,
                           sources: tuple[str, ...] = STEM_NAMES) -> Path:
    """Write a tiny random HTDemucs (deterministic for a given seed) into `folder` as model `name`;
    returns the folder, ready for Separator(name, model_dir=folder)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    kwargs = dict(sources=list(sources), samplerate=samplerate, **TINY_HTDEMUCS)
    with torch.random.fork_rng(devices=[]):  # leave the caller's random stream alone
        torch.manual_seed(seed)
        model = HTDemucs(**kwargs)
    package = {"klass": HTDemucs, "args": (), "kwargs": kwargs, "state": model.state_dict()}
    signature = f"{name}_model"
    save_with_checksum(package, folder / f"{signature}.th")
    (folder / f"{name}.yaml").write_text(yaml.safe_dump({"models": [signature]}))
    return folder


@pytest.fixture(scope="session")
def tiny_demucs_repo(tmp_path_factory) -> Path:
    """A model folder holding the tiny HTDemucs as model "tiny" (a bag of signature "tiny_model")."""
    return build_tiny_demucs_repo(tmp_path_factory.mktemp("demucs_models"))
