"""The lease exchange between the app's limits thread and the daemon: one set of messages, and
an app with nothing to enforce that does not ask every second but still learns of new limits."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from costwatch.daemon import leases
from costwatch.daemon.leases import LeaseService
from costwatch.daemon.rules import load_rules
from costwatch.instrumentation.limits import Limiter, Ticket, exchange
from costwatch.protocol import LeaseReply, LeaseRequest
from costwatch.settings import ClientSettings
from tests.fakes.provider import FakeProvider
from tests.instrumentation.conftest import HTTP
from tests.limits.harness import rig
from tests.limits.test_unreachable import StubEmitter
from tests.support.processes import DaemonProcess

BUDGET = """
rules:
  - {name: cap, kind: budget, limit: 10, window: day, hard: true}
  - {name: rpm, kind: rate_limit, requests: 100, tokens: 100000, per: user, window: 1h}
"""
STEP_S = 360  # the rate limit's sub-window: a tenth of its window


def _request(user: str = "alice") -> Any:
    body = {
        "model": "gpt-4o",
        "max_tokens": 100,
        "user": user,
        "messages": [{"role": "user", "content": "hi"}],
    }
    return HTTP.Request("POST", "http://fake/v1/chat/completions", json=body)


def test_messages_round_trip_between_the_app_and_the_daemon(tmp_path: Path) -> None:
    """What the app encodes decodes on the daemon's side to the same values, and back."""
    (tmp_path / "r.yml").write_text(BUDGET)
    ruleset = load_rules(tmp_path)
    service = LeaseService(lambda: ruleset, lambda *_: {}, lambda provider, model: [2.5e-6, 1e-5, 0.0])
    limiter = Limiter(StubEmitter(ClientSettings(url="http://127.0.0.1:9", state_dir=tmp_path)), "app")
    seen: list[tuple[LeaseRequest, LeaseReply]] = []

    def post(request: LeaseRequest, timeout: float | None = None) -> LeaseReply:
        received = leases._request_decoder.decode(msgspec.json.encode(request))
        assert received == request
        reply = service.exchange(received)
        decoded = exchange._reply_decoder.decode(msgspec.json.encode(reply))
        assert decoded == reply
        seen.append((request, reply))
        return decoded

    limiter._post = post  # type: ignore[method-assign]
    limiter.start = lambda: None  # type: ignore[method-assign]  # no limits thread: the test exchanges
    limiter.exchange_wait_s = 60.0  # a loaded machine must not turn a wait into a refusal here
    call = limiter.prepare("openai", _request(), None)
    assert call is not None
    outcome = limiter.admit(call)
    left = STEP_S - time.time() % STEP_S
    if left < 2:  # no slice is used in a sub-window's last 0.1 s (calls wait for the next): skip it
        time.sleep(left + 0.05)
    for _ in range(5):  # the limits, the price, then the slices: one exchange each
        if not isinstance(outcome, float):
            break
        limiter._exchange()
        outcome = limiter.admit(call)
    assert isinstance(outcome, Ticket) and len(outcome.items) == 3  # the budget, requests and tokens
    outcome.settle(None)
    limiter._exchange()
    limiter._release(1.0)
    requests = [request for request, _ in seen]
    assert any(r.models == ["openai:gpt-4o"] for r in requests)
    slices = {s.limit: s for s in requests[-2].slices}
    assert set(slices) == {"cap", "rpm/requests", "rpm/tokens"}
    assert slices["rpm/requests"].group == "user=alice" and slices["rpm/requests"].consumed == 1.0
    assert slices["cap"].lease > 0 and slices["cap"].granted > 0 and slices["cap"].spare >= 0
    assert requests[-1].release and requests[-1].holder == limiter.holder
    replies = [reply for _, reply in seen]
    assert {lim.id for lim in replies[0].limits} == {"cap", "rpm/requests", "rpm/tokens"}
    assert any(r.prices == {"openai:gpt-4o": [2.5e-6, 1e-5, 0.0]} for r in replies)
    assert {g.limit for g in replies[-2].grants} == set(slices)
    assert limiter._exchanged and service.outstanding("cap", "global") == 0  # released
    limiter.close(release=False)


def test_no_limits_means_no_exchange_every_second_until_the_daemon_announces_some(tmp_path: Path) -> None:
    """No hard limit: one exchange, then quiet; a hard budget added to the rules is enforced soon after."""
    with rig(tmp_path, "rules: []\n") as r:
        settings = ClientSettings(
            url=r.daemon.url, token=r.daemon.token, state_dir=r.daemon.daemon.settings.state_dir
        )
        limiter = Limiter(StubEmitter(settings), "app")
        limiter.start()
        try:
            deadline = time.monotonic() + 10
            while limiter.counters["exchanges"] < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(2.5)
            assert limiter.counters["exchanges"] == 1 and not limiter.active  # it used to ask every second
            assert limiter.prepare("openai", _request(), None) is None
            (r.rules_dir / "limits.yml").write_text(BUDGET)
            deadline = time.monotonic() + 20  # the fallback poll alone would take 30 s
            while not limiter.active and time.monotonic() < deadline:
                time.sleep(0.05)
            assert limiter.active
            call = limiter.prepare("openai", _request(), None)
            assert call is not None
            outcome = limiter.admit(call)
            while isinstance(outcome, float):
                time.sleep(outcome)
                outcome = limiter.admit(call)
            assert isinstance(outcome, Ticket) and len(outcome.items) == 3
        finally:
            limiter.close()


