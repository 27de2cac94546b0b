"""Burn-rate forecasts of budget rules: when the limit is reached at the current pace."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import duckdb

from costwatch.daemon.rules.messages import fmt_time
from costwatch.daemon.rules.models import BudgetRule, parse_duration
from costwatch.daemon.rules.windows import Connect, budget_values, window_bounds
from costwatch.protocol import scope_key


def forecast_groups(
    cur: duckdb.DuckDBPyConnection, rule: BudgetRule, now: datetime, tz: ZoneInfo, lookback: timedelta | None
) -> dict[str, dict[str, Any]]:
    """Linear burn-rate projection for every group of a budget rule."""
    start, end, _ = window_bounds(rule, now, tz)
    spent = budget_values(cur, rule, start, end, now)
    rate_start = max(start, now - lookback) if lookback else start
    recent = spent if rate_start == start else budget_values(cur, rule, rate_start, end, now)
    hours = max((now - rate_start).total_seconds() / 3600.0, 1e-9)
    out = {}
    for key, (scope, used) in spent.items():
        rate = recent.get(key, (scope, 0.0))[1] / hours
        remaining = rule.limit - used
        if remaining <= 0:
            exhausts_at: datetime | None = now
        elif rate > 0:
            exhausts_at = now + timedelta(hours=remaining / rate)
        else:
            exhausts_at = None
        if end is not None:
            projected = used + rate * (end - now).total_seconds() / 3600.0
        else:
            projected = rate * parse_duration(rule.window).total_seconds() / 3600.0
        out[key] = {
            "scope": scope,
            "spent": used,
            "used_ratio": used / rule.limit,
            "rate_per_hour": rate,
            "projected": projected,
            "exhausts_at": exhausts_at,
            "exhausts_before_window_end": exhausts_at is not None and (end is None or exhausts_at < end),
            "window_start": start,
            "window_end": end,
        }
    return out


def forecast(
    budget_rule: BudgetRule,
    connect: Connect,
    now: datetime,
    timezone: str = "UTC",
    lookback: timedelta | None = None,
) -> dict[str, Any]:
    """Burn-rate projection for `costwatch status`: JSON-ready, one entry per scope group.

    The rate is spend per hour since the window started (or over `lookback`);
    `exhausts_at` is when the limit is reached at that pace (now if already
    over, None if nothing is being spent).
    """
    tz = ZoneInfo(budget_rule.timezone or timezone)
    cur = connect()
    try:
        groups = forecast_groups(cur, budget_rule, now, tz, lookback)
    finally:
        cur.close()
    start, end, _ = window_bounds(budget_rule, now, tz)
    items = []
    for group in groups.values():
        when = group["exhausts_at"]
        if when is None:
            summary = "nothing spent at this pace"
        elif when <= now:
            summary = "the budget is already used up"
        else:
            summary = f"at this pace the {budget_rule.window} budget runs out on {fmt_time(when, tz)}"
        items.append(
            {
                "scope": scope_key(group["scope"]),
                "spent": group["spent"],
                "used_ratio": group["used_ratio"],
                "rate_per_hour": group["rate_per_hour"],
                "projected": group["projected"],
                "exhausts_at": when.isoformat() if when else None,
                "exhausts_before_window_end": group["exhausts_before_window_end"],
                "summary": summary,
            }
        )
    return {
        "rule": budget_rule.name,
        "unit": budget_rule.unit,
        "limit": budget_rule.limit,
        "window": budget_rule.window,
        "window_start": start.isoformat(),
        "window_end": end.isoformat() if end else None,
        "now": now.isoformat(),
        "groups": items,
    }
