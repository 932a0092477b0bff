"""The daemon's configuration: the example config.toml, errors that name the key, environment and
command-line overrides."""

from pathlib import Path

import pytest

from mixdaemon.cli.main import build_parser
from mixdaemon.cli.serve import config_from_args
from mixdaemon.daemon.config import load_config
from mixdaemon.errors import ConfigError
from tests.support.daemon import REPO, write_toml


def test_example_config_is_valid_and_documents_every_key():
    config = load_config(REPO / "config.toml", environ={})
    assert config.osc.host == "127.0.0.1" and config.osc.port == 7700
    assert config.transfer.engine == "match"
    assert config.watch and config.watch[0].path.is_absolute()
    text = (REPO / "config.toml").read_text()
    for key in ("settle_seconds", "stale_seconds", "marker", "scan_on_start", "state_dir", "log_file", "max_attempts",
                "allowed_roots", "pattern", "reply_host", "reply_port", "device", "ab_seconds", "ceiling_dbtp",
                "amount", "match", "[transfer.stem_amount]"):
        assert key in text, key
    assert config.transfer.amount == 1.0 and config.transfer.match == ("level", "eq", "dynamics", "width", "space")


@pytest.mark.parametrize("data, message", [
    ({"osc": {"port": 70000}}, "osc.port: Input should be less than or equal to 65535 (got 70000)"),
    ({"watch": [{"path": "/tmp", "refrence": "x.wav"}]}, "watch[0].refrence: unknown key"),
    ({"output": {"pattern": "{song}-{job_id}"}}, "output.pattern: unknown field {song}"),
    ({"output": {"pattern": "a/{job_id}"}}, "output.pattern: must be a single visible folder name"),
    ({"settle_seconds": "soon"}, "settle_seconds: Input should be a valid number"),
    ({"transfer": {"engine": "magic"}}, "transfer.engine: Input should be 'match', 'neural' or 'param'"),
    ({"transfer": {"amount": 1.5}}, "transfer.amount: Input should be less than or equal to 1 (got 1.5)"),
    ({"transfer": {"amount": "all"}}, "transfer.amount: Input should be a valid number"),
    ({"transfer": {"match": []}}, "transfer.match: choose at least one of level, eq, dynamics, width, space"),
    ({"transfer": {"match": "level"}}, "transfer.match: Input should be a list (got 'level')"),
    ({"transfer": {"match": ["level", "reverb"]}},
     "transfer.match[1]: Input should be 'level', 'eq', 'dynamics', 'width' or 'space' (got 'reverb')"),
    ({"osc": {"reply_host": "127.0.0.1"}}, "reply_host is set but reply_port is not"),
    ({"output": {"root": "/tmp/mdtest"}, "watch": [{"path": "/tmp/mdtest/bounces"}]},
     "output.root (/tmp/mdtest) is, or contains, watch[0].path"),
])
def test_bad_config_is_an_error_that_names_the_key(tmp_path, data, message):
    path = write_toml(tmp_path / "config.toml", data)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert str(err.value).startswith(str(path))
    assert message in str(err.value)


