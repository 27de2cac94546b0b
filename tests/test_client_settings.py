"""An app's settings (`ClientSettings`, msgspec): keyword arguments > ``COSTWATCH_*`` > the config file >
the defaults, pydantic's lax values, one `SettingError` naming the field, and an app left uninstrumented
with one error line when a value is invalid."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import platformdirs
import pytest

from costwatch.client_settings import ClientSettings
from costwatch.settings import DaemonSettings
from costwatch.sources import SOURCE_ORDER, SettingError, default_state_dir
from tests.support.processes import clean_env


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.upper().startswith("COSTWATCH_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("COSTWATCH_STATE_DIR", str(tmp_path / "state"))
    return monkeypatch


def _config(env: pytest.MonkeyPatch, tmp_path: Path, text: str, suffix: str = ".toml") -> None:
    path = tmp_path / f"costwatch{suffix}"
    path.write_text(text)
    env.setenv("COSTWATCH_CONFIG", str(path))


def test_defaults(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = ClientSettings()
    assert (s.url, s.app, s.token, s.fail_closed, s.disabled) == (
        "http://127.0.0.1:7707",
        "default",
        None,
        False,
        False,
    )
    assert (s.inject_stream_usage, s.queue_max_events, s.batch_max_events) == ("openai", 100_000, 2_000)
    assert (s.flush_interval_s, s.killswitch_poll_s, s.fail_closed_after_s) == (0.5, 0.25, 5.0)
    assert (s.spool_max_bytes, s.exit_flush_timeout_s) == (256 * 1024 * 1024, 2.0)
    assert s.state_dir == tmp_path / "state" and s.spool_dir == tmp_path / "state" / "spool"


def test_init_beats_env_beats_file_beats_default(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert SOURCE_ORDER == ("init", "env", "config")
    _config(
        env,
        tmp_path,
        "app = 'from-file'\ntoken = 'file-token'\nqueue_max_events = 500\nflush_interval_s = 2\n"
        "fail_closed = true\nport = 7000\nrules = 'x'\n",  # daemon settings in the same file: ignored
    )
    env.setenv("COSTWATCH_APP", "from-env")
    env.setenv("costwatch_queue_max_events", "700")  # any case
    s = ClientSettings(app="from-init")
    assert s.app == "from-init"  # init > env
    assert s.queue_max_events == 700  # env > file
    assert s.token == "file-token" and s.flush_interval_s == 2.0 and s.fail_closed is True  # file > default
    assert s.batch_max_events == 2_000  # default
    assert ClientSettings(token=None).token is None  # an explicit None is a value


def test_the_daemon_reads_in_the_same_order(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _config(env, tmp_path, "token = 'file-token'\nurl = 'http://127.0.0.1:7900'\nport = 7000\n")
    env.setenv("COSTWATCH_URL", "http://127.0.0.1:7901")
    d, s = DaemonSettings(port=7001), ClientSettings()
    assert (d.port, d.token, d.url) == (7001, "file-token", "http://127.0.0.1:7901")
    assert (s.token, s.url) == (d.token, d.url)


def test_yaml_config_and_state_dir_from_the_file(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.delenv("COSTWATCH_STATE_DIR")
    _config(env, tmp_path, f"state_dir: {tmp_path / 'elsewhere'}\napp: yaml-app\n", ".yaml")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "token").write_text("disk-token\n")
    s = ClientSettings()
    assert s.app == "yaml-app" and s.state_dir == tmp_path / "elsewhere"
    assert s.resolved_token() == "disk-token"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        *((text, True) for text in ("1", "true", "TRUE", "yes", "on", "t", "y")),
        *((text, False) for text in ("0", "false", "no", "off", "f", "n")),
    ],
)
def test_booleans_as_pydantic_read_them(env: pytest.MonkeyPatch, text: str, expected: bool) -> None:
    env.setenv("COSTWATCH_FAIL_CLOSED", text)
    env.setenv("COSTWATCH_DISABLED", text)
    s = ClientSettings()
    assert s.fail_closed is expected and s.disabled is expected


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("QUEUE_MAX_EVENTS", "5", ">= 100"),
        ("QUEUE_MAX_EVENTS", "many", "`int`"),
        ("FLUSH_INTERVAL_S", "0", "> 0"),
        ("FLUSH_INTERVAL_S", "11", "<= 10"),
        ("INJECT_STREAM_USAGE", "sometimes", "openai|all|off"),
        ("APP", "", "length >= 1"),
        ("FAIL_CLOSED", "maybe", "`bool`"),
        ("URL", "localhost:7707", "URL"),
    ],
)
def test_invalid_value_names_the_field(env: pytest.MonkeyPatch, name: str, value: str, words: str) -> None:
    env.setenv(f"COSTWATCH_{name}", value)
    with pytest.raises(SettingError) as info:
        ClientSettings()
    assert info.value.field == name.lower() and info.value.value == value
    assert words in info.value.msg and "\n" not in str(info.value)


def test_unknown_keyword_is_a_type_error(env: pytest.MonkeyPatch) -> None:
    with pytest.raises(TypeError, match="flush_interval"):
        ClientSettings(flush_interval=1)


@pytest.mark.parametrize("xdg", [None, "/srv/data", "  "])
def test_linux_state_dir_is_platformdirs(monkeypatch: pytest.MonkeyPatch, xdg: str | None) -> None:
    monkeypatch.delenv("COSTWATCH_STATE_DIR", raising=False)
    if xdg is None:
        monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_DATA_HOME", xdg)
    assert default_state_dir() == Path(platformdirs.user_data_dir("costwatch"))


def test_invalid_setting_leaves_the_app_uninstrumented_with_one_line(tmp_path: Path) -> None:
    code = (
        "import costwatch.autoinstrument\n"
        "from costwatch.instrumentation import patch\n"
        "print('installed', patch.is_installed())\n"
    )
    env = clean_env(COSTWATCH_STATE_DIR=str(tmp_path), COSTWATCH_QUEUE_MAX_EVENTS="5")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "installed False"
    assert done.stderr == (
        "costwatch is OFF for this process: invalid settings: queue_max_events: Expected `int` >= 100 (got '5')\n"
    )
