"""Real deliveries over loopback: email (SMTP sink), JSON webhook, Slack format; a dead channel is counted."""

from __future__ import annotations

import email
import logging
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from apprise.plugins.slack import NotifySlack

from costwatch.daemon.notify import Notifier
from costwatch.daemon.rules import Channel, load_rules
from costwatch.daemon.rules.engine import Engine
from tests.rules.conftest import DB, Clock, FakeRegistry, write_rules
from tests.rules.sinks import HangingListener, HTTPSink, SMTPSink, free_port, wait_for

UTC = timezone.utc
NOW = datetime(2030, 11, 2, 10, 0, tzinfo=UTC)


@pytest.fixture
def slack_on_loopback(monkeypatch: pytest.MonkeyPatch) -> HTTPSink:
    sink = HTTPSink().__enter__()
    monkeypatch.setattr(NotifySlack, "webhook_url", f"http://127.0.0.1:{sink.port}/services")
    monkeypatch.setattr(NotifySlack, "request_rate_per_sec", 0)
    yield sink
    sink.__exit__()


def test_alert_reaches_email_webhook_and_slack_while_dead_channels_are_counted(
    tmp_path: Path, db: DB, slack_on_loopback: HTTPSink, caplog: pytest.LogCaptureFixture
) -> None:
    dead_port = free_port()  # nothing listens here
    with SMTPSink() as smtp, HTTPSink() as hook, HangingListener() as stuck:
        write_rules(
            tmp_path / "alerts",
            "rules.yml",
            f"""
            channels:
              email:
                url: "mailto://alerts:${{SMTP_PASSWORD}}@127.0.0.1:{smtp.port}?smtp=127.0.0.1&mode=insecure&from=costwatch@example.com&to=oncall@example.com"
              hook: {{url: "json://127.0.0.1:{hook.port}/costwatch"}}
              slack: {{url: "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#llm-costs"}}
              down: {{url: "json://user:s3cret-token@127.0.0.1:{dead_port}/x"}}
              stuck: {{url: "json://127.0.0.1:{stuck.port}/x"}}
            rules:
              - name: daily
                kind: budget
                limit: 100
                window: day
                scope: {{app: chat-api}}
                thresholds: [{{at: 100%, action: kill}}]
                notify: [stuck, down, email, hook, slack]
            """,
        )
        ruleset = load_rules(tmp_path / "alerts", environ={"SMTP_PASSWORD": "pw"})
        notifier = Notifier(ruleset.channels, retries=2, retry_wait_s=0.05, timeout_s=1)
        registry = FakeRegistry()
        engine = Engine(ruleset, db.connect, registry=registry, notifier=notifier, now=Clock(NOW))
        db.add(NOW, cost_usd=150.0, app="chat-api", model="gpt-4o", user="alice")
        caplog.set_level(logging.DEBUG)

        started = time.monotonic()
        [fired] = engine.evaluate()
        assert time.monotonic() - started < 1.0  # submitted, not awaited: a stuck channel costs nothing here
        assert registry.engaged[0]["scope"] == {"app": "chat-api"}

        wait_for(lambda: sum(notifier.sent.values()) == 3 and notifier.failed["down"] == 1)
        assert notifier.sent == {"email": 1, "hook": 1, "slack": 1}  # delivered while "stuck" still hangs
        assert notifier.failed["down"] == 1

        mail = smtp.messages[0]
        assert mail["to"] == ["oncall@example.com"]
        parsed = email.message_from_string(mail["data"])
        assert "budget 'daily' crossed 100%" in parsed["Subject"]
        text = next(p for p in parsed.walk() if p.get_content_type() == "text/plain")
        assert "Lift it with: costwatch resume --scope app=chat-api" in text.get_payload(decode=True).decode()

        post = hook.posts[0]
        assert post["path"] == "/costwatch"
        assert post["body"]["title"] == fired.title and post["body"]["type"] == "failure"
        assert "$150.00 crossed the 100% threshold ($100.00), over by $50.00" in post["body"]["message"]
        assert "Top users: alice $150.00" in post["body"]["message"]

        slack = slack_on_loopback.posts[0]
        assert slack["path"] == "/services/T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ"
        assert "budget 'daily' crossed 100%" in str(slack["body"])

        wait_for(lambda: notifier.failed["stuck"] == 1, timeout=30)
        notifier.close()
    assert "s3cret-token" not in caplog.text
    assert "channel 'down'" in caplog.text


def test_unknown_channel_is_counted_not_raised() -> None:
    notifier = Notifier({"bad": Channel(url="nosuchscheme://x")})
    try:
        assert notifier.channel_names == []
        assert notifier.send(["bad", "missing"], "t", "b") == []
        assert notifier.failed == {"bad": 1, "missing": 1}
    finally:
        notifier.close()
