"""The conditions of threshold, data-quality and forecast rules, observed per scope group.

Each observation says whether its group breaches; `Engine` runs them through
the pending -> firing -> resolved machine. Message text is built only when sent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

import duckdb

from costwatch.daemon.rules.forecast import forecast_groups
from costwatch.daemon.rules.messages import fmt_amount, fmt_time, top_spenders
from costwatch.daemon.rules.models import (
    BudgetRule,
    DataQualityRule,
    ForecastRule,
    ThresholdRule,
    parse_duration,
)
from costwatch.daemon.rules.windows import grouped, window_filter
from costwatch.daemon.schema import UNPRICED_SQL
from costwatch.protocol import scope_key


@dataclass
class Observation:
    """One observation of a condition for one scope group."""

    scope: dict[str, str]
    threshold: str
    value: float | None
    limit: float | None
    breaching: bool
    describe: Callable[[], tuple[str, str]]  # -> (title, body), built only when sent


_METRIC_SQL = {
    "error_rate": "(count(*) FILTER (WHERE error_class IS NOT NULL))::DOUBLE / count(*)",
    "rate_limit_rate": (
        "(count(*) FILTER (WHERE http_status = 429 OR error_class = 'rate_limit'))::DOUBLE / count(*)"
    ),
    "latency_p95": "quantile_cont(latency_ms, 0.95)::DOUBLE",
    "latency_p99": "quantile_cont(latency_ms, 0.99)::DOUBLE",
    "ttft_p95": "quantile_cont(ttft_ms, 0.95)::DOUBLE",
    "cost_per_hour": "coalesce(sum(cost_usd), 0)::DOUBLE",  # divided by the window's hours below
}
_METRIC_UNIT = {
    "error_rate": "ratio",
    "rate_limit_rate": "ratio",
    "latency_p95": "ms",
    "latency_p99": "ms",
    "ttft_p95": "ms",
    "cost_per_hour": "usd/h",
}
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}
_MISSING = "usage_source = 'missing' AND error_class IS NULL"


def threshold_observations(
    cur: duckdb.DuckDBPyConnection, rule: ThresholdRule, now: datetime
) -> list[Observation]:
    span = parse_duration(rule.window)
    start = now - span
    where, params = window_filter(rule.scope.as_dict(), rule.per, start, None, now)
    where += " AND NOT blocked"
    rows = grouped(
        cur, f"count(*), {_METRIC_SQL[rule.metric]}", rule.scope.as_dict(), rule.per, where, params
    )
    unit = _METRIC_UNIT[rule.metric]
    label = f"{rule.metric} {rule.op} {fmt_amount(rule.value, unit)}"
    obs = []
    for scope, (count, value) in rows.values():
        if value is not None and rule.metric == "cost_per_hour":
            value = value / (span.total_seconds() / 3600.0)
        breaching = count >= rule.min_requests and value is not None and _OPS[rule.op](value, rule.value)

        def describe(
            scope: dict[str, str] = scope, value: float | None = value, count: int = count
        ) -> tuple[str, str]:
            title = f"[costwatch] {rule.name}: {rule.metric} {fmt_amount(value, unit)} ({scope_key(scope)})"
            lines = [
                f"{rule.metric} is {fmt_amount(value, unit)} {rule.op} {fmt_amount(rule.value, unit)} "
                f"over the last {rule.window} ({count} calls, {scope_key(scope)}), "
                f"held for {rule.for_ or '0s'}.",
            ]
            if rule.description:
                lines.append(rule.description)
            lines += top_spenders(cur, scope, start, None, now)
            return title, "\n".join(lines)

        obs.append(Observation(scope, label, value, rule.value, breaching, describe))
    return obs


def quality_observations(
    cur: duckdb.DuckDBPyConnection, rule: DataQualityRule, now: datetime
) -> list[Observation]:
    start = now - parse_duration(rule.window)
    where, params = window_filter(rule.scope.as_dict(), rule.per, start, None, now)
    where += " AND NOT blocked"
    select = (
        f"count(*) FILTER (WHERE {UNPRICED_SQL}), count(*) FILTER (WHERE {_MISSING}), "
        f"string_agg(DISTINCT coalesce(model, request_model), ', ') FILTER (WHERE {UNPRICED_SQL}), "
        f"string_agg(DISTINCT coalesce(model, request_model), ', ') FILTER (WHERE {_MISSING})"
    )
    rows = grouped(cur, select, rule.scope.as_dict(), rule.per, where, params)
    text = {
        "unpriced": "recorded with tokens but no known price (cost unknown, not $0)",
        "missing_usage": "succeeded without reporting usage (tokens and cost unknown)",
    }
    obs = []
    for scope, (unpriced, missing, unpriced_models, missing_models) in rows.values():
        counts = {"unpriced": (unpriced, unpriced_models), "missing_usage": (missing, missing_models)}
        for check in rule.checks:
            n, models = counts[check]

            def describe(
                scope: dict = scope, n: int = n, models: str = models, check: str = check
            ) -> tuple[str, str]:
                title = f"[costwatch] {rule.name}: {n} events {check.replace('_', ' ')} ({scope_key(scope)})"
                body = (
                    f"{n} calls in the last {rule.window} ({scope_key(scope)}) {text[check]}.\n"
                    f"Models: {models or 'unknown'}. Spend reports under-count until this is fixed"
                    + (" (add a price override in the daemon config)." if check == "unpriced" else ".")
                )
                return title, body

            obs.append(
                Observation(scope, check, float(n), float(rule.min_events), n >= rule.min_events, describe)
            )
    return obs


def forecast_observations(
    cur: duckdb.DuckDBPyConnection, rule: ForecastRule, budget: BudgetRule, tz: ZoneInfo, now: datetime
) -> list[Observation]:
    lookback = parse_duration(rule.lookback) if rule.lookback else None
    cond = rule.forecast
    within = parse_duration(cond.exhausts_within) if cond.exhausts_within else None
    label = (
        "exhausts before window end"
        if cond.exhausts_before_window_end
        else f"exhausts within {cond.exhausts_within}"
    )
    obs = []
    for group in forecast_groups(cur, budget, now, tz, lookback).values():
        when = group["exhausts_at"]
        hit = (cond.exhausts_before_window_end and group["exhausts_before_window_end"]) or (
            within is not None and when is not None and when <= now + within
        )
        hit = hit and group["used_ratio"] >= rule.min_spent_ratio

        def describe(g: dict = group, when: datetime | None = when) -> tuple[str, str]:
            scope = g["scope"]
            title = (
                f"[costwatch] {rule.name}: budget {budget.name!r} runs out {fmt_time(when, tz)} "
                f"({scope_key(scope)})"
            )
            lines = [
                f"At this pace ({fmt_amount(g['rate_per_hour'], budget.unit)}/h) "
                f"the {budget.window} budget "
                f"{budget.name!r} ({scope_key(scope)}) runs out on {fmt_time(when, tz)}.",
                f"Spent {fmt_amount(g['spent'], budget.unit)} of {fmt_amount(budget.limit, budget.unit)} "
                f"({g['used_ratio'] * 100:.1f} %); "
                f"projected for the window: {fmt_amount(g['projected'], budget.unit)}.",
            ]
            lines += top_spenders(cur, scope, g["window_start"], g["window_end"], now)
            return title, "\n".join(lines)

        hours = None if when is None else (when - now).total_seconds() / 3600.0
        obs.append(Observation(group["scope"], label, hours, budget.limit, bool(hit), describe))
    return obs
