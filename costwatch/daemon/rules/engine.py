"""The alert state machine: one `Engine` evaluates a RuleSet against the database.

State lives per (rule, scope group, threshold): pending -> firing -> resolved.
Every change is written to `alert_events`, and on start the engine rebuilds
its state from there, so a budget threshold that already fired this window
does not fire again after a daemon restart. Time only ever comes from the
injected clock, which is what lets tests and the backtest drive it.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import duckdb

from costwatch.daemon.rules.conditions import (
    Observation,
    forecast_observations,
    quality_observations,
    threshold_observations,
)
from costwatch.daemon.rules.messages import budget_message
from costwatch.daemon.rules.models import AnyRule, BudgetRule, DataQualityRule, RuleSet, ThresholdRule
from costwatch.daemon.rules.transitions import (
    KillSwitchRegistryProtocol,
    NotifierProtocol,
    Transition,
    Writer,
    deliver_transitions,
    record_transitions,
)
from costwatch.daemon.rules.windows import Connect, budget_values, window_bounds
from costwatch.protocol import parse_scope_key, resume_command, scope_key

log = logging.getLogger("costwatch.rules")

UTC = timezone.utc


@dataclass
class _State:
    state: str  # pending | firing
    since: datetime
    window: str | None = None
    last_notified: datetime | None = None


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
                        record_transitions(cur, out, self.write)
                    except Exception:
                        self.counters["record_errors"] += 1
                        log.exception("could not record %d alert events", len(out))
            finally:
                cur.close()
            self.counters["evaluations"] += 1
            deliver_transitions(out, self.ruleset, self.registry, self.notifier, self.counters)
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
            return self._step(rule, threshold_observations(cur, rule, now), now)
        if isinstance(rule, DataQualityRule):
            return self._step(rule, quality_observations(cur, rule, now), now)
        budget = self.ruleset.get(rule.budget)
        if not isinstance(budget, BudgetRule):
            raise ValueError(f"forecast {rule.name!r}: no budget rule {rule.budget!r}")
        return self._step(rule, forecast_observations(cur, rule, budget, self._tz(budget), now), now)

    # -- budgets ---------------------------------------------------------

    def _budget(self, cur: duckdb.DuckDBPyConnection, rule: BudgetRule, now: datetime) -> list[Transition]:
        tz = self._tz(rule)
        start, end, window_id = window_bounds(rule, now, tz)
        values = budget_values(cur, rule, start, end, now)
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
            body = budget_message(
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

    def _step(self, rule: AnyRule, observations: list[Observation], now: datetime) -> list[Transition]:
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
