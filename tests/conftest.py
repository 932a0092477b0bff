"""Shared test fixtures: where ../shared lies, the real stems, and small generated audio."""
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REAL_STEMS = SHARED / "data" / "real_stems"
FX_STATS = SHARED / "data" / "musdb18_fx_stats"
REFERENCE = SHARED / "reference"
STEM_NAMES = ("drums", "bass", "other", "vocals")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"../shared is not beside the checkout ({SHARED})")
    return SHARED


@pytest.fixture(scope="session")
def real_stems(shared_dir) -> Path:
    """Folder holding song_a, song_b, song_c, each with mixture + 4 stems."""
    return REAL_STEMS


@pytest.fixture(scope="session")
def mst_stats_path(shared_dir) -> Path:
    return FX_STATS / "mst_musdb18_fxfeatures_eqcompimagegain.npy"


@pytest.fixture(scope="session")
def fxnorm_stats_path(shared_dir) -> Path:
    return FX_STATS / "fxnorm_features_MUSDB18.npy"


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """Separation results and other caches go to a temporary folder, never the user's ~/.cache, and
    models written without a --store (built ONNX graphs, trained models) never reach the user's
    model folder."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MIXDAEMON_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.setenv("MIXDAEMON_ENGINES", str(tmp_path_factory.mktemp("engines")))
    yield
    mp.undo()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def impulse_responses(tmp_path) -> Path:
    """A folder of two decaying-noise impulse responses, each with a pre-delay before its peak."""
    import soundfile as sf
    folder = tmp_path / "irs"
    folder.mkdir()
    noise = np.random.default_rng(7)
    n = int(0.5 * 44100)
    for i in range(2):
        tail = noise.standard_normal((n, 2)) * np.exp(-np.arange(n) / (0.1 * 44100))[:, None]
        sf.write(folder / f"hall_{i}.wav", np.concatenate([np.zeros((441, 2)), 0.5 * tail]), 44100, subtype="FLOAT")
    return folder
