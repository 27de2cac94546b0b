"""`costwatch rules backtest`: rules replayed over stored history with a simulated clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from costwatch.daemon.rules.engine import Engine
from costwatch.daemon.rules.models import RuleSet
from costwatch.daemon.rules.transitions import Transition
from costwatch.daemon.rules.windows import Connect, window_filter
from costwatch.money import fmt_usd
from costwatch.protocol import KillSwitch, scope_key

UTC = timezone.utc


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
            where, params = window_filter(sw["scope"], (), sw["engaged_at"], end, end)
            calls, cost = cur.execute(
                f"SELECT count(*), coalesce(sum(cost_usd), 0)::DOUBLE FROM usage_events "
                f"WHERE {where} AND ts_start > ? AND NOT blocked",
                [*params, sw["engaged_at"]],
            ).fetchone()
            kills.append({**sw, "until": end, "blocked_calls": int(calls), "blocked_cost_usd": float(cost)})
    finally:
        cur.close()
    return BacktestReport(since, until, step, evaluations, transitions, kills)
