"""Budget rules: the ladder, dedupe per window, rollover, kill with scope, restart, dry run."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from costwatch.daemon.killswitch import KillSwitchRegistry
from costwatch.daemon.rules import BudgetRule, load_rules
from costwatch.daemon.rules.engine import Engine
from costwatch.daemon.rules.windows import window_bounds
from tests.rules.conftest import DB, Clock, FakeNotifier, FakeRegistry, write_rules

UTC = timezone.utc
# Far enough ahead that the real registry's wall-clock expiry never interferes.
NOV = datetime(2030, 11, 2, 10, 0, tzinfo=UTC)

LADDER = """
channels:
  ops: {url: "json://127.0.0.1:9/hook"}
rules:
  - name: ladder
    kind: budget
    limit: 500
    window: month
    thresholds: [{at: 10}, {at: 50}, {at: 100}, {at: 500}]
    notify: [ops]
"""


def _engine(tmp_path: Path, text: str, db: DB, clock: Clock, registry: object, notifier: object) -> Engine:
    write_rules(tmp_path / "alerts", "rules.yml", text)
    ruleset = load_rules(tmp_path / "alerts", environ={})
    engine = Engine(ruleset, db.connect, registry=registry, notifier=notifier, now=clock)  # type: ignore[arg-type]
    engine.restore()
    return engine


def test_ladder_fires_each_threshold_once_and_resolves_next_month(
    tmp_path: Path, db: DB, registry: FakeRegistry, notifier: FakeNotifier
) -> None:
    clock = Clock(NOV)
    engine = _engine(tmp_path, LADDER, db, clock, registry, notifier)
    fired: list[str] = []
    for cost in (5, 6, 40, 60, 400):  # running total 5, 11, 51, 111, 511
        db.add(clock(), cost_usd=float(cost), model="gpt-4o")
        clock.advance(minutes=1)
        for _ in range(3):  # re-evaluating never fires the same threshold again
            fired += [t.threshold for t in engine.evaluate() if t.state == "firing"]
            clock.advance(seconds=15)
    assert fired == ["$10", "$50", "$100", "$500"]
    assert [n["title"] for n in notifier.sent] == [
        f"[costwatch] budget 'ladder' crossed ${x} (global)" for x in (10, 50, 100, 500)
    ]
    assert notifier.sent[0]["channels"] == ["ops"]
    assert "$11.00 crossed the $10 threshold ($10.00), over by $1.00" in notifier.sent[0]["body"]
    assert "Top models: gpt-4o $11.00" in notifier.sent[0]["body"]
    assert registry.engaged == []

    # The month rolls over: one resolved message naming the highest, every threshold re-armed.
    clock.set(datetime(2030, 12, 1, 0, 0, 10, tzinfo=UTC))
    out = engine.evaluate()
    assert sorted(t.threshold for t in out if t.state == "resolved") == ["$10", "$100", "$50", "$500"]
    assert [n["type"] for n in notifier.sent[4:]] == ["success"]
    assert "no longer over $500: the window rolled over" in notifier.sent[4]["body"]
    assert engine.evaluate() == []
    db.add(clock(), cost_usd=12.0)
    assert [t.threshold for t in engine.evaluate() if t.state == "firing"] == ["$10"]

    states = [(r[2], r[3]) for r in db.alert_rows()]
    assert states.count(("$10", "firing")) == 2 and states.count(("$500", "resolved")) == 1


def test_crossing_several_thresholds_at_once_sends_one_message(
    tmp_path: Path, db: DB, registry: FakeRegistry, notifier: FakeNotifier
) -> None:
    clock = Clock(NOV)
    engine = _engine(tmp_path, LADDER, db, clock, registry, notifier)
    db.add(clock() - timedelta(hours=1), cost_usd=70.0, app="batch", model="o3")
    db.add(clock() - timedelta(hours=1), cost_usd=50.0, app="chat-api", model="gpt-4o", user="alice")
    out = engine.evaluate()
    assert sorted(t.threshold for t in out) == ["$10", "$100", "$50"]  # all recorded ...
    assert len(notifier.sent) == 1  # ... one message, naming the highest
    body = notifier.sent[0]["body"]
    assert "crossed $100" in notifier.sent[0]["title"]
    assert "$120.00 crossed the $100 threshold ($100.00), over by $20.00; 24.0 % of the $500.00 limit" in body
    assert "Window month: 2030-11-01 00:00 UTC -> 2030-12-01 00:00 UTC" in body
    assert "Top models: o3 $70.00, gpt-4o $50.00" in body
    assert "Top apps: batch $70.00, chat-api $50.00" in body
    assert "Top users: alice $50.00" in body
    assert [r[3] for r in db.alert_rows()] == ["firing"] * 3


def test_restart_does_not_fire_again_in_the_same_window(
    tmp_path: Path, db: DB, registry: FakeRegistry, notifier: FakeNotifier
) -> None:
    clock = Clock(NOV)
    engine = _engine(tmp_path, LADDER, db, clock, registry, notifier)
    db.add(clock(), cost_usd=60.0)
    clock.advance(minutes=1)
    assert len([t for t in engine.evaluate() if t.state == "firing"]) == 2

    # A new daemon: same database, fresh engine rebuilt from alert_events.
    restarted = FakeNotifier()
    engine2 = _engine(tmp_path, LADDER, db, clock, registry, restarted)
    clock.advance(minutes=1)
    assert engine2.evaluate() == []
    db.add(clock(), cost_usd=50.0)
    clock.advance(minutes=1)
    assert [t.threshold for t in engine2.evaluate() if t.state == "firing"] == ["$100"]
    assert len(restarted.sent) == 1

    # Down over the month end: the next start resolves what fired last month.
    clock.set(datetime(2030, 12, 1, 8, 0, tzinfo=UTC))
    engine3 = _engine(tmp_path, LADDER, db, clock, registry, FakeNotifier())
    assert sorted(t.threshold for t in engine3.evaluate() if t.state == "resolved") == ["$10", "$100", "$50"]


TOKENS = """
channels:
  ops: {url: "json://127.0.0.1:9/hook"}
