"""Alert state changes (`Transition`): recorded in `alert_events`, delivered as kill switches and
notifications."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Protocol

import duckdb

from costwatch.daemon.rules.models import RuleSet
from costwatch.protocol import KillSwitch, scope_key

log = logging.getLogger("costwatch.rules")

Writer = Callable[[Callable[[duckdb.DuckDBPyConnection], Any]], Any]  # Store.call: run on the writer thread


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


def record_transitions(cur: duckdb.DuckDBPyConnection, out: list[Transition], write: Writer | None) -> None:
    """Insert into `alert_events` through the daemon's writer, or on `cur` when there is none."""
    if write is not None:
        write(lambda writer_cur: _insert(writer_cur, out))
    else:
        _insert(cur, out)


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


def deliver_transitions(
    out: list[Transition],
    ruleset: RuleSet,
    registry: KillSwitchRegistryProtocol | None,
    notifier: NotifierProtocol | None,
    counters: Counter[str],
) -> None:
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
        rule = ruleset.get(t.rule)
        if t.kill and registry is not None:
            try:
                if t.state == "firing":
                    registry.engage(
                        t.kill_scope,
                        reason=t.title or t.rule,
                        source=f"rule:{t.rule}",
                        expires_at=t.expires_at,
                    )
                    counters["kills_engaged"] += 1
                elif t.state == "resolved":
                    registry.lift_by_source(f"rule:{t.rule}")
                    counters["kills_lifted"] += 1
            except Exception:
                counters["kill_errors"] += 1
                log.exception("kill switch action for rule %r failed", t.rule)
        if t.notify and notifier is not None and rule is not None and rule.notify:
            kind = "success" if t.state == "resolved" else ("failure" if t.kill else "warning")
            try:
                notifier.send(rule.notify, t.title, t.message, kind)
            except Exception:
                counters["notify_errors"] += 1
                log.exception("could not submit notification for rule %r", t.rule)
