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


def test_state_file_tells_apps_about_hard_limits_before_any_exchange(tmp_path: Path) -> None:
    """The daemon mirrors how many hard limits it enforces; an app reads it at start, no network wait."""
    from costwatch import statefile
    from costwatch.instrumentation.emitter import Emitter

    with rig(tmp_path, RULES) as r:
        path = statefile.path_for(r.daemon.daemon.settings.state_dir, r.daemon.port)
        mirrored = statefile.read(path)
        assert mirrored is not None and mirrored.hard_limits == 1
        assert mirrored.db == str(r.daemon.daemon.settings.db_path)
        # Rules change under a running daemon: the file follows within its refresh period.
        (r.rules_dir / "limits.yml").write_text("rules: []\n")
        deadline = time.monotonic() + 10
        while (statefile.read(path) or mirrored).hard_limits != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert statefile.read(path).hard_limits == 0  # type: ignore[union-attr]

        # An app pointed at a hung daemon (a socket that never answers) that shares the state dir.
        import socket

        hung = socket.socket()
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        port = hung.getsockname()[1]
        try:
            for limits, waits in ((0, False), (2, True)):
                statefile.write(
                    statefile.path_for(tmp_path / "app", port),
                    statefile.DaemonState(hard_limits=limits),
                )
                settings = ClientSettings(url=f"http://127.0.0.1:{port}", state_dir=tmp_path / "app")
                emitter = Emitter(settings)
                assert emitter.hard_limits == limits
                limiter = Limiter(emitter, "app")
                limiter.exchange_wait_s = 0.5
                limiter.start()
                try:
                    assert limiter.active is waits  # no limits: the patch does not even ask
                    if not waits:
                        request = HTTP.Request("POST", "http://fake/v1/chat/completions", json={"model": "m"})
                        assert limiter.prepare("openai", request, None) is None  # nothing to wait for
                        continue
                    started = time.monotonic()
                    first = _admit(limiter)
                    first_s = time.monotonic() - started
                    started = time.monotonic()
                    second = _admit(limiter)
                    second_s = time.monotonic() - started
                    assert isinstance(first, Ticket) and isinstance(second, Ticket)  # fail open
                    assert 0.4 < first_s < 1.0, first_s  # a daemon with hard limits is waited for once
                    assert second_s < 0.05, second_s  # never twice
                finally:
                    limiter.close(release=False, timeout=0.2)
                    emitter.close(0.2)
        finally:
            hung.close()
