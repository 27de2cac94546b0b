"""A budget rule with action `kill`, end to end: a real daemon evaluating rules from a directory,
an alert delivered to a loopback webhook and an SMTP sink through Apprise, a second app process
blocked, and `costwatch resume` letting it through again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_spine import BLOCKED_SCRIPT, cli
from tests.fakes.provider import FakeProvider
from tests.rules.sinks import HTTPSink, SMTPSink, wait_for
from tests.support.processes import DaemonProcess

pytestmark = pytest.mark.slow

RULES = """
channels:
  hook:
    url: "json://127.0.0.1:{hook_port}/alerts"
  mail:
    url: "mailto://user:${{SMTP_PASSWORD}}@127.0.0.1:{smtp_port}?smtp=127.0.0.1&mode=insecure&from=cw@example.com&to=ops@example.com"
rules:
  - name: spender-daily-tokens
    kind: budget
    unit: tokens
    limit: 100
    window: day
    scope: {{app: spender}}
    thresholds:
      - at: 50%
      - at: 100%
        action: kill
    notify: [hook, mail]
"""

SPEND_SCRIPT = """
import sys
import costwatch.autoinstrument
import costwatch, openai
client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="sk-test")
for _ in range(3):  # 34 tokens a call: 102 tokens > the 100-token budget
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
assert costwatch.flush(10)
"""


def test_token_budget_kill_blocks_another_process_until_resume(tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    with HTTPSink() as hook, SMTPSink() as smtp:
        (rules_dir / "budget.yml").write_text(RULES.format(hook_port=hook.port, smtp_port=smtp.port))
        daemon = DaemonProcess(
            tmp_path / "state",
            "--rules",
            str(rules_dir),
            COSTWATCH_EVALUATION_INTERVAL_S="0.2",
            SMTP_PASSWORD="s3cret-pw",
        )
        with daemon, FakeProvider() as fake:
            spend = subprocess.run(
                [sys.executable, "-c", SPEND_SCRIPT, fake.url],
                env=daemon.app_env(app="spender"),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert spend.returncode == 0, spend.stderr

            # The rule engages a kill switch scoped to the app; a second process learns it.
            auth = {"Authorization": f"Bearer {daemon.token}"}

            def engaged() -> list[dict]:
                return httpx.get(daemon.url + "/v1/killswitch", headers=auth, timeout=5).json()["engaged"]

            wait_for(lambda: len(engaged()) == 1, timeout=15)
            switch = engaged()[0]
            assert switch["scope"] == {"app": "spender"}
            assert switch["source"] == "rule:spender-daily-tokens"

            requests_before = fake.count
            blocked = subprocess.run(
                [sys.executable, "-c", BLOCKED_SCRIPT, fake.url, "10"],
                env=daemon.app_env(app="spender"),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert blocked.returncode == 0, blocked.stderr
            assert blocked.stdout.strip().startswith("blocked: ")
            assert "spender-daily-tokens" in blocked.stdout
            assert fake.count == requests_before

            # Both thresholds fired; one message per evaluation names the highest crossed.
            wait_for(lambda: len(hook.posts) >= 1 and len(smtp.messages) >= 1, timeout=15)
            bodies = " ".join(str(p["body"]) for p in hook.posts)
            assert "spender-daily-tokens" in bodies and "100%" in bodies
            assert "costwatch resume --scope app=spender" in bodies
            assert "spender-daily-tokens" in smtp.messages[0]["data"]

            out = cli(daemon, "resume", "--scope", "app=spender")
            assert out.returncode == 0, out.stderr
            wait_for(lambda: engaged() == [], timeout=5)
            allowed = subprocess.run(
                [sys.executable, "-c", BLOCKED_SCRIPT, fake.url, "0.3"],
                env=daemon.app_env(app="spender"),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert allowed.stdout.strip() == "allowed", allowed.stderr
            # The password in the channel URL never reaches the daemon's log.
            assert "s3cret-pw" not in daemon.log.read_text()
