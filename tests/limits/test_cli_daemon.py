"""`costwatch daemon` as users run it serves the lease routes and enforces hard limits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.provider import FakeProvider
from tests.support.processes import ROOT, DaemonProcess

pytestmark = pytest.mark.slow

RULES = """
rules:
  - {name: tiny, kind: budget, limit: 0.000001, window: day, hard: true}
  - {name: two-a-minute, kind: rate_limit, requests: 2, scope: {app: limited}}
"""


def test_the_cli_daemon_enforces_hard_limits(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "limits.yml").write_text(RULES)
    with FakeProvider() as fake, DaemonProcess(tmp_path / "state", "--rules", str(rules)) as daemon:
        with daemon.client() as c:
            assert c.post("/v1/leases", json={"holder": "probe"}).status_code == 200
        cfg = {"base_url": fake.openai_url, "threads": 1, "calls": 3, "model": "gpt-4o-mini"}
        proc = subprocess.run(
            [sys.executable, "-m", "tests.limits.worker", json.dumps(cfg)],
            cwd=ROOT,
            env=daemon.app_env("limited"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["budget"] == 3 and result["ok"] == 0
        assert fake.count == 0
        rows = daemon.sql(
            "SELECT count(*) AS n FROM usage_events WHERE blocked AND block_reason LIKE '%tiny%'"
        )
        assert rows == [{"n": 3}]
