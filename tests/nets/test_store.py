"""The model store's files: authors' checkpoints (built from the reference manifests) are checked and
imported into the store; pair files round-trip exactly and damaged or mismatched files are refused by
name."""
import json
import os
import subprocess
import sys
from pathlib import Path

import platformdirs
import pytest
import safetensors.torch
import torch

from mixdaemon.errors import ModelFileError
from mixdaemon.nets.mst import ClonerConfig, EncoderConfig, FXencoder, MixFXcloner
from mixdaemon.nets.repo import ENGINES_ENV, load_param_predictor, save_param_predictor, store_dir, store_folders
from mixdaemon.nets.store import (
    import_authors_checkpoints,
    list_pairs,
    load_authors_checkpoint,
    load_pair,
    load_pair_file,
    save_pair,
    weights_sha256,
)

KINDS = {"fxencoder": "mst_fxencoder_state_dict.json", "mixfxcloner": "mst_mixfxcloner_state_dict.json"}


def manifest_state_dict(reference: Path, kind: str, seed: int) -> dict[str, torch.Tensor]:
    """Random tensors with exactly the names, order, shapes and dtypes of the authors' checkpoint."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for t in json.loads((reference / KINDS[kind]).read_text())["tensors"]:
        if t["dtype"] == "int64":
            state[t["name"]] = torch.tensor(1234, dtype=torch.int64)
        else:
            state[t["name"]] = 0.02 * torch.randn(t["shape"], generator=gen)
    return state


def write_authors_checkpoint(path: Path, state: dict[str, torch.Tensor]) -> Path:
    """What the authors' training code saves: a DDP state_dict under "model", plus optimizer state."""
    torch.save({"model": {f"module.{name}": t for name, t in state.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0, 1]}]},
                "epoch": 41}, path)
    return path


@pytest.fixture(scope="session")
def authors_checkpoints(shared_dir, tmp_path_factory):
    """Full-size authors'-format files (326 MB + 42 MB), written once per session."""
    folder = tmp_path_factory.mktemp("authors")
    states = {kind: manifest_state_dict(shared_dir / "reference", kind, seed) for seed, kind in enumerate(KINDS)}
    paths = {kind: write_authors_checkpoint(folder / f"{kind}.pt", state) for kind, state in states.items()}
    return paths, states


def test_import_authors_checkpoints_round_trips_exactly(authors_checkpoints, tmp_path):
    paths, states = authors_checkpoints
    store = tmp_path / "engines"
    stored = import_authors_checkpoints(paths["fxencoder"], paths["mixfxcloner"], store)
    assert stored == store / "mst-official.safetensors"

    encoder, cloner, info = load_pair("mst-official", store)
    assert not encoder.training and not cloner.training
    for model, state in ((encoder, states["fxencoder"]), (cloner, states["mixfxcloner"])):
        loaded = model.state_dict()
        assert list(loaded) == list(state)
        assert all(loaded[n].dtype == t.dtype and torch.equal(loaded[n], t) for n, t in state.items())
    # (load_pair recomputed both hashes from the stored tensors and compared them with these)
    assert len(info.encoder.weights_sha256) == len(info.cloner.weights_sha256) == 64
    assert info.encoder.config == EncoderConfig() and info.cloner.config == ClonerConfig()
    assert info.cloner.provenance["source"] == str(paths["mixfxcloner"].resolve())
    assert len(info.encoder.provenance["source_sha256"]) == 64
    assert [p.name for p in list_pairs(store) if p.path.parent == store] == ["mst-official"]

    with pytest.raises(ModelFileError, match="already exists"):
        import_authors_checkpoints(paths["fxencoder"], paths["mixfxcloner"], store)


@pytest.fixture(scope="module")
def cloner_state(shared_dir):
    return manifest_state_dict(shared_dir / "reference", "mixfxcloner", seed=7)


