"""APScheduler 3 wiring: the rules engine on an interval, off the HTTP event loop.

`RuleService` is the one object the daemon holds: it loads rules, restores
alert state from `alert_events`, evaluates every `evaluation_interval_s`
(one run at a time, missed runs coalesced) and reloads on SIGHUP or HTTP,
keeping the old rules when the new ones do not validate.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from costwatch.daemon.notify import Notifier
from costwatch.daemon.rules import BudgetRule, RuleError, RuleSet, load_rules
from costwatch.daemon.rules.engine import Engine
from costwatch.daemon.rules.forecast import forecast
from costwatch.daemon.rules.transitions import KillSwitchRegistryProtocol, Transition, Writer
from costwatch.daemon.rules.windows import Connect

log = logging.getLogger("costwatch.rules")

JOB_ID = "costwatch-rules"


class RuleService:
    """Owns the rule set, the engine, the notifier and the scheduler job."""

    def __init__(
        self,
        rules_dir: Path | str | None,
        connect: Connect,
        registry: KillSwitchRegistryProtocol | None,
        interval_s: float = 15.0,
        timezone_name: str = "UTC",
        now: Callable[[], datetime] | None = None,
        notifier: Notifier | None = None,
        write: Writer | None = None,
    ) -> None:
        self.rules_dir = Path(rules_dir) if rules_dir else None
        self.interval_s = interval_s
        self.notifier = notifier or Notifier()
        self.engine = Engine(
            RuleSet(),
            connect,
            registry=registry,
            notifier=self.notifier,
            now=now or (lambda: datetime.now(timezone.utc)),
            timezone=timezone_name,
            write=write,
        )
        self.load_errors: list[str] = []
        self._scheduler: BackgroundScheduler | None = None
        self._reload_lock = threading.Lock()

    @classmethod
    def from_settings(
        cls,
        settings: Any,
        connect: Connect,
        registry: KillSwitchRegistryProtocol | None,
        write: Writer | None = None,
    ) -> RuleService:
        """Build from `DaemonSettings` (rules dir, evaluation_interval_s, timezone)."""
        rules_dir = settings.rules
        if rules_dir is None and Path("alerts").is_dir():
            rules_dir = Path("alerts")
        return cls(
            rules_dir, connect, registry, settings.evaluation_interval_s, settings.timezone, write=write
        )

    @property
    def ruleset(self) -> RuleSet:
        return self.engine.ruleset

    def start(self) -> list[str]:
        """Load rules (errors are logged and returned; the daemon runs on), restore state, schedule."""
        errors = self.reload() if self.rules_dir else []
        try:
            self.engine.restore()
        except Exception:
            log.exception("could not restore alert state from alert_events; starting fresh")
        self._scheduler = BackgroundScheduler(timezone="UTC")
        self._scheduler.add_job(
            self.evaluate_now,
            "interval",
            seconds=self.interval_s,
            id=JOB_ID,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=30,
        )
        self._scheduler.start()
        return errors

    def shutdown(self, wait: bool = True, notify_timeout_s: float = 10.0) -> None:
        """Stop the job (waiting for a running evaluation), then give queued alerts a bounded time."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=wait)
            self._scheduler = None
        self.notifier.close(timeout=notify_timeout_s if wait else 0)

    def reload(self, rules_dir: Path | str | None = None) -> list[str]:
        """Validate `rules_dir` (default: the current one) and swap it in; on error keep the old rules."""
        directory = Path(rules_dir) if rules_dir else self.rules_dir
        if directory is None:
            return ["no rules directory configured"]
        with self._reload_lock:
            try:
                ruleset = load_rules(directory)
            except RuleError as exc:
                self.load_errors = exc.errors
                for line in exc.errors:
                    log.error("rules not reloaded: %s", line)
                return exc.errors
            bad = self.notifier.set_channels(ruleset.channels)
            self.engine.set_rules(ruleset)
            self.rules_dir = directory
            self.load_errors = [f"channel {name}: Apprise cannot parse its URL" for name in bad]
            log.info(
                "loaded %d rules and %d channels from %s",
                len(ruleset.rules),
                len(ruleset.channels),
                directory,
            )
            return self.load_errors

    def evaluate_now(self) -> list[Transition]:
        """One evaluation pass (the scheduled job; also callable from HTTP or tests)."""
        try:
            return self.engine.evaluate()
        except Exception:
            self.engine.counters["evaluation_errors"] += 1
            log.exception("rule evaluation failed")
            return []

    def forecasts(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Burn-rate projection of every budget rule (for `/v1/status` and `costwatch status`)."""
        now = now or self.engine.now()
        out = []
        for rule in self.ruleset.rules:
            if isinstance(rule, BudgetRule):
                try:
                    out.append(forecast(rule, self.engine.connect, now, str(self.engine.tz)))
                except Exception:
                    log.exception("forecast of %r failed", rule.name)
        return out

    def install_sighup(self) -> None:
        """Reload on SIGHUP (call from the main thread)."""
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=self.reload, daemon=True).start())

    def stats(self) -> dict[str, Any]:
        """Counters for /metrics and `costwatch status`."""
        return {
            "rules": len(self.ruleset.rules),
            "channels": self.notifier.channel_names,
            "engine": dict(self.engine.counters),
            "notifications": self.notifier.stats(),
            "load_errors": list(self.load_errors),
            "firing": sorted(
                f"{r}/{s}/{t}" for (r, s, t), st in self.engine.state.items() if st.state == "firing"
            ),
        }


class RuleMetricsCollector(Collector):
    """Rule-engine gauges and counters computed at scrape time (register on the daemon's registry)."""

    def __init__(self, service: RuleService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        engine, notifier = self.service.engine, self.service.notifier
        used = GaugeMetricFamily(
            "costwatch_budget_used_ratio",
            "Budget used (spend or tokens / limit) in the current window.",
            labels=["rule", "scope"],
        )
        for (rule, scope), ratio in sorted(engine.budget_usage.items()):
            used.add_metric([rule, scope], ratio)
        yield used
        firing = GaugeMetricFamily(
            "costwatch_alerts_firing", "Alerts currently firing, by rule.", labels=["rule"]
        )
        counts: dict[str, int] = {r.name: 0 for r in self.service.ruleset.rules}
        for (rule, _, _), st in list(engine.state.items()):
            if st.state == "firing":
                counts[rule] = counts.get(rule, 0) + 1
        for rule, n in sorted(counts.items()):
            firing.add_metric([rule], n)
        yield firing
        yield CounterMetricFamily(
            "costwatch_rule_evaluations", "Rule evaluation passes.", value=engine.counters["evaluations"]
        )
        errors = CounterMetricFamily(
            "costwatch_rule_errors", "Rule engine failures by kind.", labels=["kind"]
        )
        for kind in ("rule_errors", "record_errors", "kill_errors", "notify_errors", "evaluation_errors"):
            errors.add_metric([kind.removesuffix("_errors")], engine.counters[kind])
        yield errors
        sent = CounterMetricFamily(
            "costwatch_alert_notifications",
            "Alert deliveries by channel and result.",
            labels=["channel", "result"],
        )
        for result, counter in (("sent", notifier.sent), ("failed", notifier.failed)):
            for channel, n in sorted(counter.items()):
                sent.add_metric([channel, result], n)
        yield sent
