"""`pip install costwatch` in an app's image: the app side and the daemon-client commands run without
the daemon's packages (pyarrow, DuckDB, Apprise, uvicorn, … ~270 MB), which come with `costwatch[daemon]`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from costwatch.cli.errors import DAEMON_PACKAGES
from tests.fakes.provider import FakeProvider
from tests.support.processes import INSTRUMENTED_CHAT_APP, DaemonProcess, clean_env

ROOT = Path(__file__).resolve().parents[2]

# Makes every daemon package unimportable, as in an environment where only `costwatch` is installed.
BLOCK = f"""
import sys
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {sorted(DAEMON_PACKAGES | {"rich"})!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, _Blocked())
"""


def _run(code: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK + code, *args], env=env, capture_output=True, text=True, timeout=60
    )


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return _run("import sys\nfrom costwatch.cli import main\nmain(sys.argv[1:])", *args, env=env)


def test_base_dependencies_hold_no_daemon_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {
        d.split(">")[0].split("<")[0].split(";")[0].strip().replace("-", "_") for d in project["dependencies"]
    }
    daemon = {
        d.split(">")[0].split("<")[0].strip().replace("-", "_")
        for d in project["optional-dependencies"]["daemon"]
    }
    assert not base & (DAEMON_PACKAGES | {"rich"}), base
    assert daemon >= DAEMON_PACKAGES, daemon


@pytest.mark.slow
def test_app_and_client_commands_run_without_the_daemons_packages(tmp_path: Path) -> None:
    app = INSTRUMENTED_CHAT_APP
    with DaemonProcess(tmp_path / "state") as daemon, FakeProvider() as fake:
        result = _run(app, fake.url, env=daemon.app_env("base-install"))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout.splitlines()[-1]) == {"content": "Hello from the fake"}
        rows = daemon.sql("SELECT app, request_model FROM usage_events")
        assert rows == [{"app": "base-install", "request_model": "gpt-4o-mini"}], rows

        env = daemon.env
        out = _cli("sql", "SELECT app, count(*) AS n FROM usage_events GROUP BY app", env=env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[0].split() == ["app", "n"] and "base-install  1" in out.stdout
        assert _cli("kill", "--reason", "plain install", env=env).returncode == 0
        status = _cli("status", env=env)
        assert status.returncode == 0 and "ENGAGED" in status.stdout, status.stderr
        assert _cli("resume", env=env).returncode == 0

    down = _cli("daemon", "--port", "0", env=clean_env(COSTWATCH_STATE_DIR=str(tmp_path / "other")))
    assert down.returncode == 1 and "pip install 'costwatch[daemon]'" in down.stderr, down.stderr
    assert down.stderr.count("\n") == 1