rules:
  - name: tokens-per-user
    kind: budget
    unit: tokens
    limit: 500000
    window: day
    scope: {app: chat-api}
    per: user
    thresholds:
      - at: 80%
      - at: 100%
        action: kill
    notify: [ops]
"""


def test_daily_token_budget_kills_the_user_and_lifts_on_rollover(
    tmp_path: Path, db: DB, registry: FakeRegistry, notifier: FakeNotifier
) -> None:
    clock = Clock(NOV)
    engine = _engine(tmp_path, TOKENS, db, clock, registry, notifier)
    t = clock() - timedelta(hours=1)
    db.add(t, n=2, user="alice", input_tokens=200_000, output_tokens=60_000)  # 520k
    db.add(t, user="bob", input_tokens=300_000, output_tokens=100_000)  # 400k: 80 %, no kill
    db.add(t, app="other-app", user="bob", input_tokens=900_000, output_tokens=0)  # outside the scope
    db.add(t, user=None, input_tokens=900_000, output_tokens=0)  # no user: no group
    out = engine.evaluate()
    assert sorted((scope_text(t.scope), t.threshold) for t in out) == [
        ("app=chat-api,user=alice", "100%"),
        ("app=chat-api,user=alice", "80%"),
        ("app=chat-api,user=bob", "80%"),
    ]
    assert registry.engaged == [
        {
            "scope": {"app": "chat-api", "user": "alice"},
            "reason": "[costwatch] budget 'tokens-per-user' crossed 100% (app=chat-api,user=alice)",
            "source": "rule:tokens-per-user",
            "expires_at": datetime(2030, 11, 3, tzinfo=UTC).timestamp(),
        }
    ]
    alice = next(n for n in notifier.sent if "alice" in n["title"])
    assert alice["type"] == "failure"
    assert "520,000 tokens crossed the 100% threshold (500,000 tokens)" in alice["body"]
    assert "Lift it with: costwatch resume --scope app=chat-api --scope user=alice" in alice["body"]
    assert registry.lifted == []

    clock.set(datetime(2030, 11, 3, 0, 0, 15, tzinfo=UTC))
    out = engine.evaluate()
    assert {(scope_text(t.scope), t.state) for t in out} == {
        ("app=chat-api,user=alice", "resolved"),
        ("app=chat-api,user=bob", "resolved"),
    }
    assert registry.lifted == ["rule:tokens-per-user"]


def scope_text(scope: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in scope.items())


def test_kill_with_the_real_registry(tmp_path: Path, db: DB, notifier: FakeNotifier) -> None:
    real = KillSwitchRegistry(lambda fn: fn(db.con.cursor()))
    clock = Clock(NOV)
    engine = _engine(tmp_path, TOKENS, db, clock, real, notifier)
    db.add(clock() - timedelta(minutes=5), user="carol", input_tokens=600_000)
    engine.evaluate()
    [switch] = real.state().engaged
    assert switch.scope == {"app": "chat-api", "user": "carol"} and switch.source == "rule:tokens-per-user"
    assert db.con.execute("SELECT count(*) FROM killswitches WHERE lifted_at IS NULL").fetchone() == (1,)
    clock.set(datetime(2030, 11, 3, 0, 1, tzinfo=UTC))
    engine.evaluate()
    assert real.state().engaged == []


def test_dry_run_records_but_never_notifies_or_kills(
    tmp_path: Path, db: DB, registry: FakeRegistry, notifier: FakeNotifier
) -> None:
    text = TOKENS.replace("    per: user\n", "    per: user\n    mode: dry_run\n")
    clock = Clock(NOV)
    engine = _engine(tmp_path, text, db, clock, registry, notifier)
    db.add(clock(), user="alice", input_tokens=600_000)
    clock.advance(minutes=1)
    out = engine.evaluate()
    assert {t.threshold for t in out} == {"80%", "100%"}
    assert notifier.sent == [] and registry.engaged == []
    assert db.alert_rows() == [
        ("tokens-per-user", "app=chat-api,user=alice", "80%", "firing", True),
        ("tokens-per-user", "app=chat-api,user=alice", "100%", "firing", True),
    ]
    message = db.con.execute("SELECT message FROM alert_events WHERE threshold = '100%'").fetchone()[0]
    assert message.startswith("[dry run: no notification sent, no kill switch engaged]")
    clock.set(datetime(2030, 11, 3, 0, 1, tzinfo=UTC))
    assert {t.state for t in engine.evaluate()} == {"resolved"}
    assert notifier.sent == [] and registry.lifted == []


def test_calendar_windows_follow_the_timezone() -> None:
    rule = BudgetRule(name="d", kind="budget", limit=1, window="day", timezone="Europe/Berlin")
    tz = ZoneInfo("Europe/Berlin")
    start, end, wid = window_bounds(rule, datetime(2030, 11, 1, 23, 30, tzinfo=UTC), tz)
    assert (start, end, wid) == (
        datetime(2030, 11, 2, tzinfo=tz),
        datetime(2030, 11, 3, tzinfo=tz),
        "2030-11-02",
    )
    month = rule.model_copy(update={"window": "month"})
    start, end, _ = window_bounds(month, datetime(2030, 12, 31, 23, 30, tzinfo=UTC), tz)
    assert (start, end) == (datetime(2031, 1, 1, tzinfo=tz), datetime(2031, 2, 1, tzinfo=tz))
    rolling = rule.model_copy(update={"window": "24h"})
    now = datetime(2030, 11, 5, tzinfo=UTC)
    assert window_bounds(rolling, now, tz) == (now - timedelta(hours=24), None, "rolling")


def test_rolling_budget_resolves_when_spend_ages_out(
    tmp_path: Path, db: DB, registry: FakeRegistry, notifier: FakeNotifier
) -> None:
    text = LADDER.replace("window: month", "window: 24h").replace(
        "thresholds: [{at: 10}, {at: 50}, {at: 100}, {at: 500}]", "thresholds: [{at: 10, action: kill}]"
    )
    clock = Clock(NOV)
    engine = _engine(tmp_path, text, db, clock, registry, notifier)
    db.add(clock(), cost_usd=15.0)
    clock.advance(minutes=1)
    assert [t.state for t in engine.evaluate()] == ["firing"]
    assert registry.engaged[0]["expires_at"] is None and registry.engaged[0]["scope"] == {}
    clock.advance(hours=23)
    assert engine.evaluate() == []
    clock.advance(hours=1)
    assert [t.state for t in engine.evaluate()] == ["resolved"]
    assert registry.lifted == ["rule:ladder"]


def test_rolling_per_user_kill_is_lifted_only_when_every_user_is_back_under(
    tmp_path: Path, db: DB, registry: FakeRegistry, notifier: FakeNotifier
) -> None:
    text = TOKENS.replace("window: day", "window: 24h")
    clock = Clock(NOV)
    engine = _engine(tmp_path, text, db, clock, registry, notifier)
    db.add(clock(), user="alice", input_tokens=600_000)
    clock.advance(hours=12)
    db.add(clock(), user="bob", input_tokens=600_000)
    engine.evaluate()
    assert [e["scope"]["user"] for e in registry.engaged] == ["alice", "bob"]
    assert all(e["expires_at"] is None for e in registry.engaged)
    clock.advance(hours=12, seconds=1)  # alice's spend ages out, bob's has not
    assert {(t.scope["user"], t.state) for t in engine.evaluate()} == {("alice", "resolved")}
    assert registry.lifted == []  # one source per rule: lifting now would free bob too
    clock.advance(hours=12)
    assert {(t.scope["user"], t.state) for t in engine.evaluate()} == {("bob", "resolved")}
    assert registry.lifted == ["rule:tokens-per-user"]


def test_sub_cent_amounts_keep_their_digits_in_the_alert(
    tmp_path: Path, db: DB, registry: FakeRegistry, notifier: FakeNotifier
) -> None:
    """Was: "$0.00 crossed the 100% threshold ($0.00) … 1480.0 % of the $0.00 limit"."""
    text = """
channels:
  ops: {url: "json://127.0.0.1:9/hook"}
rules:
  - name: tiny
    kind: budget
    limit: 0.0001
    window: month
    notify: [ops]
"""
    clock = Clock(NOV)
    engine = _engine(tmp_path, text, db, clock, registry, notifier)
    db.add(clock() - timedelta(hours=1), cost_usd=0.00148, app="batch", model="o3")
    engine.evaluate()
    body = notifier.sent[0]["body"]
    assert (
        "$0.00148 crossed the 100% threshold ($0.0001), over by $0.00138; 1480.0 % of the $0.0001 limit"
        in body
    )
    assert "Top models: o3 $0.00148" in body
