"""`costwatch rules check|reload|backtest`, the daemon's refusal of invalid rules, and budgets in `status`."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from costwatch.events import encode_many
from tests.daemon.conftest import make_event
from tests.support.processes import DaemonProcess, clean_env, free_port

pytestmark = pytest.mark.slow

GOOD = """
rules:
  - name: daily-usd
    kind: budget
    limit: 1
    window: day
    thresholds:
      - at: 50%
      - at: 100%
"""
TWO_RULES = (
    GOOD
    + """
  - name: monthly-usd
    kind: budget
    limit: 100
    window: month
"""
)
BAD = """
rules:
  - name: daily-usd
    kind: budget
    window: day
    limit: lots
"""


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "costwatch.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_check_reports_file_line_and_field(tmp_path: Path) -> None:
    (tmp_path / "budget.yml").write_text(BAD)
    out = run_cli(clean_env(), "rules", "check", str(tmp_path))
    assert out.returncode == 1
    assert f"{tmp_path / 'budget.yml'}:6: rules[0].limit" in out.stderr
    (tmp_path / "budget.yml").write_text(GOOD)
    out = run_cli(clean_env(), "rules", "check", str(tmp_path))
    assert out.returncode == 0 and "1 rule(s) OK" in out.stdout


def test_daemon_refuses_to_start_with_invalid_rules(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "budget.yml").write_text(BAD)
    env = clean_env(COSTWATCH_STATE_DIR=str(tmp_path / "state"))
    out = run_cli(env, "daemon", "--rules", str(rules), "--port", str(free_port()))
    assert out.returncode == 2
    assert "invalid rules, not starting" in out.stderr and "rules[0].limit" in out.stderr


def test_reload_keeps_old_rules_on_error_then_backtest_and_status(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "budget.yml").write_text(GOOD)
    with DaemonProcess(tmp_path / "state", "--rules", str(rules)) as daemon:
        env = daemon.env
        with daemon.client() as c:
            assert c.get("/v1/rules").json()["rules"] == 1
            (rules / "budget.yml").write_text(BAD)
            out = run_cli(env, "rules", "reload")
            assert out.returncode == 1 and "rules[0].limit" in out.stderr and "NOT reloaded" in out.stderr
            assert c.get("/v1/rules").json()["rules"] == 1  # the old rules still run
            (rules / "budget.yml").write_text(TWO_RULES)
            out = run_cli(env, "rules", "reload")
            assert out.returncode == 0 and "reloaded 2 rule(s)" in out.stdout
            assert c.get("/v1/rules").json()["rules"] == 2

            # 4M gpt-4o-mini input tokens ($0.15/MTok) = $0.60 a minute ago: past 50 % of the $1 day.
            spent = [make_event(ts=time.time() - 60, input_tokens=4_000_000, output_tokens=0)]
            reply = c.post("/v1/events", content=encode_many(spent))
            assert reply.status_code == 200, reply.text
            cost_sql = "SELECT round(sum(cost_usd), 6) FROM usage_events"
            assert c.post("/v1/sql", json={"sql": cost_sql}).json()["rows"] == [[0.6]]

        out = run_cli(env, "rules", "backtest", str(rules), "--since", "1d", "--step", "30m")
        assert out.returncode == 0, out.stderr
        assert "daily-usd" in out.stdout and "50%" in out.stdout

        out = run_cli(env, "status")
        assert out.returncode == 0, out.stderr
        assert (
            "budget daily-usd [global]: $0.60 of $1.00 (60%); at this pace the day budget runs out on"
            in out.stdout
        )
        assert "budget monthly-usd" in out.stdout