def test_the_controls_of_transfer_jobs_validate(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[transfer]\namount = 0.5\nmatch = ["eq", "level"]\n[transfer.stem_amount]\nvocals = 0.25\n')
    transfer = load_config(path, environ={}).transfer
    assert transfer.amount == 0.5 and transfer.stem_amount == {"vocals": 0.25}
    assert transfer.match == ("level", "eq")  # one order, whatever the file's: the same job key
    controls = transfer.controls()
    assert controls.amount_for("vocals") == 0.25 and controls.amount_for("bass") == 0.5
    assert controls.moves("eq") and not controls.moves("dynamics")
    transfer = load_config(path, environ={"MIXDAEMON__TRANSFER__MATCH": '["width"]'}).transfer
    assert transfer.match == ("width",)


@pytest.mark.parametrize("table, message", [
    ("voice = 0.5", "transfer.stem_amount: 'voice' is not a stem; use drums, bass, other, vocals"),
    ("vocals = -0.5", "transfer.stem_amount.vocals: Input should be greater than or equal to 0 (got -0.5)"),
    ("vocals = \"half\"", "transfer.stem_amount.vocals: Input should be a valid number"),
])
def test_a_bad_stem_amount_names_its_key(tmp_path, table, message):
    path = tmp_path / "config.toml"
    path.write_text(f"[transfer.stem_amount]\n{table}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert str(err.value).startswith(f"{path}: {message}")
    assert "\n" not in str(err.value)


def test_unreadable_toml_names_the_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[osc\nport = 1\n")
    with pytest.raises(ConfigError, match="config.toml: not valid TOML"):
        load_config(path, environ={})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml", environ={})


def test_environment_overrides_file_and_flags_override_both(tmp_path, monkeypatch):
    path = write_toml(tmp_path / "config.toml", {"settle_seconds": 5.0, "osc": {"port": 9000},
                                                 "watch": [{"path": "bounces"}]})
    env = {"MIXDAEMON__OSC__PORT": "9001", "MIXDAEMON__TRANSFER__ENGINE": "neural",
           "MIXDAEMON_ENGINES": "/somewhere"}  # the model store variable is not a config key
    config = load_config(path, environ=env)
    assert config.osc.port == 9001 and config.transfer.engine == "neural" and config.settle_seconds == 5.0
    assert config.watch[0].path == tmp_path / "bounces"  # relative to the config file's folder

    with pytest.raises(ConfigError, match="osc.prt: unknown key"):
        load_config(path, environ={"MIXDAEMON__OSC__PRT": "1"})

    argv = ["serve", "--config", str(path), "--watch", str(tmp_path / "w"), "--osc-port", "0", "--engine", "match",
            "--out", str(tmp_path / "results"), "--settle", "0.5"]
    args = build_parser(argv).parse_args(argv)
    monkeypatch.setenv("MIXDAEMON__OSC__PORT", "9001")
    config = config_from_args(args)
    assert config.osc.port == 0 and config.transfer.engine == "match" and config.settle_seconds == 0.5
    assert [w.path for w in config.watch] == [tmp_path / "w"] and config.output.root == tmp_path / "results"


def test_quick_start_needs_no_config_file(tmp_path):
    argv = ["serve", "--watch", str(tmp_path), "--reference", str(tmp_path / "ref.wav"), "--out", str(tmp_path / "out")]
    args = build_parser(argv).parse_args(argv)
    config = config_from_args(args)
    assert config.reference == tmp_path / "ref.wav" and config.osc.port == 7700
    assert tmp_path in config.roots() and tmp_path / "out" in config.roots()


def test_serve_allow_flags_are_the_allowed_roots(tmp_path):
    argv = ["serve", "--watch", str(tmp_path), "--allow", str(tmp_path / "REAPER Media"), "--allow", "~/Projects"]
    config = config_from_args(build_parser(argv).parse_args(argv))
    assert config.allowed_roots == [tmp_path / "REAPER Media", Path("~/Projects").expanduser()]
    assert tmp_path / "REAPER Media" in config.roots()


def test_an_unknown_key_lists_the_keys_of_its_section_and_names_where_it_came_from(tmp_path):
    path = write_toml(tmp_path / "config.toml", {"osc": {"prt": 1}})
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert str(err.value) == (f"{path}: osc.prt: unknown key (check the spelling; the keys here are host, port, "
                              "reply_host, reply_port)")
    # A misspelt environment variable is blamed on itself, not on the (correct) config file.
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "config.toml", environ={"MIXDAEMON__TRANSFER__ENGIN": "neural"})
    assert str(err.value).startswith("environment variable MIXDAEMON__TRANSFER__ENGIN: transfer.engin: unknown key")
    assert "engine, model" in str(err.value) and "config.toml" not in str(err.value)