APP = """
import json, sys, time
import costwatch.autoinstrument  # noqa: F401
import costwatch, openai

client = openai.OpenAI(base_url=sys.argv[1], api_key="sk-test", max_retries=0)

def call():
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=16
    )

call()
print("ready", flush=True)
sys.stdin.readline()  # the rules were reloaded
start, outcome, calls = time.monotonic(), "ok", 0
while time.monotonic() - start < 60:
    try:
        call()
        calls += 1
    except costwatch.BudgetExhausted:
        outcome = "budget"
        break
    time.sleep(0.1)
print(json.dumps({"outcome": outcome, "after_s": time.monotonic() - start, "calls": calls}), flush=True)
"""


@pytest.mark.slow
def test_a_hard_budget_added_by_rules_reload_limits_a_running_app(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "budget.yml").write_text("rules:\n  - {name: soft, kind: budget, limit: 100, window: day}\n")
    with FakeProvider() as fake, DaemonProcess(tmp_path / "state", "--rules", str(rules)) as daemon:
        app = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(APP), fake.openai_url],
            env=daemon.app_env("running"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert app.stdout is not None and app.stdin is not None
            assert app.stdout.readline().strip() == "ready", app.stderr.read() if app.stderr else ""
            (rules / "budget.yml").write_text(
                "rules:\n  - {name: tiny, kind: budget, limit: 0.000001, window: day, hard: true}\n"
            )
            out = subprocess.run(
                [sys.executable, "-m", "costwatch.cli", "rules", "reload"],
                env=daemon.env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == 0, out.stderr
            app.stdin.write("go\n")
            app.stdin.flush()
            stdout, stderr = app.communicate(timeout=90)
        finally:
            if app.poll() is None:
                app.kill()
                app.wait(5)
        assert app.returncode == 0, stderr[-2000:]
        result = json.loads(stdout.strip().splitlines()[-1])
        assert result["outcome"] == "budget", result
        assert result["after_s"] < 20, result  # the state file announces it (the fallback poll: 30 s)


def test_a_call_in_a_rate_windows_last_moments_waits_for_the_next_window(tmp_path: Path) -> None:
    """No slice is used in a window's last 0.1 s; a call there waits for the new window instead of
    asking for more of the old one (which piled the whole pool onto one process, then refused)."""
    (tmp_path / "r.yml").write_text(
        "rules:\n  - {name: rps, kind: rate_limit, requests: 100, window: 10s, on_exceed: block}\n"
    )
    ruleset = load_rules(tmp_path)
    service = LeaseService(lambda: ruleset, lambda *_: {}, lambda provider, model: [2.5e-6, 1e-5, 0.0])
    limiter = Limiter(StubEmitter(ClientSettings(url="http://127.0.0.1:9", state_dir=tmp_path)), "app")
    limiter._post = lambda request, timeout=None: service.exchange(request)  # type: ignore[method-assign]
    limiter.start = lambda: None  # type: ignore[method-assign]  # no limits thread: the test exchanges
    limiter.exchange_wait_s = 60.0

    def admitted() -> Ticket:
        call = limiter.prepare("openai", _request(), None)
        assert call is not None
        for _ in range(20):
            outcome = limiter.admit(call)
            if not isinstance(outcome, float):
                break
            limiter._exchange()  # the limits thread's part
            time.sleep(min(outcome, 0.2))
        assert isinstance(outcome, Ticket), outcome
        return outcome

    admitted().settle(None)
    [piece] = limiter._slices.values()
    granted, old_window_end = piece.granted, piece.window_end
    assert piece.window_end - piece.valid_until == pytest.approx(limiter.window_guard_s)
    time.sleep(max(0.0, piece.valid_until - time.monotonic()) + 0.01)  # into the guard band

    call = limiter.prepare("openai", _request(), None)
    assert call is not None
    outcome = limiter.admit(call)
    assert isinstance(outcome, float) and 0 < outcome <= limiter.window_guard_s + 0.01
    assert (piece.need, call.target, piece.granted) == (
        0.0,
        -1,
        granted,
    )  # nothing more asked of the old window
    time.sleep(outcome)
    [(slice_used, _)] = admitted().items
    assert slice_used.window_end > old_window_end  # admitted in the next window
