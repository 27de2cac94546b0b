"""A structural check of dashboards/costwatch-overview.json, standing in for Grafana's schema.

npm ``@grafana/schema`` ships TypeScript types, not a JSON Schema, so `_dashboard.check`
verifies what Grafana needs to import and render the dashboard: required keys, unique ids,
a 24-column grid without overlaps, data sources bound to the template variable, targets with
expr and refId, template variables defined before use. The checker itself is tested on
broken copies, and every metric queried must be one the daemon really exports.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from costwatch.daemon.metrics import DaemonMetrics
from costwatch.daemon.scheduler import RuleMetricsCollector, RuleService
from costwatch.protocol import KillSwitchState
from tests.prometheus import _dashboard as dash
from tests.prometheus._stack import DASHBOARD, REPO, RULES

METRIC_RE = re.compile(r"\b(costwatch_[a-z0-9_]+)\b")


def exported_metric_names() -> set[str]:
    """Sample names the daemon can expose: its own registry plus the rules engine's collector
    (counter _total, histogram _bucket/_sum/_count)."""
    metrics = DaemonMetrics(killswitch_state=lambda: KillSwitchState(engaged=[], version=0))
    families = list(metrics.registry.collect())
    families += list(RuleMetricsCollector(RuleService(None, lambda: None, None)).collect())
    names: set[str] = set()
    for family in families:
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    return dash.load(DASHBOARD)


def test_the_dashboard_passes_the_structural_check(board: dict[str, Any]) -> None:
    assert dash.check(board) == []


def _panel(board: dict[str, Any], title: str) -> dict[str, Any]:
    return next(p for p in dash.iter_panels(board) if p["title"] == title)


def _dup_id(b: dict[str, Any]) -> None:
    _panel(b, "Burn rate")["id"] = _panel(b, "Spend today")["id"]


def _overlap(b: dict[str, Any]) -> None:
    _panel(b, "Burn rate")["gridPos"]["x"] -= 1


def _too_wide(b: dict[str, Any]) -> None:
    _panel(b, "Cost by provider (USD/h)")["gridPos"]["w"] = 9


def _fixed_datasource(b: dict[str, Any]) -> None:
    _panel(b, "Kill switches")["datasource"] = {"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}


def _no_ref_id(b: dict[str, Any]) -> None:
    del _panel(b, "Daemons")["targets"][0]["refId"]


def _no_expr(b: dict[str, Any]) -> None:
    _panel(b, "Daemons")["targets"][0]["expr"] = " "


def _undefined_variable(b: dict[str, Any]) -> None:
    target = _panel(b, "Burn rate")["targets"][0]
    target["expr"] = target["expr"].replace("$app", "$application")


def _variable_removed(b: dict[str, Any]) -> None:
    b["templating"]["list"] = [v for v in b["templating"]["list"] if v["name"] != "host"]


def _variables_out_of_order(b: dict[str, Any]) -> None:
    b["templating"]["list"].reverse()


def _old_schema(b: dict[str, Any]) -> None:
    b["schemaVersion"] = 30


def _unknown_type(b: dict[str, Any]) -> None:
    _panel(b, "Daemons")["type"] = "graph"


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (_dup_id, "duplicate panel ids"),
        (_overlap, "overlap"),
        (_too_wide, "exceeds 24 columns"),
        (_fixed_datasource, "datasource"),
        (_no_ref_id, "refIds"),
        (_no_expr, "has no expr"),
        (_undefined_variable, "$application is used by ['Burn rate'] but not defined"),
        (_variable_removed, "template variables missing: ['host']"),
        (_variables_out_of_order, "not defined before it"),
        (_old_schema, "schemaVersion 30 < 39"),
        (_unknown_type, "type 'graph'"),
    ],
)
def test_the_check_finds_each_kind_of_breakage(
    board: dict[str, Any], breakage: Callable[[dict[str, Any]], None], expected: str
) -> None:
    broken = copy.deepcopy(board)
    breakage(broken)
    problems = dash.check(broken)
    assert any(expected in p for p in problems), problems


def test_every_metric_is_exported_by_the_daemon(board: dict[str, Any]) -> None:
    exported = exported_metric_names()
    shown = {m for t in dash.targets(board) for m in METRIC_RE.findall(t.expr)}
    unknown = shown - exported
    assert not unknown, f"the dashboard queries metrics the daemon does not export: {sorted(unknown)}"


def test_rules_use_only_exported_metrics() -> None:
    rules = yaml.safe_load(RULES.read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in METRIC_RE.findall(e)}
    unknown = used - exported_metric_names()
    assert not unknown, f"the alert rules use metrics the daemon does not export: {sorted(unknown)}"


def test_provisioning_points_at_the_dashboard() -> None:
    prov = REPO / "dashboards" / "provisioning"
    datasources = yaml.safe_load((prov / "datasources" / "costwatch-prometheus.yml").read_text())
    assert datasources["apiVersion"] == 1
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["url"].startswith("http")
    providers = yaml.safe_load((prov / "dashboards" / "costwatch.yml").read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
