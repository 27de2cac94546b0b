"""Threshold, data-quality and forecast rules: `for:` holding, resolve, repeat, projections."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from costwatch.daemon.rules import BudgetRule, load_rules
from costwatch.daemon.rules.engine import Engine
from costwatch.daemon.rules.forecast import forecast
from tests.rules.conftest import DB, Clock, FakeNotifier, FakeRegistry, write_rules

UTC = timezone.utc
T0 = datetime(2030, 11, 2, 10, 0, tzinfo=UTC)
CHANNELS = 'channels:\n  ops: {url: "json://127.0.0.1:9/hook"}\n'


def _engine(tmp_path: Path, rules: str, db: DB, clock: Clock, registry: object, notifier: object) -> Engine:
    write_rules(tmp_path / "alerts", "rules.yml", CHANNELS + rules)
    ruleset = load_rules(tmp_path / "alerts", environ={})
    engine = Engine(ruleset, db.connect, registry=registry, notifier=notifier, now=clock)  # type: ignore[arg-type]
    engine.restore()
    return engine


ERRORS = """
rules:
  - name: errors
    kind: threshold
    metric: error_rate
    scope: {model: gpt-4o}
    value: 5%
    window: 5m
    for: 5m
    min_requests: 10
    notify: [ops]
"""


def _traffic(db: DB, clock: Clock, minutes: int, errors_per_20: int, notes: list, engine: Engine) -> None:
    """Per simulated minute: 20 calls (some failing), evaluated every 15 s."""
    for _ in range(minutes):
        db.add(clock(), n=20 - errors_per_20)
        if errors_per_20:
            db.add(clock(), n=errors_per_20, http_status=500, error_class="server")
        db.add(clock(), n=5, model="other", http_status=500, error_class="server")  # filtered out
        for _ in range(4):
            notes += [(t.ts - T0, t.state) for t in engine.evaluate()]
            clock.advance(seconds=15)


def test_error_rate_pending_then_firing_after_for_then_resolved(
    tmp_path: Path, db: DB, registry: FakeRegistry, notifier: FakeNotifier
) -> None:
    clock = Clock(T0)
    engine = _engine(tmp_path, ERRORS, db, clock, registry, notifier)
    notes: list = []
    _traffic(db, clock, 7, 2, notes, engine)  # 10 % errors for 7 minutes
    assert notes == [(timedelta(0), "pending"), (timedelta(minutes=5), "firing")]
    assert len(notifier.sent) == 1
    assert (
        "error_rate is 10.00 % > 5.00 % over the last 5m (100 calls, model=gpt-4o)"
        in notifier.sent[0]["body"]
    )
    notes.clear()
    _traffic(db, clock, 10, 0, notes, engine)  # healthy again
    assert [s for _, s in notes] == ["resolved"]
    # 7 min of errors ended at +7m; the 5 min window still holds > 5 % errors until about +9m
    assert timedelta(minutes=8) < notes[0][0] <= timedelta(minutes=10)
    assert notifier.sent[-1]["type"] == "success" and len(notifier.sent) == 2
    assert [r[3] for r in db.alert_rows()] == ["pending", "firing", "resolved"]


def test_error_spike_shorter_than_for_never_fires(
    tmp_path: Path, db: DB, registry: FakeRegistry, notifier: FakeNotifier
) -> None:
    clock = Clock(T0)
    engine = _engine(tmp_path, ERRORS.replace("window: 5m", "window: 1m"), db, clock, registry, notifier)
    notes: list = []
    _traffic(db, clock, 2, 5, notes, engine)
    _traffic(db, clock, 5, 0, notes, engine)
    assert [s for _, s in notes] == ["pending", "cancelled"]
    assert notifier.sent == []


def test_restored_pending_keeps_its_start(tmp_path: Path, db: DB, registry: FakeRegistry) -> None:
    clock = Clock(T0)
    engine = _engine(tmp_path, ERRORS, db, clock, registry, FakeNotifier())
    notes: list = []
    _traffic(db, clock, 3, 2, notes, engine)
    engine2 = _engine(tmp_path, ERRORS, db, clock, registry, FakeNotifier())
    notes.clear()
    _traffic(db, clock, 3, 2, notes, engine2)
    assert notes == [(timedelta(minutes=5), "firing")]


P99 = """
rules:
  - name: slow
    kind: threshold
    metric: latency_p99
    value: 2000
    window: 10m
    per: model
    repeat_interval: 30m
    action: kill
    notify: [ops]
"""


def test_p99_fires_repeats_and_resolves(
    tmp_path: Path, db: DB, registry: FakeRegistry, notifier: FakeNotifier
) -> None:
    clock = Clock(T0)
    engine = _engine(tmp_path, P99, db, clock, registry, notifier)
    db.add(clock() - timedelta(minutes=1), n=95, latency_ms=120.0)
    db.add(clock() - timedelta(minutes=1), n=5, latency_ms=5000.0)
    db.add(clock() - timedelta(minutes=1), n=50, latency_ms=300.0, model="gpt-4o-mini")
    out = engine.evaluate()
    assert [(t.scope, t.state) for t in out] == [({"model": "gpt-4o"}, "firing")]
    assert out[0].value == pytest.approx(5000.0)
    assert (
        registry.engaged[0]["scope"] == {"model": "gpt-4o"} and registry.engaged[0]["source"] == "rule:slow"
    )
    assert "latency_p99 is 5,000 ms > 2,000 ms" in notifier.sent[0]["body"]
    assert "costwatch resume --scope model=gpt-4o" in notifier.sent[0]["body"]

    for _ in range(3):  # still slow: re-notified once after repeat_interval
        clock.advance(minutes=9)
        db.add(clock(), n=5, latency_ms=5000.0)
        engine.evaluate()
    clock.advance(minutes=4)
    db.add(clock(), n=5, latency_ms=5000.0)
    engine.evaluate()
    assert [n["body"].splitlines()[0] for n in notifier.sent[1:]] == ["still firing"]

    clock.advance(minutes=11)
    db.add(clock() - timedelta(minutes=1), n=100, latency_ms=150.0)
    out = engine.evaluate()
    assert [(t.scope, t.state) for t in out] == [({"model": "gpt-4o"}, "resolved")]
    assert registry.lifted == ["rule:slow"]


QUALITY = """
rules:
  - name: unknown-cost
    kind: data_quality
    window: 1h
    notify: [ops]
