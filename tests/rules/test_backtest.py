"""Backtest: replay over stored history, report firings and what a kill would have blocked."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from costwatch.daemon.rules import load_rules
from costwatch.daemon.rules.backtest import backtest
from tests.rules.conftest import DB, write_rules

UTC = timezone.utc
DAY = datetime(2030, 11, 1, tzinfo=UTC)


def test_backtest_reports_firings_and_blocked_calls(tmp_path: Path, db: DB) -> None:
    for hour in range(24):  # 10 calls of $1 every hour on Nov 1
        db.add(DAY + timedelta(hours=hour), n=10, cost_usd=1.0, app="chat-api")
    db.add(DAY + timedelta(days=1, hours=2), n=7, cost_usd=1.0, app="chat-api")  # after the lift
    db.add(DAY + timedelta(hours=12), n=50, cost_usd=1.0, app="other")  # outside the scope
    write_rules(
        tmp_path / "alerts",
        "rules.yml",
        """
        channels:
          ops: {url: "json://127.0.0.1:9/x"}
        rules:
          - name: daily
            kind: budget
            mode: dry_run
            limit: 100
            window: day
            scope: {app: chat-api}
            thresholds: [{at: 50%}, {at: 100%, action: kill}]
            notify: [ops]
        """,
    )
    ruleset = load_rules(tmp_path / "alerts", environ={})
    report = backtest(ruleset, db.connect, DAY, DAY + timedelta(days=1, hours=6), timedelta(minutes=15))
    assert report.evaluations == 30 * 4 + 1
    assert [(t.ts - DAY, t.threshold, t.state) for t in report.transitions] == [
        (timedelta(hours=4), "50%", "firing"),  # 50 calls by 04:00
        (timedelta(hours=9), "100%", "firing"),
        (timedelta(days=1), "50%", "resolved"),
        (timedelta(days=1), "100%", "resolved"),
    ]
    [kill] = report.kills
    assert kill["scope"] == {"app": "chat-api"} and kill["source"] == "rule:daily"
    assert kill["engaged_at"] == DAY + timedelta(hours=9) and kill["until"] == DAY + timedelta(days=1)
    assert kill["blocked_calls"] == 140  # 10:00 .. 23:00
    assert kill["blocked_cost_usd"] == 140.0
    text = report.format()
    assert "kill rule:daily app=chat-api" in text and "140 calls blocked ($140.00 not spent)" in text
    assert report.to_dict()["kills"][0]["blocked_calls"] == 140
    assert db.alert_rows() == []  # a backtest writes nothing
