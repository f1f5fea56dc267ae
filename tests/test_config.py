"""Configuration: file, env overrides, --config, and errors that name the bad key."""

import json

import pytest

from cedanafs.config import all_keys, load_settings, parse_size
from cedanafs.errors import ConfigError

pytestmark = pytest.mark.unit


def test_defaults(tmp_path):
    s = load_settings(str(tmp_path), environ={})
    assert s.checkpoint.dir == "/tmp" and s.checkpoint.compression == "none"
    assert s.mount.dir == "/mnt/cedana" and s.address == "/run/cedana.sock"


def test_file_env_and_override_precedence(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"checkpoint": {"dir": "/from-file", "compression": "gzip", "streams": 2}, "address": "/x.sock"}))
    s = load_settings(str(tmp_path), environ={})
    assert (s.checkpoint.dir, s.checkpoint.compression, s.checkpoint.streams) == ("/from-file", "gzip", 2)
    s = load_settings(str(tmp_path), environ={"CEDANA_CHECKPOINT_DIR": "/from-env"})
    assert s.checkpoint.dir == "/from-env" and s.checkpoint.compression == "gzip"
    s = load_settings(str(tmp_path), '{"checkpoint": {"dir": "/from-flag"}}',
                      environ={"CEDANA_CHECKPOINT_DIR": "/from-env"})
    assert s.checkpoint.dir == "/from-flag"


def test_config_dir_from_env(tmp_path):
    (tmp_path / "config.json").write_text('{"mount": {"dir": "/m"}}')
    assert load_settings(environ={"CEDANA_CONFIG_DIR": str(tmp_path)}).mount.dir == "/m"


@pytest.mark.parametrize("content,needle", [
    ({"checkpoint": {"dri": "/x"}}, "checkpoint.dri"),
    ({"bogus": 1}, "bogus"),
    ({"checkpoint": {"streams": "many"}}, "checkpoint.streams"),
    ({"checkpoint": {"compression": "rar"}}, "checkpoint.compression"),
    ({"criu": {"leave_running": "maybe"}}, "criu.leave_running"),
])
def test_bad_keys_are_named(tmp_path, content, needle):
    (tmp_path / "config.json").write_text(json.dumps(content))
    with pytest.raises(ConfigError) as err:
        load_settings(str(tmp_path), environ={})
    assert needle in str(err.value)


def test_bad_json_and_unknown_override(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json"):
        load_settings(str(tmp_path), environ={})
    with pytest.raises(ConfigError, match="nope"):
        load_settings(str(tmp_path / "none"), '{"nope": 1}', environ={})


def test_env_types_and_aws_env(tmp_path):
    s = load_settings(str(tmp_path), environ={
        "CEDANA_CRIU_LEAVE_RUNNING": "true", "CEDANA_CACHE_SIZE": "512M",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "k",
    })
    assert s.criu.leave_running is True and s.cache.size == 512 << 20
    assert s.aws.endpoint == "http://127.0.0.1:9" and s.aws.access_key_id == "k"


def test_every_key_has_an_env_name():
    assert "checkpoint.dir" in all_keys() and "store.url" in all_keys() and "db.path" in all_keys()
    assert parse_size("2GiB") == 2 << 30 and parse_size("4096") == 4096


def test_cli_reports_unknown_key_in_one_line(tmp_path):
    import subprocess
    import sys

    (tmp_path / "config.json").write_text('{"checkpoint": {"dri": "/x"}}')
    r = subprocess.run([sys.executable, "-m", "cedanafs.cli", "--config-dir", str(tmp_path), "dump", "process", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 78 and r.stderr.count("\n") == 1 and "checkpoint.dri" in r.stderr


@pytest.mark.parametrize("wrong,right", [
    ("aws.endpoint_url", "aws.endpoint"), ("checkpoint.dri", "checkpoint.dir"), ("job.logdir", "job.log_dir"),
    ("mount.dirs", "mount.dir"),
])
def test_unknown_key_suggests_the_nearest_known_one(tmp_path, wrong, right):
    section, name = wrong.split(".")
    with pytest.raises(ConfigError, match=f"did you mean '{right}'"):
        load_settings(str(tmp_path), json.dumps({section: {name: "x"}}), environ={})


def test_unknown_cedana_env_is_reported_with_the_nearest_name():
    from cedanafs.config import unknown_env

    env = {"CEDANA_CHECKPOINT_DRI": "/x", "CEDANA_ADDRESS": "/s", "CEDANA_LOG_LEVEL": "info",
           "CEDANA_CONFIG_DIR": "/c", "CEDANA_WHATEVER": "1", "PATH": "/bin"}
    assert unknown_env(env) == ["CEDANA_CHECKPOINT_DRI (did you mean CEDANA_CHECKPOINT_DIR?)", "CEDANA_WHATEVER"]


def test_the_command_warns_about_an_unknown_cedana_variable(cedana, monkeypatch):
    monkeypatch.setenv("CEDANA_STORE_ULR", "/x")
    result = cedana("features", check=True)
    assert "Warning: unknown environment variable CEDANA_STORE_ULR (did you mean CEDANA_STORE_URL?)" in result.stderr


def test_job_log_dir_key(tmp_path):
    assert load_settings(str(tmp_path), environ={}).job.log_dir == "/var/log"
    assert load_settings(str(tmp_path), environ={"CEDANA_JOB_LOG_DIR": "/l"}).job.log_dir == "/l"
