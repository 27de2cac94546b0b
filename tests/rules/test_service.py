"""RuleService: the APScheduler job, reload that keeps old rules on failure, state across restarts."""

from __future__ import annotations

import os
import signal
from datetime import datetime, timezone
from pathlib import Path

from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import CollectorRegistry, generate_latest

from costwatch.daemon.notify import Notifier
from costwatch.daemon.scheduler import JOB_ID, RuleMetricsCollector, RuleService
from costwatch.settings import DaemonSettings
from tests.rules.conftest import DB, Clock, FakeRegistry, write_rules
from tests.rules.sinks import wait_for

UTC = timezone.utc
NOW = datetime(2030, 11, 2, 10, 0, tzinfo=UTC)

GOOD = """
channels:
  ops: {url: "json://127.0.0.1:9/hook"}
rules:
  - name: daily
    kind: budget
    limit: 10
    window: day
    notify: [ops]
"""


def _service(tmp_path: Path, db: DB, interval_s: float = 3600) -> RuleService:
    return RuleService(
        tmp_path / "alerts",
        db.connect,
        FakeRegistry(),
        interval_s=interval_s,
        now=Clock(NOW),
        notifier=Notifier(retries=0),
    )


def test_job_is_scheduled_with_the_agreed_options(tmp_path: Path, db: DB) -> None:
    write_rules(tmp_path / "alerts", "rules.yml", GOOD)
    service = _service(tmp_path, db)
    assert service.start() == []
    try:
        job = service._scheduler.get_job(JOB_ID)  # type: ignore[union-attr]
        assert isinstance(job.trigger, IntervalTrigger) and job.trigger.interval.total_seconds() == 3600
        assert (job.max_instances, job.coalesce, job.misfire_grace_time) == (1, True, 30)
        db.add(NOW, cost_usd=12.0)
        assert [t.state for t in service.evaluate_now()] == ["firing"]
        assert service.stats()["firing"] == ["daily/global/100%"]
        registry = CollectorRegistry()
        registry.register(RuleMetricsCollector(service))
        text = generate_latest(registry).decode()
        assert 'costwatch_budget_used_ratio{rule="daily",scope="global"} 1.2' in text
        assert 'costwatch_alerts_firing{rule="daily"} 1.0' in text
        assert "costwatch_rule_evaluations_total 1.0" in text
        [projection] = service.forecasts()
        assert projection["rule"] == "daily" and projection["groups"][0]["spent"] == 12.0
        assert projection["groups"][0]["summary"] == "the budget is already used up"
    finally:
        service.shutdown()


def test_the_scheduler_runs_the_job(tmp_path: Path, db: DB) -> None:
    write_rules(tmp_path / "alerts", "rules.yml", GOOD)
    service = _service(tmp_path, db, interval_s=0.05)
    service.start()
    try:
        wait_for(lambda: service.engine.counters["evaluations"] >= 2)
    finally:
        service.shutdown()


def test_reload_failure_keeps_the_old_rules(tmp_path: Path, db: DB) -> None:
    path = write_rules(tmp_path / "alerts", "rules.yml", GOOD)
    service = _service(tmp_path, db)
    service.start()
    try:
        db.add(NOW, cost_usd=12.0)
        assert len(service.evaluate_now()) == 1
        path.write_text(GOOD.replace("limit: 10", "limit: ten").replace("daily", "renamed"))
        errors = service.reload()
        assert errors == [
            f"{path}:7: rules[0].limit: Input should be a valid number, unable to parse string as a number"
        ]
        assert [r.name for r in service.ruleset.rules] == ["daily"]
        assert service.stats()["load_errors"] == errors
        assert service.evaluate_now() == []  # still running the old rule, still deduped
        path.write_text(GOOD.replace("daily", "renamed"))
        assert service.reload() == []
        assert [r.name for r in service.ruleset.rules] == ["renamed"]
        assert [(t.rule, t.state) for t in service.evaluate_now()] == [("renamed", "firing")]
        assert service.stats()["firing"] == ["renamed/global/100%"]
    finally:
        service.shutdown()


def test_invalid_rules_at_start_do_not_stop_the_service(tmp_path: Path, db: DB) -> None:
    write_rules(tmp_path / "alerts", "rules.yml", "rules:\n  - name: x\n    kind: budget\n")
    service = _service(tmp_path, db)
    errors = service.start()
    try:
        assert any("rules[0].limit: Field required" in e for e in errors)
        assert service.evaluate_now() == []
    finally:
        service.shutdown()


def test_from_settings(tmp_path: Path, db: DB) -> None:
    write_rules(tmp_path / "alerts", "rules.yml", GOOD)
    settings = DaemonSettings(
        rules=tmp_path / "alerts", evaluation_interval_s=7, timezone="Europe/Berlin", state_dir=tmp_path
    )
    service = RuleService.from_settings(settings, db.connect, FakeRegistry())
    assert service.interval_s == 7 and str(service.engine.tz) == "Europe/Berlin"
    assert service.reload() == [] and len(service.ruleset.rules) == 1
    service.shutdown()


def test_sighup_reloads(tmp_path: Path, db: DB) -> None:
    path = write_rules(tmp_path / "alerts", "rules.yml", GOOD)
    service = _service(tmp_path, db)
    service.reload()
    previous = signal.getsignal(signal.SIGHUP)
    try:
        service.install_sighup()
        path.write_text(GOOD.replace("daily", "after-hup"))
        os.kill(os.getpid(), signal.SIGHUP)
        wait_for(lambda: [r.name for r in service.ruleset.rules] == ["after-hup"])
    finally:
        signal.signal(signal.SIGHUP, previous)
        service.shutdown()
