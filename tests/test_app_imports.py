"""``import costwatch.autoinstrument`` loads none of the daemon's packages, nor pydantic, nor what only some
configurations need (issue 18: an app's start pays ≤ 30 ms; docs/benchmarks.md section 5a has the figures).
No timing here: which modules a fresh process holds after the import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import clean_env

# pydantic and pydantic-settings: the daemon's settings; OpenTelemetry: only once the app imported it;
# platformdirs: not on Linux; yaml: only for a YAML config file. bench/imports.py reports the same list.
NEVER = (
    "pydantic",
    "pydantic_settings",
    "duckdb",
    "pyarrow",
    "starlette",
    "uvicorn",
    "apscheduler",
    "apprise",
    "rich",
    "genai_prices",
    "prometheus_client",
    "opentelemetry",
    "platformdirs",
    "yaml",
)


def _modules_after(prelude: str, env: dict[str, str]) -> tuple[set[str], Path]:
    code = (
        f"{prelude}\nimport sys\nbefore = set(sys.modules)\nimport costwatch.autoinstrument\n"
        "from costwatch.instrumentation import patch\nassert patch.is_installed()\n"
        "print(' '.join(sorted(set(sys.modules) - before)))\n"
        "from costwatch.instrumentation import _emitter_for_tests\nprint(_emitter_for_tests().settings.state_dir)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    modules, state_dir = done.stdout.splitlines()
    return {name.split(".")[0] for name in modules.split()}, Path(state_dir)


@pytest.mark.parametrize("prelude", ["", "import openai"])
def test_autoinstrument_imports_no_heavy_package(tmp_path: Path, prelude: str) -> None:
    # Nothing configured but the daemon's URL (nothing listens): the state dir is the default one.
    env = clean_env(
        HOME=str(tmp_path), COSTWATCH_URL="http://127.0.0.1:9", COSTWATCH_EXIT_FLUSH_TIMEOUT_S="0"
    )
    env.pop("XDG_DATA_HOME", None)
    added, state_dir = _modules_after(prelude, env)
    assert "costwatch" in added
    assert not added & set(NEVER), sorted(added & set(NEVER))
    assert state_dir == tmp_path / ".local" / "share" / "costwatch"  # the default state dir, all the same


def test_a_toml_config_file_needs_no_yaml(tmp_path: Path) -> None:
    config = tmp_path / "costwatch.toml"
    config.write_text("url = 'http://127.0.0.1:9'\napp = 'from-toml'\n")
    env = clean_env(COSTWATCH_STATE_DIR=str(tmp_path), COSTWATCH_CONFIG=str(config))
    added, state_dir = _modules_after("", env)
    assert not added & set(NEVER) and state_dir == tmp_path
