"""The text of alerts: amounts in their unit, times in the rule's zone, who spent the most."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import duckdb

from costwatch.daemon.rules.models import BudgetRule
from costwatch.daemon.rules.windows import window_filter
from costwatch.money import fmt_usd
from costwatch.protocol import scope_key


def fmt_amount(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "usd":
        return fmt_usd(value)
    if unit == "tokens":
        return f"{value:,.0f} tokens"
    if unit == "ratio":
        return f"{value * 100:.2f} %"
    if unit == "ms":
        return f"{value:,.0f} ms"
    if unit == "usd/h":
        return fmt_usd(value, "/h")
    return f"{value:g}"


def top_spenders(
    cur: duckdb.DuckDBPyConnection,
    scope: dict[str, str],
    start: datetime,
    end: datetime | None,
    now: datetime,
) -> list[str]:
    """'Top models: a $1.00, b $0.50' lines (top 3 models, apps and users by cost) for messages."""
    where, params = window_filter(scope, (), start, end, now)
    lines = []
    for dim, label in (("model", "models"), ("app", "apps"), ("user", "users")):
        rows = cur.execute(
            f'SELECT "{dim}", sum(cost_usd)::DOUBLE AS c, '
            "sum(coalesce(input_tokens, 0) + coalesce(output_tokens, 0)) AS t "
            f'FROM usage_events WHERE {where} AND "{dim}" IS NOT NULL GROUP BY 1 '
            "ORDER BY c DESC NULLS LAST, t DESC LIMIT 3",
            params,
        ).fetchall()
        if rows:
            parts = [
                f"{name} {fmt_amount(c, 'usd') if c is not None else 'cost unknown'}" for name, c, _ in rows
            ]
            lines.append(f"Top {label}: " + ", ".join(parts))
    return lines


def fmt_time(ts: datetime | None, tz: ZoneInfo) -> str:
    return ts.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z") if ts else "now"


def budget_message(
    cur: duckdb.DuckDBPyConnection,
    rule: BudgetRule,
    scope: dict[str, str],
    value: float,
    label: str,
    level: float,
    start: datetime,
    end: datetime | None,
    now: datetime,
    tz: ZoneInfo,
) -> str:
    """The body of a budget alert: how far over which threshold, the window, the top spenders."""
    over = value - level
    window = f"{rule.window}: {fmt_time(start, tz)} -> {fmt_time(end, tz) if end else 'now (rolling)'}"
    lines = [
        f"Budget {rule.name!r} ({scope_key(scope)}): {fmt_amount(value, rule.unit)} crossed the {label} "
        f"threshold ({fmt_amount(level, rule.unit)}), over by {fmt_amount(over, rule.unit)}; "
        f"{value / rule.limit * 100:.1f} % of the {fmt_amount(rule.limit, rule.unit)} limit.",
        f"Window {window}",
    ]
    if rule.description:
        lines.insert(1, rule.description)
    lines += top_spenders(cur, scope, start, end, now)
    return "\n".join(lines)
