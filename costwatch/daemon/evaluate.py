"""The rules engine: SQL over `usage_events`, one alert state machine, forecast and backtest.

State lives per (rule, scope group, threshold): pending -> firing -> resolved.
Every change is written to `alert_events`, and on start the engine rebuilds
its state from there, so a budget threshold that already fired this window
does not fire again after a daemon restart. Time only ever comes from the
injected clock, which is what lets tests and the backtest drive it.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import duckdb

from costwatch.daemon.rules import (
    BudgetRule,
    DataQualityRule,
    ForecastRule,
    RuleSet,
    ThresholdRule,
    parse_duration,
)
from costwatch.money import fmt_usd
from costwatch.protocol import SCOPE_KEYS, KillSwitch

log = logging.getLogger("costwatch.rules")

UTC = timezone.utc
Connect = Callable[[], duckdb.DuckDBPyConnection]
Writer = Callable[[Callable[[duckdb.DuckDBPyConnection], Any]], Any]  # Store.call: run on the writer thread
AnyRule = BudgetRule | ThresholdRule | ForecastRule | DataQualityRule


class KillSwitchRegistryProtocol(Protocol):
    """The daemon's kill-switch registry, as far as rules need it."""

    def engage(
        self, scope: dict[str, str], reason: str, source: str, expires_at: float | None = None
    ) -> KillSwitch: ...

    def lift_by_source(self, source: str) -> int: ...


class NotifierProtocol(Protocol):
    """Fire-and-forget delivery; must not block evaluation (see notify.Notifier)."""

    def send(self, channels: Sequence[str], title: str, body: str, notify_type: str = "warning") -> Any: ...


@dataclass
class Transition:
    """One state change of one alert, as recorded in `alert_events`."""

    ts: datetime
    rule: str
    scope: dict[str, str]
    threshold: str
    value: float | None
    limit_value: float | None
    state: str  # pending | firing | resolved | cancelled
    message: str = ""
    title: str = ""
    dry_run: bool = False
    notify: bool = False  # send `message` to the rule's channels
    kill: bool = False  # engage a switch on `kill_scope` (firing) or lift the rule's switches (resolved)
    kill_scope: dict[str, str] = field(default_factory=dict)
    expires_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ts"] = self.ts.isoformat()
        return data


@dataclass
class _State:
    state: str  # pending | firing
    since: datetime
    window: str | None = None
    last_notified: datetime | None = None


@dataclass
class _Obs:
    """One observation of a condition for one scope group."""

    scope: dict[str, str]
    threshold: str
    value: float | None
    limit: float | None
    breaching: bool
    describe: Callable[[], tuple[str, str]]  # -> (title, body), built only when sent


def scope_key(scope: dict[str, str]) -> str:
    """Canonical text of a scope, as stored in `alert_events.scope`: 'app=x,model=y' or 'global'."""
    parts = [f"{k}={scope[k]}" for k in SCOPE_KEYS if scope.get(k) is not None]
    return ",".join(parts) or "global"


def parse_scope_key(text: str) -> dict[str, str]:
    if text == "global" or not text:
        return {}
    return dict(part.split("=", 1) for part in text.split(","))


def resume_command(scope: dict[str, str]) -> str:
    """The CLI line that lifts a switch with this scope."""
    flags = " ".join(f"--scope {k}={v}" for k, v in scope.items())
    return f"costwatch resume {flags}".rstrip()


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