"""


def test_data_quality_fires_on_unpriced_and_missing_usage(
    tmp_path: Path, db: DB, registry: FakeRegistry, notifier: FakeNotifier
) -> None:
    clock = Clock(T0)
    engine = _engine(tmp_path, QUALITY, db, clock, registry, notifier)
    t = clock() - timedelta(minutes=10)
    db.add(t, n=50)  # priced, fine
    db.add(
        t,
        n=1,
        model="error-only",
        usage_source="missing",
        input_tokens=None,
        output_tokens=None,
        http_status=500,
        error_class="server",
    )  # errors carry no usage: not counted
    assert engine.evaluate() == []
    db.add(t, n=3, model="brand-new-model", priced=False, cost_usd=None)
    out = engine.evaluate()
    assert [(t.threshold, t.state, t.value) for t in out] == [("unpriced", "firing", 3.0)]
    assert (
        "3 calls in the last 1h (global) recorded with tokens but no known price" in notifier.sent[0]["body"]
    )
    assert "Models: brand-new-model" in notifier.sent[0]["body"]
    db.add(t, n=2, model="gpt-4o", usage_source="missing", input_tokens=None, output_tokens=None)
    out = engine.evaluate()
    assert [(t.threshold, t.state, t.value) for t in out] == [("missing_usage", "firing", 2.0)]
    clock.advance(hours=1)
    assert sorted((t.threshold, t.state) for t in engine.evaluate()) == [
        ("missing_usage", "resolved"),
        ("unpriced", "resolved"),
    ]


def _linear_month(db: DB) -> None:
    """$10 a day, spread evenly (one call per hour) from 2030-11-01 00:00 to 11-09 23:00."""
    start = datetime(2030, 11, 1, tzinfo=UTC)
    for hour in range(9 * 24):
        db.add(start + timedelta(hours=hour), cost_usd=10 / 24, app="chat-api")


def test_forecast_projects_exhaustion_for_linear_spend(db: DB) -> None:
    _linear_month(db)
    rule = BudgetRule(name="m", kind="budget", limit=200, window="month", scope={"app": "chat-api"})
    result = forecast(rule, db.connect, datetime(2030, 11, 10, tzinfo=UTC))
    [group] = result["groups"]
    assert group["spent"] == pytest.approx(90.0)
    assert group["rate_per_hour"] == pytest.approx(10 / 24)
    assert group["exhausts_at"] == "2030-11-21T00:00:00+00:00"
    assert group["exhausts_before_window_end"] is True
    assert group["projected"] == pytest.approx(300.0)
    assert group["summary"] == "at this pace the month budget runs out on 2030-11-21 00:00 UTC"
    assert result["window_end"] == "2030-12-01T00:00:00+00:00"
    roomy = rule.model_copy(update={"limit": 400})
    assert (
        forecast(roomy, db.connect, datetime(2030, 11, 10, tzinfo=UTC))["groups"][0][
            "exhausts_before_window_end"
        ]
        is False
    )


FORECAST = """
rules:
  - name: monthly
    kind: budget
    limit: 200
    window: month
    scope: {app: chat-api}
    thresholds: [{at: 100%}]
  - name: burn
    kind: forecast
    budget: monthly
    forecast: {exhausts_before_window_end: true}
    notify: [ops]
"""


def test_forecast_rule_fires_as_a_condition(
    tmp_path: Path, db: DB, registry: FakeRegistry, notifier: FakeNotifier
) -> None:
    _linear_month(db)
    clock = Clock(datetime(2030, 11, 10, tzinfo=UTC))
    engine = _engine(tmp_path, FORECAST, db, clock, registry, notifier)
    out = engine.evaluate()
    assert [(t.rule, t.state) for t in out] == [("burn", "firing")]
    assert out[0].value == pytest.approx(11 * 24)  # hours until exhaustion
    assert "runs out on 2030-11-21 00:00 UTC" in notifier.sent[0]["body"]
    limit_raised = FORECAST.replace("limit: 200", "limit: 1000")
    write_rules(tmp_path / "alerts", "rules.yml", CHANNELS + limit_raised)
    engine.set_rules(load_rules(tmp_path / "alerts", environ={}))
    assert [(t.rule, t.state) for t in engine.evaluate()] == [("burn", "resolved")]


def test_dry_run_threshold_with_kill_records_only(
    tmp_path: Path, db: DB, registry: FakeRegistry, notifier: FakeNotifier
) -> None:
    clock = Clock(T0)
    engine = _engine(
        tmp_path,
        P99.replace("    action: kill\n", "    action: kill\n    mode: dry_run\n"),
        db,
        clock,
        registry,
        notifier,
    )
    db.add(clock() - timedelta(minutes=1), n=10, latency_ms=5000.0)
    assert [t.state for t in engine.evaluate()] == ["firing"]
    clock.advance(minutes=11)
    assert [t.state for t in engine.evaluate()] == ["resolved"]
    assert notifier.sent == [] and registry.engaged == [] and registry.lifted == []
    assert [(r[3], r[4]) for r in db.alert_rows()] == [("firing", True), ("resolved", True)]