def test_renamed_tensor_is_refused_by_name(cloner_state, tmp_path):
    state = dict(cloner_state)
    state["blocks.3.conv.weight"] = state.pop("blocks.3.conv1.weight")
    path = write_authors_checkpoint(tmp_path / "renamed.pt", state)
    with pytest.raises(ModelFileError) as err:
        load_authors_checkpoint(path, "mixfxcloner")
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "missing blocks.3.conv1.weight" in message and "unexpected blocks.3.conv.weight" in message


def test_reshaped_tensor_is_refused_with_both_shapes(cloner_state, tmp_path):
    state = dict(cloner_state)
    state["blocks.5.film.film_fc.weight"] = torch.zeros(256, 1024)
    path = write_authors_checkpoint(tmp_path / "reshaped.pt", state)
    with pytest.raises(ModelFileError, match=r"wrong shape blocks\.5\.film\.film_fc\.weight \[256, 1024\] "
                                             r"\(expected \[256, 2048\]\)"):
        load_authors_checkpoint(path, "mixfxcloner")


def test_swapped_checkpoints_give_one_short_line(authors_checkpoints, tmp_path):
    paths, _ = authors_checkpoints
    with pytest.raises(ModelFileError) as err:
        import_authors_checkpoints(paths["mixfxcloner"], paths["fxencoder"], tmp_path)
    message = str(err.value)
    assert "fxencoder architecture" in message and "and 164 more" in message and "and 124 more" in message
    assert "\n" not in message and len(message) < 800
    assert not list(tmp_path.glob("*.safetensors"))


def test_unsafe_and_broken_checkpoints_are_refused(cloner_state, tmp_path):
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": {"module.x": torch.zeros(1)}, "callback": Path("/etc")}, pickled)
    with pytest.raises(ModelFileError, match=r"\(pathlib\.PosixPath\), refused for safety"):
        load_authors_checkpoint(pickled, "mixfxcloner")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFileError, match="not a readable torch checkpoint"):
        load_authors_checkpoint(garbage, "mixfxcloner")
    state = dict(cloner_state)
    state["output.bias"] = torch.tensor([0.0, float("nan")])
    with pytest.raises(ModelFileError, match=r"NaN or Inf in output\.bias"):
        load_authors_checkpoint(write_authors_checkpoint(tmp_path / "nan.pt", state), "mixfxcloner")


def small_pair(seed: int = 0) -> tuple[FXencoder, MixFXcloner]:
    torch.manual_seed(seed)
    encoder = FXencoder(EncoderConfig(channels=(4, 8, 16), kernels=(9, 5, 3), strides=(4, 2, 1)))
    cloner = MixFXcloner(ClonerConfig(nblocks=3, channel_width=8, cond_dim=16, dilation_growth=3))
    return encoder.eval(), cloner.eval()


