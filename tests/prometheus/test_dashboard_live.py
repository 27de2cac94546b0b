"""Every PromQL query of the dashboard, run by a real Prometheus scraping a real daemon.

A daemon (``python -m costwatch.cli daemon``) is fed by a real instrumented process (the
``openai`` and ``anthropic`` SDKs with ``import costwatch.autoinstrument``) talking to the
fake provider; a real Prometheus scrapes the daemon every second. Each expression of the
dashboard, with its template variables substituted, must parse and return series carrying
the labels the panel's legend shows, unless it is listed in EXPECTED_EMPTY(_TARGETS) with a reason.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.provider import FakeProvider
from tests.prometheus import _dashboard as dash
from tests.prometheus._stack import DASHBOARD, PRICES, Daemon, Prometheus, daemon, prometheus, run_traffic

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="prometheus not installed (Debian package `prometheus`; CI installs it)",
)

HOST = "host-a"
APP = "dash-app"

# Labels every series of a panel must carry (what its legend/columns show).
EXPECTED_LABELS: dict[str, set[str]] = {
    "Spend today": set(),
    "Month to date": set(),
    "Burn rate": set(),
    "Projected month-end": set(),
    "Spend in range": set(),
    "Requests in range": set(),
    "Cost by model (USD/h)": {"model"},
    "Cost by app (USD/h)": {"app"},
    "Cost by provider (USD/h)": {"provider"},
    "Tokens by model and type (tokens/s)": {"model", "type"},
    "Tokens by app and type (tokens/s)": {"app", "type"},
    "Tokens by provider and type (tokens/s)": {"provider", "type"},
    "Top models by spend (range)": {"model"},
    "Top apps by spend (range)": {"app"},
    "Spend by app, provider and model (range)": {"app", "provider", "model"},
    "Requests by status class (req/s)": {"status_class"},
    "Errors by error class (req/s)": {"error_class"},
    "Error rate by error class": {"error_class"},
    "Error rate by app": {"app"},
    "Error rate by requested model": {"request_model"},
    "Request duration p50 / p95 / p99 by model": {"model"},
    "Time to first token p50 / p95 / p99 by model": {"model"},
    "Rate-limit headroom: requests": {"provider", "model"},
    "Rate-limit headroom: tokens": {"provider", "model"},
    "Kill switches": {"scope"},
    "Budget used per rule": {"rule", "scope"},
    "Ingest (events/s)": {"instance"},
    "Events dropped by clients (events/s)": {"reason"},
    "Unpriced events (events/s)": {"provider", "model"},
    "Commit duration p99": {"instance"},
    "Last ingest age": {"instance"},
    "Daemons": {"instance", "host", "version"},
    "Rule engine errors and failed notifications": {"instance"},
}
# Panels that are rightly empty in this scenario, and why. Their queries must still parse,
# and any series they do return must carry the expected labels.
EXPECTED_EMPTY: dict[str, str] = {
    "Events dropped by clients (events/s)": "a healthy client drops nothing: no drop is counted",
}
# Queries (panel, refId) rightly empty while the rest of their panel has data.
EXPECTED_EMPTY_TARGETS: dict[tuple[str, str], str] = {
    ("Rule engine errors and failed notifications", "B"): "no notification channel is configured",
}
# A costwatch budget rule (alerts/*.yml format), so the budget panel has something to show.
BUDGET_RULES = """
rules:
  - name: dashboard-monthly
    kind: budget
    limit: 1000
    window: month
    thresholds:
      - at: 50%
