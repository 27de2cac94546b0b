"""Daemon gone: a held slice expires, then calls pass (fail open) or are refused (fail closed)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import costwatch
from costwatch.instrumentation.limits import Limiter, Ticket
from costwatch.settings import ClientSettings
from tests.instrumentation.conftest import HTTP
from tests.limits.harness import rig

RULES = """
rules:
  - {name: cap, kind: budget, limit: 100, window: day, hard: true, lease_ttl: 1s}
"""


class StubEmitter:
    """What the limiter uses of the emitter: settings, flush(), stats()."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings

    def flush(self, timeout: float) -> bool:
        return True

    def stats(self) -> dict[str, int]:
        return {"spooled": 0}


def _admit(limiter: Limiter) -> Any:
    request = HTTP.Request(
        "POST", "http://fake/v1/chat/completions", json={"model": "gpt-4o", "max_tokens": 100, "messages": []}
    )
    call = limiter.prepare("openai", request, None)
    assert call is not None
    outcome = limiter.admit(call)
    while isinstance(outcome, float):
        time.sleep(outcome)
        outcome = limiter.admit(call)
    return outcome


@pytest.mark.parametrize("fail_closed", [False, True], ids=["fail-open", "fail-closed"])
def test_daemon_unreachable(tmp_path: Path, fail_closed: bool) -> None:
    with rig(tmp_path, RULES) as r:
        settings = ClientSettings(
            url=r.daemon.url, token=r.daemon.token, fail_closed=fail_closed, state_dir=tmp_path / "app"
        )
        limiter = Limiter(StubEmitter(settings), "app")
        limiter.start()
        try:
            first = _admit(limiter)
            assert isinstance(first, Ticket) and first.items  # a real reservation on a live lease
            first.settle(None)
            r.daemon.stop()
            time.sleep(1.0)  # past the lease TTL (the client stops using it at 80 %)
            outcome = _admit(limiter)
            if fail_closed:
                assert isinstance(outcome, costwatch.BudgetExhausted)
                assert "unreachable" in str(outcome) and "COSTWATCH_FAIL_CLOSED" in str(outcome)
            else:
                assert isinstance(outcome, Ticket) and not outcome.items
        finally:
            limiter.close(release=False)
