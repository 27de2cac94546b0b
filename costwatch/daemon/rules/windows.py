"""Budget windows and the SQL fragments every rule runs over `usage_events`.

A rule's query is a time range plus scope filters (`window_filter`), grouped by
the rule's `per` columns (`grouped`); budgets sum spend or tokens (`budget_values`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import duckdb

from costwatch.daemon.rules.models import BudgetRule, parse_duration
from costwatch.protocol import scope_key

Connect = Callable[[], duckdb.DuckDBPyConnection]


def window_bounds(rule: BudgetRule, now: datetime, tz: ZoneInfo) -> tuple[datetime, datetime | None, str]:
    """(start, end or None for rolling, window id) of the budget window containing `now`."""
    if not rule.calendar:
        return now - parse_duration(rule.window), None, "rolling"
    local = now.astimezone(tz).date()
    if rule.window == "day":
        first, nxt = local, local + timedelta(days=1)
    elif rule.window == "week":
        first = local - timedelta(days=local.weekday())
        nxt = first + timedelta(days=7)
    else:
        first = local.replace(day=1)
        nxt = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    start = datetime.combine(first, time(0), tzinfo=tz)
    end = datetime.combine(nxt, time(0), tzinfo=tz)
    return start, end, start.date().isoformat()


def window_filter(
    scope: dict[str, str], per: Sequence[str], start: datetime, end: datetime | None, now: datetime
) -> tuple[str, list[Any]]:
    """Time range plus scope filters; per-columns must be set to group on.

    Calendar windows are [start, min(end, now)]; rolling windows (end None)
    are (now - span, now], so a 5m window holds exactly 5 minutes of calls.
    """
    clauses = ["ts_start >= ?" if end is not None else "ts_start > ?", "ts_start <= ?"]
    params: list[Any] = [start, now]
    if end is not None:
        clauses.append("ts_start < ?")
        params.append(end)
    for key, value in scope.items():
        clauses.append(f'"{key}" = ?')
        params.append(value)
    clauses += [f'"{key}" IS NOT NULL' for key in per]
    return " AND ".join(clauses), params


def grouped(
    cur: duckdb.DuckDBPyConnection,
    select: str,
    scope: dict[str, str],
    per: Sequence[str],
    where: str,
    params: list,
) -> dict[str, tuple[dict[str, str], tuple]]:
    """Run `select` grouped by the per-columns: {scope key: (group scope, remaining columns)}."""
    quoted = ['"' + k + '"' for k in per]  # keys come from SCOPE_KEYS only
    cols = "".join(q + ", " for q in quoted)
    group = " GROUP BY " + ", ".join(quoted) if per else ""
    rows = cur.execute(f"SELECT {cols}{select} FROM usage_events WHERE {where}{group}", params).fetchall()
    out: dict[str, tuple[dict[str, str], tuple]] = {}
    for row in rows:
        group_scope = {**scope, **{k: str(v) for k, v in zip(per, row[: len(per)], strict=True)}}
        out[scope_key(group_scope)] = (group_scope, tuple(row[len(per) :]))
    return out


def _budget_expr(rule: BudgetRule) -> str:
    if rule.unit == "tokens":
        return "coalesce(sum(coalesce(input_tokens, 0) + coalesce(output_tokens, 0)), 0)::DOUBLE"
    return "coalesce(sum(cost_usd), 0)::DOUBLE"


def budget_values(
    cur: duckdb.DuckDBPyConnection, rule: BudgetRule, start: datetime, end: datetime | None, now: datetime
) -> dict[str, tuple[dict[str, str], float]]:
    where, params = window_filter(rule.scope.as_dict(), rule.per, start, end, now)
    rows = grouped(cur, _budget_expr(rule), rule.scope.as_dict(), rule.per, where, params)
    return {k: (s, float(v[0] or 0.0)) for k, (s, v) in rows.items()}