def test_pair_file_round_trip_keeps_config_and_metadata(tmp_path):
    encoder, cloner = small_pair()
    training = {"steps": 1000, "data": "musdb18", "loss": "mss"}
    written = save_pair(tmp_path / "mine.safetensors", encoder, cloner, training=training)
    loaded_encoder, loaded_cloner, info = load_pair(tmp_path / "mine.safetensors")
    assert info == written and info.name == "mine" and info.training == training
    assert loaded_cloner.config == cloner.config and loaded_cloner.receptive_field == cloner.receptive_field
    x, e = torch.rand(1, 2, 4000) - 0.5, torch.rand(1, 16)
    with torch.no_grad():  # the same weights: equal outputs up to the kernels' float rounding on this CPU
        torch.testing.assert_close(loaded_encoder(x), encoder(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(loaded_cloner(x, e), cloner(x, e), rtol=1e-5, atol=1e-6)


def test_damaged_pair_file_is_refused(tmp_path):
    path = tmp_path / "pair.safetensors"
    save_pair(path, *small_pair())
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # inside the last tensor's bytes (the cloner's output bias)
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="mixfxcloner weights do not match their recorded sha256"):
        load_pair_file(path)
    safetensors.torch.save_file({"x": torch.zeros(1)}, path)
    with pytest.raises(ModelFileError, match="not a mixdaemon model pair"):
        load_pair_file(path)


def test_store_location_and_names(tmp_path, monkeypatch):
    """Models are written to the per-user data folder (or $MIXDAEMON_ENGINES), and looked up there
    before the shipped ones, which are always found."""
    monkeypatch.delenv(ENGINES_ENV, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    expected = tmp_path / "data" if sys.platform.startswith("linux") else platformdirs.user_data_path()
    assert store_dir() == expected / "mixdaemon" / "engines"
    assert store_folders() == [store_dir(), Path(__file__).resolve().parents[2] / "engines"]
    monkeypatch.setenv(ENGINES_ENV, str(tmp_path))
    assert store_dir() == tmp_path
    save_pair(tmp_path / "b.safetensors", *small_pair(1))
    save_pair(tmp_path / "default.safetensors", *small_pair(2))
    (tmp_path / "broken.safetensors").write_bytes(b"junk")
    assert [(p.name, p.path.parent) for p in list_pairs()] == [
        ("b", tmp_path), ("default", tmp_path), ("default", store_folders()[1])]
    with pytest.raises(ModelFileError, match=r"no model pair named 'c' in .* or .*available: b, default\)"):
        load_pair("c")
    assert load_pair("default")[2].path == tmp_path / "default.safetensors"  # the user's, before the shipped one
    assert load_param_predictor("params-default")[2].parent == store_folders()[1]


def test_weights_hash_depends_on_values_and_names_only():
    encoder, _ = small_pair()
    state = encoder.state_dict()
    reordered = dict(reversed(list(state.items())))
    assert weights_sha256(reordered) == weights_sha256(state)
    changed = dict(state)
    name = next(iter(changed))
    changed[name] = changed[name].clone()
    changed[name].view(-1)[0] += 1e-6
    assert weights_sha256(changed) != weights_sha256(state)
    renamed = {f"x.{n}": t for n, t in state.items()}
    assert weights_sha256(renamed) != weights_sha256(state)


def test_models_list_shows_every_kind_in_the_store(tmp_path, capsys):
    """`mixdaemon models list` names each model with its kind; a damaged file does not stop it."""
    import numpy as np

    from mixdaemon.cli.main import main
    save_pair(tmp_path / "pair.safetensors", *small_pair(1))
    save_param_predictor(tmp_path / "predictor.safetensors", {"w": np.ones((2, 3))},
                                    {"slots": ["a"], "feature_size": 2, "provenance": {}})
    (tmp_path / "broken.safetensors").write_bytes(b"junk")
    assert main(["models", "list", "--store", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"your models: {tmp_path}"
    assert [line.split()[:2] for line in lines[1:3]] == [["pair", "MST"], ["predictor", "parameter"]]
    assert lines[3] == f"shipped models (read-only): {store_folders()[1]}"
    assert [line.split()[0] for line in lines[4:]] == ["automix-default", "default", "params-default"]
    assert [p.name for p in list_pairs(tmp_path) if p.path.parent == tmp_path] == ["pair"]
    with pytest.raises(ModelFileError, match="not a parameter predictor"):
        load_param_predictor("pair", tmp_path)


def test_param_engine_loads_its_predictor_without_torch(tmp_path):
    """A param-engine job reads the shipped predictor, and does not spend seconds importing torch."""
    script = ("import sys\n"
              "from mixdaemon.mixing.param import ParamEngine\n"
              "from mixdaemon.mixing.settings import TransferSettings\n"
              "engine = ParamEngine.from_settings(TransferSettings(engine='param'))\n"
              "print(engine.predictor.path.name, 'torch' in sys.modules)\n")
    env = {**os.environ, ENGINES_ENV: str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["params-default.safetensors", "False"]

