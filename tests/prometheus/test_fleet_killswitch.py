"""Fleet budget end to end: Prometheus + Alertmanager engage every daemon's kill switch.

Two daemons on loopback; spend happens on one of them only. A real Prometheus scrapes both
and evaluates the shipped LLMFleetMonthlyBudgetExhausted alert (month to date read straight
from the counters so it fires within seconds; the budget scraped from a tiny exporter the
test controls); a real Alertmanager routes it with the shipped alertmanager.example.yml
routing tree to both daemons' kill-switch webhooks. An instrumented process attached to
either daemon then gets KillSwitchEngaged; both hosts' Parquet exports are queried together
with DuckDB; raising the budget resolves the alert and the resolved webhook lifts both switches.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from tests.fakes.provider import FakeProvider
from tests.prometheus._stack import (
    ALERTMANAGER_EXAMPLE,
    PRICES,
    REPO,
    RULES,
    Daemon,
    alertmanager,
    daemon,
    prometheus,
    run_traffic,
    wait_for,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("prometheus") is None
        or (shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")) is None,
        reason="needs Debian packages `prometheus` and `prometheus-alertmanager` (CI installs them)",
    ),
]

ALERT = "LLMFleetMonthlyBudgetExhausted"
TINY_BUDGET = 0.000001  # USD


class BudgetExporter:
    """Serves ``fleet_budget_usd`` for Prometheus to scrape, so the test can raise the budget."""

    def __init__(self, budget: float) -> None:
        self.budget = budget
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = f"fleet_budget_usd {exporter.budget}\n".encode()
                self.send_response(200)
                self.send_header("content-type", "text/plain; version=0.0.4")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.target = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def fleet_rules(path: Path) -> Path:
    """The shipped fleet-budget alert; the budget scraped from the test, month to date from the counters."""
    shipped = yaml.safe_load(RULES.read_text())
    rule = next(r for g in shipped["groups"] for r in g["rules"] if r.get("alert") == ALERT)
    rule = copy.deepcopy(rule)
    assert "costwatch:fleet_llm_cost_usd:month_to_date" in rule["expr"]
    # The recorded month-to-date integrates a 5-minute rate at 1-minute steps: too slow for a
    # test. Every counter here started this month, so their sum is the month to date.
    rule["expr"] = rule["expr"].replace(
        "costwatch:fleet_llm_cost_usd:month_to_date", "sum(costwatch_llm_cost_usd_total)"
    )
    budget = {"record": "costwatch:fleet_budget_usd:monthly", "expr": "max(fleet_budget_usd)"}
    rules = {"groups": [{"name": "fleet", "rules": [budget, rule]}]}
    path.write_text(yaml.safe_dump(rules))
    return path


def alertmanager_config(workdir: Path, daemons: list[Daemon]) -> dict[str, Any]:
    """The shipped example's routing tree; its webhooks pointed at the test daemons."""
    config: dict[str, Any] = yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text())
    receivers = {r["name"]: r for r in config["receivers"]}
    example_hook = receivers["costwatch-killswitch"]["webhook_configs"][0]
    hooks = []
    for d in daemons:
        token_file = workdir / f"{d.proc.name}.token"
        token_file.write_text(d.token)
        hook = copy.deepcopy(example_hook)
        hook["url"] = d.url + "/v1/killswitch/alertmanager"
        hook["http_config"]["authorization"]["credentials_file"] = str(token_file)
        hooks.append(hook)
    receivers["costwatch-killswitch"]["webhook_configs"] = hooks
    # Send the "resolved" notification within a second rather than the example's minute.
    for route in config["route"]["routes"]:
        if route["receiver"] == "costwatch-killswitch":
            route["group_interval"] = "1s"
    for name in receivers:
        if name != "costwatch-killswitch":  # no humans on loopback: a receiver that drops
            receivers[name] = {"name": name}
    config["receivers"] = list(receivers.values())
    return config


def engaged_by_alertmanager(d: Daemon) -> list[dict[str, Any]]:
    return [ks for ks in d.killswitch()["engaged"] if str(ks.get("source", "")).startswith("alertmanager:")]


