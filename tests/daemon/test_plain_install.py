"""Two installs, one package, for real: `pip install costwatch` (no extra) into a fresh venv, with the real
openai SDK next to it, instruments an app whose events a daemon from the full install stores; that venv
holds none of the daemon's packages, and its `costwatch daemon` says which extra to install.

test_app_install.py simulates the plain install by hiding packages; this one installs it (from this tree,
with its declared dependencies resolved by pip: the pip cache or PyPI). One venv per test session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from costwatch.cli.errors import DAEMON_PACKAGES, FLEET_PACKAGES
from tests.fakes.provider import CHAT_USAGE, FakeProvider
from tests.support.processes import INSTRUMENTED_CHAT_APP, DaemonProcess

ROOT = Path(__file__).resolve().parents[2]

# pip's words when it cannot reach an index: the test is skipped then, any other failure fails it.
_OFFLINE = (
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "Max retries exceeded",
    "No matching distribution found",
)


def _plain_env(**extra: str) -> dict[str, str]:
    """No PYTHONPATH (the venv must use its installed costwatch, not this tree) and no COSTWATCH_*."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COSTWATCH_", "OPENAI_", "ANTHROPIC_", "PYTHON", "VIRTUAL_ENV"))
    }
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def plain_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with `pip install <this tree> openai`: costwatch without extras, and an SDK."""
    venv = tmp_path_factory.mktemp("plain-install") / "venv"
    made = subprocess.run(
        [sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=300
    )
    if made.returncode != 0:
        pytest.skip(f"cannot create a venv with pip here: {made.stderr.strip()[-300:]}")
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         str(ROOT), "openai>=2"],
        capture_output=True, text=True, timeout=900, env=_plain_env(), cwd=venv.parent,
    )  # fmt: skip
    if pip.returncode != 0:
        output = pip.stdout + pip.stderr
        if any(marker in output for marker in _OFFLINE):
            pytest.skip(f"pip cannot reach a package index: {output.strip()[-300:]}")
        raise AssertionError(f"pip install of this tree failed:\n{output[-3000:]}")
    return venv


def _python(venv: Path, code: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "python"), "-c", code, *args],
        env=env, capture_output=True, text=True, timeout=120, cwd=venv.parent,
    )  # fmt: skip


@pytest.mark.slow
def test_plain_install_instruments_an_app_and_leaves_the_daemon_out(plain_venv: Path, tmp_path: Path) -> None:
    packages = sorted(DAEMON_PACKAGES | FLEET_PACKAGES | {"rich"})
    probe = _python(
        plain_venv,
        "import costwatch, importlib.util, json, sys\n"
        "print(json.dumps({'file': costwatch.__file__, 'version': costwatch.__version__,"
        " 'present': [m for m in sys.argv[1:] if importlib.util.find_spec(m)]}))",
        *packages,
        env=_plain_env(),
    )
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    assert found["file"].startswith(str(plain_venv)), found  # the installed package, not this tree
    assert found["present"] == [], f"the plain install pulled in daemon packages: {found['present']}"

    app = INSTRUMENTED_CHAT_APP
    with DaemonProcess(tmp_path / "state") as daemon, FakeProvider() as fake:
        env = _plain_env(
            COSTWATCH_URL=daemon.url, COSTWATCH_APP="plain-install", COSTWATCH_STATE_DIR=str(daemon.state_dir)
        )
        result = _python(plain_venv, app, fake.url, env=env)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout.splitlines()[-1]) == {"content": "Hello from the fake"}
        assert result.stderr == "", result.stderr
        rows = daemon.sql(
            "SELECT app, request_model, input_tokens, cached_input_tokens, output_tokens, reasoning_tokens"
            " FROM usage_events"
        )
        assert rows == [
            {
                "app": "plain-install",
                "request_model": "gpt-4o-mini",
                "input_tokens": CHAT_USAGE["prompt_tokens"],
                "cached_input_tokens": CHAT_USAGE["prompt_tokens_details"]["cached_tokens"],
                "output_tokens": CHAT_USAGE["completion_tokens"],
                "reasoning_tokens": CHAT_USAGE["completion_tokens_details"]["reasoning_tokens"],
            }
        ], rows
        # The daemon-client commands of the plain install reach the full install's daemon.
        status = subprocess.run(
            [str(plain_venv / "bin" / "costwatch"), "status"],
            env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr

    down = subprocess.run(
        [str(plain_venv / "bin" / "costwatch"), "daemon", "--port", "0"],
        env=_plain_env(COSTWATCH_STATE_DIR=str(tmp_path / "other")),
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert down.returncode == 1, (down.returncode, down.stderr)
    assert "pip install 'costwatch[daemon]'" in down.stderr and down.stderr.count("\n") == 1, down.stderr