def _where(
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


def _grouped(
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


def _budget_values(
    cur: duckdb.DuckDBPyConnection, rule: BudgetRule, start: datetime, end: datetime | None, now: datetime
) -> dict[str, tuple[dict[str, str], float]]:
    where, params = _where(rule.scope.as_dict(), rule.per, start, end, now)
    rows = _grouped(cur, _budget_expr(rule), rule.scope.as_dict(), rule.per, where, params)
    return {k: (s, float(v[0] or 0.0)) for k, (s, v) in rows.items()}


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
    where, params = _where(scope, (), start, end, now)
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


def _fmt_time(ts: datetime | None, tz: ZoneInfo) -> str:
    return ts.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z") if ts else "now"


def _forecast_groups(
    cur: duckdb.DuckDBPyConnection, rule: BudgetRule, now: datetime, tz: ZoneInfo, lookback: timedelta | None
) -> dict[str, dict[str, Any]]:
    """Linear burn-rate projection for every group of a budget rule."""
    start, end, _ = window_bounds(rule, now, tz)
    spent = _budget_values(cur, rule, start, end, now)
    rate_start = max(start, now - lookback) if lookback else start
    recent = spent if rate_start == start else _budget_values(cur, rule, rate_start, end, now)
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
        groups = _forecast_groups(cur, budget_rule, now, tz, lookback)
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
            summary = f"at this pace the {budget_rule.window} budget runs out on {_fmt_time(when, tz)}"
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
_UNPRICED = "(cost_usd IS NULL OR NOT priced) AND coalesce(input_tokens, 0) + coalesce(output_tokens, 0) > 0"
_MISSING = "usage_source = 'missing' AND error_class IS NULL"


class Engine:
    """Evaluates a RuleSet against the database; call `restore()` once, then `evaluate()` on a schedule."""

    def __init__(
        self,
        ruleset: RuleSet,
        connect: Connect,
        registry: KillSwitchRegistryProtocol | None = None,
        notifier: NotifierProtocol | None = None,
        now: Callable[[], datetime] | None = None,
        timezone: str = "UTC",
        record: bool = True,
        ignore_dry_run: bool = False,
        write: Writer | None = None,
    ) -> None:
        self.ruleset = ruleset
        self.write = write  # the daemon's writer (Store.call); None: INSERT on the read cursor
        self.connect = connect
        self.registry = registry
        self.notifier = notifier
        self.now = now or (lambda: datetime.now(UTC))
        self.tz = ZoneInfo(timezone)
        self.record = record  # False in backtests: nothing is written
        self.ignore_dry_run = ignore_dry_run  # backtests treat every rule as active (with fakes)
        self.state: dict[tuple[str, str, str], _State] = {}
        self.counters: Counter[str] = Counter()
        # (rule, scope key) -> used/limit of each budget group at the last evaluation (for /metrics)
        self.budget_usage: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------

    def set_rules(self, ruleset: RuleSet) -> None:
        """Swap rules after a reload; state of rules that still exist is kept."""
        with self._lock:
            names = {r.name for r in ruleset.rules}
            self.state = {k: v for k, v in self.state.items() if k[0] in names}
            self.budget_usage = {k: v for k, v in self.budget_usage.items() if k[0] in names}
            self.ruleset = ruleset

    def restore(self) -> int:
        """Rebuild pending/firing state from the latest `alert_events` row of each alert."""
        cur = self.connect()
        try:
            rows = cur.execute(
                "SELECT rule, scope, threshold, state, epoch(ts) FROM alert_events "
                "QUALIFY row_number() OVER "
                "(PARTITION BY rule, scope, threshold ORDER BY ts DESC, rowid DESC) = 1"
            ).fetchall()
        finally:
            cur.close()
        restored = 0
        with self._lock:
            for rule_name, scope, threshold, state, epoch in rows:
                rule = self.ruleset.get(rule_name)
                if rule is None or state not in ("pending", "firing"):
                    continue
                ts = datetime.fromtimestamp(epoch, UTC)
                window = None
                if isinstance(rule, BudgetRule):
                    window = window_bounds(rule, ts, self._tz(rule))[2]
                self.state[(rule_name, scope, threshold or "")] = _State(state, ts, window, ts)
                restored += 1
        log.info("restored %d alert states from alert_events", restored)
        return restored

    # -- evaluation ------------------------------------------------------

    def evaluate(self, now: datetime | None = None) -> list[Transition]:
        """One pass over every rule; returns (and records, and delivers) the state changes."""
        with self._lock:
            now = now or self.now()
            cur = self.connect()
            try:
                out: list[Transition] = []
                for rule in self.ruleset.rules:
                    try:
                        out += self._evaluate_rule(cur, rule, now)
                    except Exception:
                        self.counters["rule_errors"] += 1
                        log.exception("rule %r failed to evaluate", rule.name)
                if out and self.record:
                    try:
                        self._record(cur, out)
                    except Exception:
                        self.counters["record_errors"] += 1
                        log.exception("could not record %d alert events", len(out))
            finally:
                cur.close()
            self.counters["evaluations"] += 1
            self._deliver(out)
            return out

    def _tz(self, rule: AnyRule) -> ZoneInfo:
        return ZoneInfo(rule.timezone) if isinstance(rule, BudgetRule) and rule.timezone else self.tz

    def _dry(self, rule: AnyRule) -> bool:
        return rule.dry_run and not self.ignore_dry_run

    def _evaluate_rule(
        self, cur: duckdb.DuckDBPyConnection, rule: AnyRule, now: datetime
    ) -> list[Transition]:
        if isinstance(rule, BudgetRule):
            return self._budget(cur, rule, now)
        if isinstance(rule, ThresholdRule):
            return self._step(rule, self._threshold_obs(cur, rule, now), now)
        if isinstance(rule, DataQualityRule):
            return self._step(rule, self._quality_obs(cur, rule, now), now)
        return self._step(rule, self._forecast_obs(cur, rule, now), now)

    # -- budgets ---------------------------------------------------------

    def _budget(self, cur: duckdb.DuckDBPyConnection, rule: BudgetRule, now: datetime) -> list[Transition]:
        tz = self._tz(rule)
        start, end, window_id = window_bounds(rule, now, tz)
        values = _budget_values(cur, rule, start, end, now)
        if self.record:
            for old in [k for k in self.budget_usage if k[0] == rule.name]:
                del self.budget_usage[old]
            for skey, (_, value) in values.items():
                self.budget_usage[(rule.name, skey)] = value / rule.limit
        ladder = sorted(((t, t.level(rule.limit)) for t in rule.thresholds), key=lambda x: x[1])
        by_label = {t.label(rule.unit): (t, level) for t, level in ladder}
        dry = self._dry(rule)
        out: list[Transition] = []

        # Clear first: calendar windows clear on rollover, rolling ones when spend drops below the level.
        cleared: dict[str, list[tuple[str, float]]] = {}
        for key in [k for k in self.state if k[0] == rule.name]:
            _, skey, label = key
            if label not in by_label:
                del self.state[key]  # threshold removed from the rule by a reload
                continue
            level = by_label[label][1]
            gone = (
                self.state[key].window != window_id
                if rule.calendar
                else values.get(skey, ({}, 0.0))[1] < level
            )
            if gone:
                del self.state[key]
                cleared.setdefault(skey, []).append((label, level))
        for skey, labels in cleared.items():
            scope = parse_scope_key(skey)
            labels.sort(key=lambda x: x[1])
            # One switch source per rule: lift only when no other group still holds a kill threshold.
            kill_left = any(by_label[k[2]][0].action == "kill" for k in self.state if k[0] == rule.name)
            kill = (
                any(by_label[label][0].action == "kill" for label, _ in labels)
                and rule.lift_on_rollover
                and not kill_left
            )
            reason = "the window rolled over" if rule.calendar else f"spend fell below {labels[0][0]}"
            title = f"[costwatch] resolved: budget {rule.name!r} ({scope_key(scope)})"
            body = f"Budget {rule.name!r} ({scope_key(scope)}) is no longer over {labels[-1][0]}: {reason}."
            if kill:
                body += "\nThe kill switch this rule engaged is lifted."
            for i, (label, level) in enumerate(labels):
                last = i == len(labels) - 1
                out.append(
                    Transition(
                        now,
                        rule.name,
                        scope,
                        label,
                        values.get(skey, ({}, 0.0))[1],
                        level,
                        "resolved",
                        body,
                        title,
                        dry,
                        notify=last,
                        kill=kill and last,
                    )
                )

        for skey, (scope, value) in values.items():
            newly = [
                (t, lvl)
                for t, lvl in ladder
                if value >= lvl and (rule.name, skey, t.label(rule.unit)) not in self.state
            ]
            if not newly:
                continue
            top, top_level = newly[-1]
            kill = any(t.action == "kill" for t, _ in newly)
            kill_scope = dict(scope)
            title = f"[costwatch] budget {rule.name!r} crossed {top.label(rule.unit)} ({scope_key(scope)})"
            body = self._budget_body(
                cur, rule, scope, value, top.label(rule.unit), top_level, start, end, now, tz
            )
            if kill:
                body += (
                    f"\nAction: kill switch engaged for {scope_key(kill_scope)}"
                    + (" until the window rolls over." if rule.calendar and rule.lift_on_rollover else ".")
                    + f"\nLift it with: {resume_command(kill_scope)}"
                )
            if dry:
                body = "[dry run: no notification sent, no kill switch engaged]\n" + body
            expires = end.timestamp() if end is not None and rule.lift_on_rollover else None
            for t, lvl in newly:
                label = t.label(rule.unit)
                self.state[(rule.name, skey, label)] = _State("firing", now, window_id, now)
                is_top = t is top
                out.append(
                    Transition(
                        now,
                        rule.name,
                        scope,
                        label,
                        value,
                        lvl,
                        "firing",
                        body,
                        title,
                        dry,
                        notify=is_top,
                        kill=kill and is_top,
                        kill_scope=kill_scope,
                        expires_at=expires,
                    )
                )
        return out

    def _budget_body(
        self,
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
        over = value - level
        window = f"{rule.window}: {_fmt_time(start, tz)} -> {_fmt_time(end, tz) if end else 'now (rolling)'}"
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

    # -- conditions (threshold, data quality, forecast) --------------------

    def _threshold_obs(
        self, cur: duckdb.DuckDBPyConnection, rule: ThresholdRule, now: datetime
    ) -> list[_Obs]:
        span = parse_duration(rule.window)
        start = now - span
        where, params = _where(rule.scope.as_dict(), rule.per, start, None, now)
        where += " AND NOT blocked"
        rows = _grouped(
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
                title = (
                    f"[costwatch] {rule.name}: {rule.metric} {fmt_amount(value, unit)} ({scope_key(scope)})"
                )
                lines = [
                    f"{rule.metric} is {fmt_amount(value, unit)} {rule.op} {fmt_amount(rule.value, unit)} "
                    f"over the last {rule.window} ({count} calls, {scope_key(scope)}), "
                    f"held for {rule.for_ or '0s'}.",
                ]
                if rule.description:
                    lines.append(rule.description)
                lines += top_spenders(cur, scope, start, None, now)
                return title, "\n".join(lines)

            obs.append(_Obs(scope, label, value, rule.value, breaching, describe))
        return obs

    def _quality_obs(
        self, cur: duckdb.DuckDBPyConnection, rule: DataQualityRule, now: datetime
    ) -> list[_Obs]:
        start = now - parse_duration(rule.window)
        where, params = _where(rule.scope.as_dict(), rule.per, start, None, now)
        where += " AND NOT blocked"
        select = (
            f"count(*) FILTER (WHERE {_UNPRICED}), count(*) FILTER (WHERE {_MISSING}), "
            f"string_agg(DISTINCT coalesce(model, request_model), ', ') FILTER (WHERE {_UNPRICED}), "
            f"string_agg(DISTINCT coalesce(model, request_model), ', ') FILTER (WHERE {_MISSING})"
        )
        rows = _grouped(cur, select, rule.scope.as_dict(), rule.per, where, params)
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
                    title = (
                        f"[costwatch] {rule.name}: {n} events {check.replace('_', ' ')} ({scope_key(scope)})"
                    )
                    body = (
                        f"{n} calls in the last {rule.window} ({scope_key(scope)}) {text[check]}.\n"
                        f"Models: {models or 'unknown'}. Spend reports under-count until this is fixed"
                        + (" (add a price override in the daemon config)." if check == "unpriced" else ".")
                    )
                    return title, body

                obs.append(
                    _Obs(scope, check, float(n), float(rule.min_events), n >= rule.min_events, describe)
                )
        return obs

    def _forecast_obs(self, cur: duckdb.DuckDBPyConnection, rule: ForecastRule, now: datetime) -> list[_Obs]:
        budget = self.ruleset.get(rule.budget)
        if not isinstance(budget, BudgetRule):
            raise ValueError(f"forecast {rule.name!r}: no budget rule {rule.budget!r}")
        tz = self._tz(budget)
        lookback = parse_duration(rule.lookback) if rule.lookback else None
        cond = rule.forecast
        within = parse_duration(cond.exhausts_within) if cond.exhausts_within else None
        label = (
            "exhausts before window end"
            if cond.exhausts_before_window_end
            else f"exhausts within {cond.exhausts_within}"
        )
        obs = []
        for group in _forecast_groups(cur, budget, now, tz, lookback).values():
            when = group["exhausts_at"]
            hit = (cond.exhausts_before_window_end and group["exhausts_before_window_end"]) or (
                within is not None and when is not None and when <= now + within
            )
            hit = hit and group["used_ratio"] >= rule.min_spent_ratio

            def describe(g: dict = group, when: datetime | None = when) -> tuple[str, str]:
                scope = g["scope"]
                title = (
                    f"[costwatch] {rule.name}: budget {budget.name!r} runs out {_fmt_time(when, tz)} "
                    f"({scope_key(scope)})"
                )
                lines = [
                    f"At this pace ({fmt_amount(g['rate_per_hour'], budget.unit)}/h) "
                    f"the {budget.window} budget "
                    f"{budget.name!r} ({scope_key(scope)}) runs out on {_fmt_time(when, tz)}.",
                    f"Spent {fmt_amount(g['spent'], budget.unit)} of {fmt_amount(budget.limit, budget.unit)} "
                    f"({g['used_ratio'] * 100:.1f} %); "
                    f"projected for the window: {fmt_amount(g['projected'], budget.unit)}.",
                ]
                lines += top_spenders(cur, scope, g["window_start"], g["window_end"], now)
                return title, "\n".join(lines)

            hours = None if when is None else (when - now).total_seconds() / 3600.0
            obs.append(_Obs(group["scope"], label, hours, budget.limit, bool(hit), describe))
        return obs

    def _step(self, rule: AnyRule, observations: list[_Obs], now: datetime) -> list[Transition]:
        """The pending -> firing -> resolved machine, with `for:` and `repeat_interval`."""
        hold, repeat, dry = rule.hold, rule.repeat, self._dry(rule)
        kill = getattr(rule, "action", "notify") == "kill"
        out: list[Transition] = []
        seen = set()
        for obs in observations:
            key = (rule.name, scope_key(obs.scope), obs.threshold)
            seen.add(key)
            st = self.state.get(key)
            args = (now, rule.name, obs.scope, obs.threshold, obs.value, obs.limit)
            if obs.breaching:
                if st is None and hold > timedelta(0):
                    self.state[key] = _State("pending", now)
                    out.append(Transition(*args, "pending", f"pending for {rule.for_}", "", dry))
                elif st is None or (st.state == "pending" and now - st.since >= hold):
                    self.state[key] = _State("firing", now, None, now)
                    title, body = obs.describe()
                    if kill:
                        body += f"\nAction: kill switch engaged for {scope_key(obs.scope)}."
                        body += f"\nLift it with: {resume_command(obs.scope)}"
                    if dry:
                        body = "[dry run: no notification sent, no kill switch engaged]\n" + body
                    out.append(Transition(*args, "firing", body, title, dry, True, kill, dict(obs.scope)))
                elif (
                    st.state == "firing" and repeat and st.last_notified and now - st.last_notified >= repeat
                ):
                    st.last_notified = now
                    title, body = obs.describe()
                    out.append(Transition(*args, "firing", "still firing\n" + body, title, dry, True))
            elif st is not None:
                out.append(self._clear(rule, key, st, obs.value, obs.limit, now, dry, kill))
        for key in [k for k in self.state if k[0] == rule.name and k not in seen]:
            out.append(self._clear(rule, key, self.state[key], None, None, now, dry, kill))
        return out

    def _clear(
        self,
        rule: AnyRule,
        key: tuple[str, str, str],
        st: _State,
        value: float | None,
        limit: float | None,
        now: datetime,
        dry: bool,
        kill: bool,
    ) -> Transition:
        """Leave pending (cancelled, silent) or firing (resolved, notified; lift the rule's switch last)."""
        del self.state[key]
        scope = parse_scope_key(key[1])
        if st.state == "pending":
            return Transition(
                now, rule.name, scope, key[2], value, limit, "cancelled", "cleared before firing", "", dry
            )
        still = any(k[0] == rule.name for k, s in self.state.items() if s.state == "firing")
        title = f"[costwatch] resolved: {rule.name} ({scope_key(scope)})"
        now_text = "no calls in the window" if value is None else f"value now {value:.4g}"
        body = f"{rule.name} ({scope_key(scope)}): {key[2]} no longer holds ({now_text})."
        if kill and not still:
            body += "\nThe kill switch this rule engaged is lifted."
        return Transition(
            now,
            rule.name,
            scope,
            key[2],
            value,
            limit,
            "resolved",
            body,
            title,
            dry,
            True,
            kill and not still,
        )

    # -- side effects ------------------------------------------------------

    def _record(self, cur: duckdb.DuckDBPyConnection, out: list[Transition]) -> None:
        if self.write is not None:
            self.write(lambda writer_cur: self._insert(writer_cur, out))
        else:
            self._insert(cur, out)

    @staticmethod
    def _insert(cur: duckdb.DuckDBPyConnection, out: list[Transition]) -> None:
        cur.executemany(
            "INSERT INTO alert_events "
            "(ts, rule, scope, threshold, value, limit_value, state, message, dry_run) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                [
                    t.ts,
                    t.rule,
                    scope_key(t.scope),
                    t.threshold,
                    None if t.value is None or not math.isfinite(t.value) else t.value,
                    t.limit_value,
                    t.state,
                    t.message or None,
                    t.dry_run,
                ]
                for t in out
            ],
        )

    def _deliver(self, out: list[Transition]) -> None:
        """Kill switches and notifications; failures here never stop evaluation."""
        for t in out:
            if t.state in ("firing", "resolved"):
                log.log(
                    logging.INFO if t.dry_run else logging.WARNING,
                    "alert %s%s %s %s value=%s limit=%s",
                    "[dry run] " if t.dry_run else "",
                    t.rule,
                    t.state,
                    scope_key(t.scope),
                    t.value,
                    t.limit_value,
                )
            if t.dry_run:
                continue
            rule = self.ruleset.get(t.rule)
            if t.kill and self.registry is not None:
                try:
                    if t.state == "firing":
                        self.registry.engage(
                            t.kill_scope,
                            reason=t.title or t.rule,
                            source=f"rule:{t.rule}",
                            expires_at=t.expires_at,
                        )
                        self.counters["kills_engaged"] += 1
                    elif t.state == "resolved":
                        self.registry.lift_by_source(f"rule:{t.rule}")
                        self.counters["kills_lifted"] += 1
                except Exception:
                    self.counters["kill_errors"] += 1
                    log.exception("kill switch action for rule %r failed", t.rule)
            if t.notify and self.notifier is not None and rule is not None and rule.notify:
                kind = "success" if t.state == "resolved" else ("failure" if t.kill else "warning")
                try:
                    self.notifier.send(rule.notify, t.title, t.message, kind)
                except Exception:
                    self.counters["notify_errors"] += 1
                    log.exception("could not submit notification for rule %r", t.rule)


# -- backtest ------------------------------------------------------------------


class _RecordingRegistry:
    """Stands in for the kill-switch registry during a backtest: remembers, blocks nothing."""

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self.clock = clock
        self.switches: list[dict[str, Any]] = []

    def engage(
        self, scope: dict[str, str], reason: str, source: str, expires_at: float | None = None
    ) -> KillSwitch:
        now = self.clock()
        self.switches.append(
            {
                "scope": dict(scope),
                "source": source,
                "reason": reason,
                "engaged_at": now,
                "expires_at": expires_at,
                "lifted_at": None,
            }
        )
        return KillSwitch(
            id=f"backtest-{len(self.switches)}",
            scope=scope,
            reason=reason,
            source=source,
            engaged_at=now.timestamp(),
            expires_at=expires_at,
        )

    def lift_by_source(self, source: str) -> int:
        n = 0
        for sw in self.switches:
            if sw["source"] == source and sw["lifted_at"] is None:
                sw["lifted_at"] = self.clock()
                n += 1
        return n


@dataclass
class BacktestReport:
    """What `costwatch rules backtest` prints: each firing, and what each kill would have blocked."""

    since: datetime
    until: datetime
    step: timedelta
    evaluations: int
    transitions: list[Transition]
    kills: list[dict[str, Any]]

    @property
    def firings(self) -> list[Transition]:
        return [t for t in self.transitions if t.state == "firing"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "step_s": self.step.total_seconds(),
            "evaluations": self.evaluations,
            "firings": [
                {
                    k: v
                    for k, v in t.to_dict().items()
                    if k not in ("message", "title", "notify", "expires_at")
                }
                for t in self.transitions
                if t.state in ("firing", "resolved")
            ],
            "kills": [
                {
                    **k,
                    **{
                        f: (k[f].isoformat() if isinstance(k[f], datetime) else k[f])
                        for f in ("engaged_at", "until")
                    },
                }
                for k in self.kills
            ],
        }

    def format(self) -> str:
        lines = [
            f"Backtest {self.since.isoformat()} -> {self.until.isoformat()}, {self.evaluations} evaluations"
        ]
        for t in self.transitions:
            if t.state in ("firing", "resolved"):
                lines.append(
                    f"  {t.ts.isoformat()}  {t.rule:<24} {scope_key(t.scope):<28} {t.threshold:<16} "
                    f"{t.state:<9} value={t.value if t.value is None else round(t.value, 4)}"
                )
        if not self.firings:
            lines.append("  no rule would have fired")
        for k in self.kills:
            lines.append(
                f"  kill {k['source']} {scope_key(k['scope'])} at {k['engaged_at'].isoformat()} until "
                f"{k['until'].isoformat()}: {k['blocked_calls']} calls blocked "
                f"({fmt_usd(k['blocked_cost_usd'])} not spent)"
            )
        return "\n".join(lines)


def backtest(
    ruleset: RuleSet,
    connect: Connect,
    since: datetime,
    until: datetime,
    step: timedelta = timedelta(minutes=5),
    timezone: str = "UTC",
) -> BacktestReport:
    """Replay rules over stored history with a simulated clock: no notifications, no kills, no writes.

    A `kill` is simulated: the calls it would have blocked are the calls in its
    scope from the moment it fires until it would have been lifted (window end,
    rollover seen by the replay, or `until`).
    """
    if step <= timedelta(0) or until < since:
        raise ValueError("backtest needs since <= until and a positive step")
    clock = {"now": since}
    registry = _RecordingRegistry(lambda: clock["now"])
    engine = Engine(
        ruleset,
        connect,
        registry=registry,
        notifier=None,
        now=lambda: clock["now"],
        timezone=timezone,
        record=False,
        ignore_dry_run=True,
    )
    transitions: list[Transition] = []
    evaluations = 0
    t = since
    while t <= until:
        clock["now"] = t
        transitions += engine.evaluate(t)
        evaluations += 1
        t += step
    kills = []
    cur = connect()
    try:
        for sw in registry.switches:
            ends = [until]
            if sw["lifted_at"] is not None:
                ends.append(sw["lifted_at"])
            if sw["expires_at"] is not None:
                ends.append(datetime.fromtimestamp(sw["expires_at"], UTC))
            end = min(ends)
            where, params = _where(sw["scope"], (), sw["engaged_at"], end, end)
            calls, cost = cur.execute(
                f"SELECT count(*), coalesce(sum(cost_usd), 0)::DOUBLE FROM usage_events "
                f"WHERE {where} AND ts_start > ? AND NOT blocked",
                [*params, sw["engaged_at"]],
            ).fetchone()
            kills.append({**sw, "until": end, "blocked_calls": int(calls), "blocked_cost_usd": float(cost)})
    finally:
        cur.close()
    return BacktestReport(since, until, step, evaluations, transitions, kills)