def test_fleet_budget_alert_engages_every_daemons_killswitch(
    tmp_path: Path, fake_provider_server: FakeProvider
) -> None:
    started = time.monotonic()

    def phase(name: str) -> None:  # shown when the test fails (or with -s)
        print(f"{time.monotonic() - started:6.1f}s {name}")

    budget = BudgetExporter(TINY_BUDGET)
    with (
        contextlib.closing(budget),
        daemon(tmp_path, "daemon-a", config={"prices": PRICES}) as a,
        daemon(tmp_path, "daemon-b", config={"prices": PRICES}) as b,
        alertmanager(tmp_path, alertmanager_config(tmp_path, [a, b])) as am,
        prometheus(
            tmp_path,
            {"host-a": a.url, "host-b": b.url},
            rule_files=[fleet_rules(tmp_path / "fleet.rules.yml")],
            alertmanager_url=am.url,
            extra_scrape_configs=[{"job_name": "budget", "static_configs": [{"targets": [budget.target]}]}],
        ) as prom,
    ):
        prom.wait_result('up{job="costwatch"} == 1', timeout=30, n=2)
        prom.wait_result("costwatch:fleet_budget_usd:monthly", timeout=10)
        phase("Prometheus scrapes both daemons and the budget")
        assert a.killswitch()["engaged"] == [] and b.killswitch()["engaged"] == []
        assert prom.query(f'ALERTS{{alertname="{ALERT}"}}')["data"]["result"] == []

        # Spend on host A only: the fleet budget is shared, so host B is stopped too.
        result = run_traffic(a, fake_provider_server.url, "fleet-app")
        assert result.returncode == 0, result.stdout + result.stderr[-3000:]

        phase("traffic on host A done")
        prom.wait_result(f'ALERTS{{alertname="{ALERT}", alertstate="firing"}}', timeout=20)
        phase("alert firing")
        for d in (a, b):
            switches = wait_for(
                f"{d.proc.name}'s kill switch", lambda d=d: engaged_by_alertmanager(d), 20, am.proc.log
            )
            (ks,) = switches
            assert ks["scope"] == {}, "the fleet alert carries no costwatch_scope_* label: global"
            assert "fleet LLM budget exhausted" in ks["reason"]

        phase("both kill switches engaged")
        # A fresh instrumented process on each host is refused with KillSwitchEngaged.
        for d in (a, b):
            before = fake_provider_server.count
            result = run_traffic(d, fake_provider_server.url, "fleet-app", mode="expect-blocked", timeout=40)
            assert result.returncode == 0, result.stdout + result.stderr[-3000:]
            summary = json.loads(result.stdout.strip().splitlines()[-1])
            assert summary["blocked"] is True
            assert "KillSwitchEngaged" in summary["error"] or "kill switch" in summary["error"].lower()
            # Only calls made before the process first heard the daemon's state reach the provider.
            assert fake_provider_server.count - before == summary["calls_before"]

        phase("instrumented processes on both hosts blocked")
        # Daily Parquet exports from both hosts, queried together (docs/fleet.md).
        lake = tmp_path / "lake"
        for d, host in ((a, "host-a"), (b, "host-b")):
            export_parquet(d, lake / f"daemon={host}")
        rows = duckdb.sql(
            "SELECT daemon, count(*) AS calls, sum(cost_usd) AS usd, count(DISTINCT date) AS days"
            f" FROM read_parquet('{lake}/**/*.parquet', hive_partitioning = true) GROUP BY ALL"
        ).fetchall()
        by_daemon = {r[0]: r for r in rows}
        assert by_daemon["host-a"][1] >= 15 and by_daemon["host-a"][2] > 0 and by_daemon["host-a"][3] == 1
        # host-b only saw the calls its kill switch refused (recorded as blocked, no cost).
        assert "host-b" not in by_daemon or not by_daemon["host-b"][2]

        phase("Parquet exported and queried")
        # Raising the budget resolves the alert; the resolved webhook lifts both switches.
        budget.budget = 1e9
        for d in (a, b):
            wait_for(
                f"{d.proc.name}'s switch to lift", lambda d=d: not engaged_by_alertmanager(d), 20, am.proc.log
            )
        phase("both switches lifted")
        result = run_traffic(b, fake_provider_server.url, "fleet-app")
        assert result.returncode == 0, "calls flow again: " + result.stdout + result.stderr[-3000:]
        phase("calls flow again")
    assert time.monotonic() - started < 90


def export_parquet(d: Daemon, directory: Path) -> None:
    """``costwatch export --parquet DIR`` against a running daemon, as a user runs it."""
    env = dict(os.environ, COSTWATCH_STATE_DIR=str(d.state_dir), COSTWATCH_URL=d.url, PYTHONPATH=str(REPO))
    argv = [sys.executable, "-m", "costwatch.cli", "export", "--parquet", str(directory)]
    result = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "exported" in result.stdout
