"""`promtool check rules` / `test rules` on alerts/prometheus; `amtool` on the Alertmanager example."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.prometheus._stack import ALERTMANAGER_EXAMPLE, RULES, RULES_TEST

PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package `prometheus`; CI installs it)"
)
ALERTS = {
    "LLMErrorRateHigh",
    "LLMLatencyP99High",
    "LLMRateLimitStorm",
    "LLMCostBurnRateAbovePace",
    "LLMFleetMonthlyBudgetExhausted",
    "CostwatchKillSwitchEngaged",
    "CostwatchDaemonDown",
    "CostwatchNotIngesting",
    "CostwatchRuleEngineFailing",
    "CostwatchNotificationsFailing",
    "CostwatchClientEventsDropped",
}


def run(argv: list[str], cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


@needs_promtool
def test_promtool_check_rules() -> None:
    result = run([str(PROMTOOL), "check", "rules", str(RULES)], RULES.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    result = run([str(PROMTOOL), "test", "rules", RULES_TEST.name], RULES_TEST.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """The unit tests see the rules: with the error-rate threshold raised they must fail."""
    rules = RULES.read_text().replace("          > 0.05\n", "          > 0.5\n", 1)
    assert rules != RULES.read_text()
    (tmp_path / RULES.name).write_text(rules)
    # Only the error-rate group (the fleet-spend group alone takes ~10 s to evaluate).
    tests = yaml.safe_load(RULES_TEST.read_text())
    tests["tests"] = [g for g in tests["tests"] if "error rate" in g["name"]]
    assert len(tests["tests"]) == 1
    (tmp_path / RULES_TEST.name).write_text(yaml.safe_dump(tests))
    result = run([str(PROMTOOL), "test", "rules", RULES_TEST.name], tmp_path)
    assert result.returncode != 0
    assert "LLMErrorRateHigh" in result.stdout + result.stderr


@needs_promtool
def test_unit_tests_need_the_request_model_grouping(tmp_path: Path) -> None:
    """Grouped by `model`, a model's failures (requested name) and successes (served snapshot)
    split into two series: the error-rate and 429 tests must then fail (a failures-only series
    is at 100 %)."""
    rules = RULES.read_text().replace("by (provider, request_model, app)", "by (provider, model, app)")
    assert rules.count("by (provider, model, app)") >= 5
    (tmp_path / RULES.name).write_text(rules.replace("$labels.request_model", "$labels.model"))
    tests = yaml.safe_load(RULES_TEST.read_text())
    tests["tests"] = [g for g in tests["tests"] if "error rate" in g["name"] or "429s" in g["name"]]
    assert len(tests["tests"]) == 2
    for group in tests["tests"]:
        for case in group["alert_rule_test"]:
            for alert in case["exp_alerts"]:
                alert["exp_labels"]["model"] = alert["exp_labels"].pop("request_model")
    (tmp_path / RULES_TEST.name).write_text(yaml.safe_dump(tests))
    result = run([str(PROMTOOL), "test", "rules", RULES_TEST.name], tmp_path)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "LLMErrorRateHigh" in output and "LLMRateLimitStorm" in output


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    rules = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert alerts == ALERTS
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    firing: set[str] = set()
    silent: set[str] = set()
    for group in tests:
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    assert firing == ALERTS, f"never tested firing: {sorted(ALERTS - firing)}"
    assert silent == ALERTS, f"never tested silent: {sorted(ALERTS - silent)}"
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    assert "costwatch:llm_cost_usd:rate5m" in recorded
    assert {
        "costwatch:fleet_llm_cost_usd:day_to_date",
        "costwatch:fleet_llm_cost_usd:month_to_date",
    } <= recorded


needs_amtool = pytest.mark.skipif(
    AMTOOL is None, reason="amtool not installed (Debian package `prometheus-alertmanager`)"
)


@needs_amtool
def test_alertmanager_example_is_valid() -> None:
    result = run([str(AMTOOL), "check-config", str(ALERTMANAGER_EXAMPLE)], ALERTMANAGER_EXAMPLE.parent)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_amtool
@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        (["killswitch=fleet", "alertname=LLMFleetMonthlyBudgetExhausted"], "costwatch-killswitch,team"),
        (["alertname=CostwatchKillSwitchEngaged", "severity=warning"], "team"),
        (["alertname=LLMErrorRateHigh", "severity=warning"], "team"),
    ],
)
def test_alertmanager_example_routing(labels: list[str], receivers: str) -> None:
    argv = [str(AMTOOL), "config", "routes", "test", f"--config.file={ALERTMANAGER_EXAMPLE}", *labels]
    result = run(argv, ALERTMANAGER_EXAMPLE.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receivers


def test_alertmanager_example_posts_to_every_killswitch_webhook() -> None:
    config = yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text())
    receivers = {r["name"]: r for r in config["receivers"]}
    webhooks = receivers["costwatch-killswitch"]["webhook_configs"]
    assert len(webhooks) >= 2, "an example fleet has several daemons"
    for hook in webhooks:
        assert hook["url"].endswith("/v1/killswitch/alertmanager")
        assert hook["send_resolved"] is True, "resolving the alert lifts the kill switch"
        assert hook["http_config"]["authorization"]["type"] == "Bearer"
