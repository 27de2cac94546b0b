"""The CLI's fast path: `costwatch.sources` finds the daemon exactly as an app (`ClientSettings`) does,
and `costwatch kill` / `resume` / `status` against a running daemon import neither pydantic,
duckdb nor httpx (they are on the kill switch's critical path)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from costwatch.daemon.server import RunningDaemon, build_daemon, start_in_thread
from costwatch.settings import ClientSettings, DaemonSettings
from costwatch.sources import DaemonEndpoint, SettingError, daemon_endpoint

ROOT = Path(__file__).resolve().parents[2]


def _via_settings(url: str | None) -> DaemonEndpoint:
    """What an instrumented app resolves (`ClientSettings`), for the same environment and file."""
    settings = ClientSettings(**({"url": url} if url is not None else {}))
    return DaemonEndpoint(settings.url, settings.resolved_token())


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for key in list(os.environ):
        if key.upper().startswith("COSTWATCH_"):
            monkeypatch.delenv(key)
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("COSTWATCH_STATE_DIR", str(state))
    return state


@pytest.mark.parametrize(
    ("env", "config", "flag", "expected"),
    [
        ({}, None, None, "http://127.0.0.1:7707"),
        # COSTWATCH_HOST/PORT are what the daemon binds: no client reads them.
        ({"COSTWATCH_PORT": "7801", "COSTWATCH_HOST": "127.0.0.2"}, None, None, "http://127.0.0.1:7707"),
        ({"COSTWATCH_URL": "http://127.0.0.1:7801/"}, None, None, "http://127.0.0.1:7801"),
        ({"costwatch_url": "http://127.0.0.1:7802"}, None, None, "http://127.0.0.1:7802"),  # any case
        (
            {"COSTWATCH_URL": "http://127.0.0.1:7803"},
            "url = 'http://[::1]:7900'\n",
            None,
            "http://127.0.0.1:7803",
        ),
        (
            {},
            "url = 'http://localhost:7900'\ntoken = 'from-file'\nport = 7000\n",
            None,
            "http://localhost:7900",
        ),
        (
            {"COSTWATCH_TOKEN": "from-env"},
            "url = 'http://127.0.0.1:7900'\n",
            "http://127.0.0.1:7904",
            "http://127.0.0.1:7904",
        ),
        ({}, "url: https://costwatch.internal/prefix\n", None, "https://costwatch.internal/prefix"),  # YAML
    ],
)
def test_cli_and_apps_find_the_daemon_at_the_same_url(
    clean_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    config: str | None,
    flag: str | None,
    expected: str,
) -> None:
    (clean_env / "token").write_text("token-on-disk\n")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if config is not None:
        suffix = ".toml" if "=" in config else ".yaml"
        path = clean_env / f"cw{suffix}"
        path.write_text(config)
        monkeypatch.setenv("COSTWATCH_CONFIG", str(path))
    fast = daemon_endpoint(flag)
    assert fast.url == expected
    assert fast == _via_settings(flag)
    assert fast.token in ("token-on-disk", "from-file", "from-env")


@pytest.mark.parametrize(
    "url", ["abc", "localhost:7707", "ftp://127.0.0.1:7707", "http://127.0.0.1:99999", "http://:80"]
)
def test_bad_url_is_a_setting_error(clean_env: Path, monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("COSTWATCH_URL", url)
    with pytest.raises(SettingError) as info:
        daemon_endpoint()
    assert info.value.field == "url"
    with pytest.raises(ValueError):  # an app's settings refuse the same values (SettingError)
        ClientSettings()


def _imported_modules(env: dict[str, str], *args: str) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    code = (
        "import sys\nfrom costwatch.cli import main\n"
        "try:\n    main(sys.argv[1:])\n"
        "except SystemExit as exc:\n"
        "    print('MODULES', ' '.join(sorted(sys.modules)), file=sys.stderr)\n"
        "    raise\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60
    )
    line = next(x for x in result.stderr.splitlines() if x.startswith("MODULES "))
    return set(line.split()[1:]), result


HEAVY = (
    "pydantic",
    "pydantic_settings",
    "duckdb",
    "httpx",
    "httpx2",
    "costwatch.instrumentation",
    "psycopg",  # fleet mode: only the daemon talks to Postgres, and only with a DSN
    "psycopg_pool",
)
# Not heavy, but ~4.5 ms of a CLI start-up that competes with busy apps for the CPU.
AVOIDABLE = ("typing", "dataclasses")


@pytest.fixture
def full_daemon(tmp_path: Path) -> Iterator[RunningDaemon]:
    """The daemon as `costwatch daemon` builds it: every service and route (status reads /v1/budgets)."""
    settings = DaemonSettings(state_dir=tmp_path, port=0, host="127.0.0.1", rules=tmp_path / "no-rules")
    daemon = start_in_thread(build_daemon(settings))
    yield daemon
    daemon.stop()


def test_kill_resume_status_stay_light(full_daemon: RunningDaemon, tmp_path: Path) -> None:
    daemon = full_daemon
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("COSTWATCH_")}
    env.update(COSTWATCH_STATE_DIR=str(tmp_path), COSTWATCH_URL=daemon.url, PYTHONPATH=str(ROOT))
    engaged_during: list[list[object]] = []
    for args in (
        ("kill", "--scope", "app=svc", "--reason", "light"),
        ("status",),
        ("resume", "--scope", "app=svc"),
    ):
        modules, result = _imported_modules(env, *args)
        assert result.returncode == 0, result.stderr
        assert "costwatch.cli" in modules  # the probe really saw the run
        assert not [m for m in HEAVY if m in modules], (args, [m for m in HEAVY if m in modules])
        assert not [m for m in AVOIDABLE if m in modules], (args, [m for m in AVOIDABLE if m in modules])
        engaged_during.append(_engaged(daemon))
    # The light path really talked to the daemon: engaged by kill, still so at status, lifted by resume.
    assert engaged_during[0] == [{"app": "svc"}] and engaged_during[1] == [{"app": "svc"}]
    assert engaged_during[2] == []


def _engaged(daemon: RunningDaemon) -> list[object]:
    import httpx

    response = httpx.get(
        f"{daemon.url}/v1/killswitch",
        headers={"Authorization": f"Bearer {daemon.token}"},
        timeout=10,
    )
    response.raise_for_status()
    return [entry["scope"] for entry in response.json()["engaged"]]