"""
# Values of the filter variables: everything, then one concrete selection.
SELECTIONS = {
    "all": {"host": ".*", "provider": ".*", "app": ".*", "model": ".*", "request_model": ".*"},
    "selected": {
        "host": HOST,
        "provider": "openai|anthropic",
        "app": APP,
        "model": ".*",
        "request_model": "gpt-4o-mini|gpt-4o|claude-sonnet-4",
    },
}


@dataclass
class Live:
    prometheus: Prometheus
    daemon: Daemon
    traffic: list[dict[str, Any]]


def _traffic(d: Daemon, provider: FakeProvider) -> dict[str, Any]:
    result = run_traffic(d, provider.url, APP)
    assert result.returncode == 0, f"traffic failed:\n{result.stdout}\n{result.stderr[-3000:]}"
    summary: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return summary


def _ingested(d: Daemon) -> float:
    for line in d.metrics().splitlines():
        if line.startswith("costwatch_ingest_events_total "):
            return float(line.split()[1])
    raise AssertionError("costwatch_ingest_events_total missing from /metrics")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, fake_provider_server: FakeProvider) -> Iterator[Live]:
    workdir: Path = tmp_path_factory.mktemp("dashboard-live")
    with (
        daemon(workdir, config={"prices": PRICES, "evaluation_interval_s": 1}, rules=BUDGET_RULES) as d,
        prometheus(workdir, {HOST: d.url}) as prom,
    ):
        prom.wait_result('up{job="costwatch"} == 1', timeout=30)
        traffic = [_traffic(d, fake_provider_server)]
        first = _ingested(d)
        # Wait until Prometheus has scraped the first run, then run again so every counter moves
        # between scrapes (rate() needs two samples that differ).
        prom.wait_result(f'costwatch_ingest_events_total{{job="costwatch"}} >= {first}', timeout=30)
        traffic.append(_traffic(d, fake_provider_server))
        second = _ingested(d)
        assert second > first
        prom.wait_result(f'costwatch_ingest_events_total{{job="costwatch"}} >= {second}', timeout=30)
        # The rules scheduler exports the budget gauge once it has evaluated the rule.
        prom.wait_result('costwatch_budget_used_ratio{rule="dashboard-monthly"} > 0', timeout=15)
        yield Live(prom, d, traffic)


def test_traffic_was_recorded(live: Live) -> None:
    for summary in live.traffic:
        assert summary["flushed"] is True
        assert summary["errors"] == {
            "429": "RateLimitError",
            "500": "InternalServerError",
            "401": "AuthenticationError",
        }
    cost = live.prometheus.query("sum(costwatch_llm_cost_usd_total)")["data"]["result"]
    assert cost and float(cost[0]["value"][1]) > 0


def test_dashboard_covers_every_panel() -> None:
    titles = {p["title"] for p in dash.iter_panels(dash.load(DASHBOARD)) if p["type"] != "row"}
    assert titles == set(EXPECTED_LABELS), (
        f"panels without expectations: {sorted(titles - set(EXPECTED_LABELS))};"
        f" stale expectations: {sorted(set(EXPECTED_LABELS) - titles)}"
    )
    assert set(EXPECTED_EMPTY) <= titles


def _may_be_empty(target: dash.Target) -> bool:
    return (
        target.panel_title in EXPECTED_EMPTY or (target.panel_title, target.ref_id) in EXPECTED_EMPTY_TARGETS
    )


def _finite(series: dict[str, Any]) -> bool:
    return math.isfinite(float(series["value"][1]))


@pytest.mark.parametrize("selection", sorted(SELECTIONS))
def test_every_dashboard_query_returns_labelled_data(live: Live, selection: str) -> None:
    problems: list[str] = []
    checked = 0
    for target in dash.targets(dash.load(DASHBOARD)):
        expr = dash.substitute(target.expr, SELECTIONS[selection])
        where = f"panel {target.panel_title!r} {target.ref_id}: {expr}"
        data = live.prometheus.query(expr)
        checked += 1
        if data.get("status") != "success":
            problems.append(f"{where}\n    -> {data.get('errorType')}: {data.get('error')}")
            continue
        result = data["data"]["result"]
        if not result:
            if not _may_be_empty(target):
                problems.append(f"{where}\n    -> no data")
            continue
        expected = EXPECTED_LABELS[target.panel_title]
        for series in result:
            missing = expected - set(series["metric"])
            if missing:
                problems.append(f"{where}\n    -> series {series['metric']} lacks {sorted(missing)}")
        if not _may_be_empty(target) and not any(_finite(s) for s in result):
            problems.append(f"{where}\n    -> only NaN/Inf values: {result[:3]}")
    assert checked >= len(EXPECTED_LABELS)
    assert not problems, f"{len(problems)} of {checked} queries failed:\n" + "\n".join(problems)


def test_variable_queries_list_the_traffic(live: Live) -> None:
    variables = dash.variables(dash.load(DASHBOARD))
    expected = {"host": {HOST}, "provider": {"openai", "anthropic"}, "app": {APP}}
    for name, values in expected.items():
        match = dash.LABEL_VALUES_RE.match(dash.variable_query(variables[name]))
        assert match is not None
        selector = dash.substitute(match.group("selector"), SELECTIONS["all"])
        data = live.prometheus.api(f"label/{match.group('label')}/values", **{"match[]": selector})
        assert data["status"] == "success", data
        assert values <= set(data["data"]), f"${name}: {data['data']}"
    match = dash.LABEL_VALUES_RE.match(dash.variable_query(variables["model"]))
    assert match is not None
    data = live.prometheus.api(
        "label/model/values", **{"match[]": dash.substitute(match.group("selector"), SELECTIONS["all"])}
    )
    assert {"gpt-4o-mini-snap", "gpt-4o-snap", "claude-sonnet-4-snap"} <= set(data["data"])
    # Requested models: what the traffic asked for, never the served snapshots.
    match = dash.LABEL_VALUES_RE.match(dash.variable_query(variables["request_model"]))
    assert match is not None and match.group("label") == "request_model"
    data = live.prometheus.api(
        "label/request_model/values",
        **{"match[]": dash.substitute(match.group("selector"), SELECTIONS["all"])},
    )
    requested = set(data["data"])
    assert {"gpt-4o-mini", "claude-sonnet-4"} <= requested
    assert not any(name.endswith("-snap") for name in requested), requested


def test_error_rate_per_requested_model_is_one_series_per_model(live: Live) -> None:
    """The traffic's failed calls carry the requested name in `model`, its successes the served
    snapshot: by request_model, each model is one series with a rate below 100 %."""
    panel = next(
        t for t in dash.targets(dash.load(DASHBOARD)) if t.panel_title == "Error rate by requested model"
    )
    expr = dash.substitute(panel.expr, SELECTIONS["all"])
    result = live.prometheus.query(expr)["data"]["result"]
    rates = {s["metric"]["request_model"]: float(s["value"][1]) for s in result}
    failed = live.prometheus.query(
        'sum by (request_model) (costwatch_llm_requests_total{error_class!~"none|blocked"})'
    )["data"]["result"]
    assert failed, "the traffic has failed calls"
    for series in failed:
        name = series["metric"]["request_model"]
        assert name in rates and 0 < rates[name] < 1, (name, rates)


def test_a_filter_that_matches_nothing_empties_the_panels(live: Live) -> None:
    """The template variables really filter: an unknown app leaves the per-app panels empty."""
    for target in dash.targets(dash.load(DASHBOARD)):
        if "$app" not in target.expr or target.panel_title in EXPECTED_EMPTY:
            continue
        expr = dash.substitute(target.expr, {**SELECTIONS["all"], "app": "no-such-app"})
        data = live.prometheus.query(expr)
        assert data["status"] == "success"
        assert data["data"]["result"] == [], f"panel {target.panel_title!r} ignores $app: {expr}"


def test_time_series_panels_work_as_range_queries(live: Live) -> None:
    """Grafana draws time series from /api/v1/query_range: those must parse and return data too."""
    end = time.time()
    problems: list[str] = []
    for target in dash.targets(dash.load(DASHBOARD)):
        if target.panel_type != "timeseries":
            continue
        expr = dash.substitute(target.expr, SELECTIONS["all"])
        data = live.prometheus.api("query_range", query=expr, start=end - 30, end=end, step=2)
        if data.get("status") != "success":
            problems.append(f"{target.panel_title} {target.ref_id}: {data.get('error')}")
        elif not data["data"]["result"] and not _may_be_empty(target):
            problems.append(f"{target.panel_title} {target.ref_id}: no data")
    assert not problems, "\n".join(problems)
