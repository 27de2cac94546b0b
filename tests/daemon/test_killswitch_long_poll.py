"""``GET /v1/killswitch?version=V&wait=S``: held until the state changes, and what the emitter makes of it."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from costwatch.instrumentation.emitter import Emitter
from costwatch.settings import ClientSettings


def _state(d, **params: object) -> tuple[dict, float]:
    t0 = time.monotonic()
    r = httpx.get(d.url + "/v1/killswitch", params=params, timeout=30)
    assert r.status_code == 200, r.text
    return r.json(), time.monotonic() - t0


def _engage_later(client: httpx.Client, delay: float, **body: object) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        client.post("/v1/killswitch", json={"action": "engage", "reason": "storm", **body})

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_poll_is_held_until_a_switch_is_engaged(daemon, client: httpx.Client) -> None:
    version = _state(daemon)[0]["version"]
    later = _engage_later(client, 0.5, scope={"app": "chatbot"})
    state, took = _state(daemon, version=version, wait=20)
    later.join()
    assert state["version"] > version and [k["reason"] for k in state["engaged"]] == ["storm"]
    assert 0.4 <= took < 5, took  # answered by the engage, not by the 20 s wait
    # Another version than the current one is answered at once, as a plain GET is.
    assert _state(daemon, version=version, wait=20)[0]["version"] == state["version"]
    # Nothing changes: answered when the wait runs out, with the same state.
    same, took = _state(daemon, version=state["version"], wait=0.3)
    assert same == state and 0.25 <= took < 5


def test_poll_is_answered_when_a_switch_expires(daemon, client: httpx.Client) -> None:
    r = client.post("/v1/killswitch", json={"action": "engage", "reason": "brief", "for_s": 0.5})
    version = r.json()["state"]["version"]
    state, took = _state(daemon, version=version, wait=20)
    assert state["engaged"] == [] and state["version"] > version
    assert took < 5, took


@pytest.mark.parametrize(
    "params", [{"wait": "soon"}, {"version": "x", "wait": 1}, {"wait": 61}, {"wait": -1}]
)
def test_bad_long_poll_parameters(daemon, params: dict) -> None:
    r = httpx.get(daemon.url + "/v1/killswitch", params=params)
    assert r.status_code == 400 and "wait" in r.json()["error"]


def test_shutdown_answers_open_polls(start_daemon) -> None:
    d = start_daemon()
    version = _state(d)[0]["version"]
    answers: list[int] = []
    poll = threading.Thread(
        target=lambda: answers.append(
            httpx.get(
                d.url + "/v1/killswitch", params={"version": version, "wait": 60}, timeout=90
            ).status_code
        )
    )
    poll.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    d.stop()
    stopped = time.monotonic() - t0
    poll.join(5)
    # uvicorn would wait for the request in flight up to its graceful timeout (10 s).
    assert stopped < 5, stopped
    assert answers == [200]


def test_emitter_learns_an_engaged_switch_from_the_long_poll(daemon, client: httpx.Client, tmp_path) -> None:
    # No ingest replies (nothing is sent) and no plain polling for a minute: only the long poll can tell.
    settings = ClientSettings(
        url=daemon.url,
        state_dir=tmp_path / "app",
        token=daemon.token,
        flush_interval_s=10,
        killswitch_poll_s=60,
    )
    emitter = Emitter(settings)
    emitter.start()
    try:
        view = emitter.killswitch
        deadline = time.monotonic() + 5
        while view.version < 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # the long poll is open now
        t0 = time.monotonic()
        client.post("/v1/killswitch", json={"action": "engage", "reason": "storm", "scope": {"app": "x"}})
        while not view.active and time.monotonic() - t0 < 5:
            time.sleep(0.005)
        assert view.active, "the long poll did not bring the engaged switch"
        assert time.monotonic() - t0 < 2
        assert view.blocking("x", "openai", None, None) is not None
        polls = emitter.stats()["polls"]
        time.sleep(0.5)
        assert emitter.stats()["polls"] <= polls + 1  # held, not a busy loop
    finally:
        t_close = time.monotonic()
        emitter.close(2)
        assert time.monotonic() - t_close < 2  # closing ends the open poll at once
