"""The engine on the daemon's real parts: Store (writer thread, priced ingest) and KillSwitchRegistry."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from costwatch.daemon.rules import load_rules
from costwatch.daemon.rules.engine import Engine
from costwatch.events import UsageEvent, new_event_id
from costwatch.settings import PriceOverride
from tests.rules.conftest import Clock, FakeNotifier, write_rules

store_module = pytest.importorskip("costwatch.daemon.store")
killswitch = pytest.importorskip("costwatch.daemon.killswitch")
pricing = pytest.importorskip("costwatch.pricing")

UTC = timezone.utc


def _event(ts: float, model: str, user: str, tokens: int) -> UsageEvent:
    return UsageEvent(
        id=new_event_id(ts),
        call_id=new_event_id(ts),
        ts_start=ts,
        ts_end=ts + 0.5,
        provider="openai",
        operation="chat",
        app="chat-api",
        model=model,
        user=user,
        http_status=200,
        input_tokens=tokens,
        output_tokens=tokens,
        usage_source="provider",
        latency_ms=500.0,
    )


def test_budget_kill_and_unpriced_alert_through_the_daemon_store(tmp_path: Path) -> None:
    pricer = pricing.Pricer([PriceOverride(model="house-model", input_per_mtok=1.0, output_per_mtok=2.0)])
    store = store_module.Store(tmp_path / "cw.duckdb", pricer)
    try:
        registry = killswitch.KillSwitchRegistry(store.call, store.read(killswitch.KillSwitchRegistry.load))
        write_rules(
            tmp_path / "alerts",
            "rules.yml",
            """
            channels:
              ops: {url: "json://127.0.0.1:9/x"}
            rules:
              - name: daily-user
                kind: budget
                limit: 2
                window: 24h
                per: user
                thresholds: [{at: 100%, action: kill}]
                notify: [ops]
              - name: unknown-cost
                kind: data_quality
                checks: [unpriced]
                notify: [ops]
            """,
        )
        notifier = FakeNotifier()
        now = time.time()
        engine = Engine(
            load_rules(tmp_path / "alerts", environ={}),
            store.con.cursor,
            registry=registry,
            notifier=notifier,
            now=Clock(datetime.fromtimestamp(now, UTC)),
            write=store.call,
        )
        engine.restore()
        # 1M in + 1M out of house-model = $3 for alice; bob's model has no price.
        store.submit([_event(now - 60, "house-model", "alice", 1_000_000)]).result(10)
        store.submit([_event(now - 30, "mystery-model", "bob", 1000)]).result(10)
        out = engine.evaluate()
        assert sorted((t.rule, t.threshold, t.state) for t in out) == [
            ("daily-user", "100%", "firing"),
            ("unknown-cost", "unpriced", "firing"),
        ]
        [switch] = registry.state().engaged
        assert switch.scope == {"user": "alice"} and switch.source == "rule:daily-user"
        assert "$3.00 crossed the 100% threshold" in notifier.sent[0]["body"]
        rows = store.read(
            lambda c: c.execute("SELECT rule, state FROM alert_events ORDER BY rule").fetchall()
        )
        assert rows == [("daily-user", "firing"), ("unknown-cost", "firing")]
    finally:
        store.close()
