"""Kill switch: engage/lift over HTTP, persistence across restarts, expiry, Alertmanager webhook."""

from __future__ import annotations

import time

import httpx

from tests.daemon.conftest import make_event, post_events


def _client(d) -> httpx.Client:
    return httpx.Client(base_url=d.url, headers={"Authorization": f"Bearer {d.token}"}, timeout=30)


def test_engage_lift_and_state_on_ingest_reply(daemon, client: httpx.Client) -> None:
    v0 = httpx.get(daemon.url + "/v1/killswitch").json()["version"]  # readable without a token
    r = client.post(
        "/v1/killswitch", json={"action": "engage", "scope": {"app": "chatbot"}, "reason": "budget"}
    )
    assert r.status_code == 200
    ks = r.json()["killswitch"]
    assert ks["scope"] == {"app": "chatbot"} and ks["reason"] == "budget" and ks["source"] == "http"
    state = httpx.get(daemon.url + "/v1/killswitch").json()
    assert state["version"] > v0 and [k["id"] for k in state["engaged"]] == [ks["id"]]
    reply = post_events(client, [make_event()]).json()
    assert reply["killswitch"]["engaged"][0]["reason"] == "budget"
    assert 'costwatch_killswitch_engaged{scope="app=chatbot"} 1.0' in client.get("/metrics").text
    # Lifting the global scope does not lift a scoped switch; lifting that scope does.
    assert client.post("/v1/killswitch", json={"action": "lift"}).json()["lifted"] == 0
    r = client.post("/v1/killswitch", json={"action": "lift", "scope": {"app": "chatbot"}})
    assert r.json()["lifted"] == 1 and r.json()["state"]["engaged"] == []
    rows = client.post("/v1/sql", json={"sql": "SELECT lifted_by FROM killswitches"}).json()["rows"]
    assert rows == [["http"]]


def test_bad_requests(client: httpx.Client) -> None:
    bad = [
        {"action": "engage", "scope": {"team": "x"}, "reason": "r"},
        {"action": "engage", "scope": {}, "reason": ""},
        {"action": "engage", "reason": "r", "for_s": -1},
        {"action": "explode"},
    ]
    for body in bad:
        r = client.post("/v1/killswitch", json=body)
        assert r.status_code == 400 and "\n" not in r.json()["error"], body


def test_persists_across_restart_and_lift_all(start_daemon) -> None:
    d = start_daemon()
    with _client(d) as c:
        c.post("/v1/killswitch", json={"action": "engage", "reason": "global stop"})
        c.post("/v1/killswitch", json={"action": "engage", "scope": {"model": "gpt-4o"}, "reason": "pricey"})
    d.stop()
    d2 = start_daemon()
    state = httpx.get(d2.url + "/v1/killswitch").json()
    assert sorted(k["reason"] for k in state["engaged"]) == ["global stop", "pricey"]
    with _client(d2) as c:
        assert c.post("/v1/killswitch", json={"action": "lift", "all": True}).json()["lifted"] == 2
    d2.stop()
    d3 = start_daemon()
    assert httpx.get(d3.url + "/v1/killswitch").json()["engaged"] == []


def test_expiry(daemon, client: httpx.Client) -> None:
    client.post("/v1/killswitch", json={"action": "engage", "reason": "short", "for_s": 0.3})
    assert len(httpx.get(daemon.url + "/v1/killswitch").json()["engaged"]) == 1
    time.sleep(0.5)
    assert httpx.get(daemon.url + "/v1/killswitch").json()["engaged"] == []
    deadline = time.monotonic() + 5  # the expiry is recorded off the request path
    while True:
        rows = client.post("/v1/sql", json={"sql": "SELECT lifted_by FROM killswitches"}).json()["rows"]
        if rows == [["expired"]] or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert rows == [["expired"]]


def test_alertmanager_webhook(daemon, client: httpx.Client) -> None:
    alert = {
        "status": "firing",
        "labels": {
            "alertname": "CostwatchSpendHigh",
            "costwatch_scope_app": "batch-jobs",
            "severity": "page",
        },
        "annotations": {"summary": "fleet spend above $500/h"},
        "startsAt": "2026-01-01T00:00:00Z",
        "fingerprint": "abc123",
    }
    payload = {
        "version": "4",
        "status": "firing",
        "receiver": "costwatch",
        "groupKey": "{}:{}",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": [
            alert,
            {**alert, "labels": {"alertname": "Global"}, "fingerprint": "def456", "annotations": {}},
        ],
    }
    assert httpx.post(daemon.url + "/v1/killswitch/alertmanager", json=payload).status_code == 401
    r = client.post("/v1/killswitch/alertmanager", json=payload)
    assert r.status_code == 200 and r.json()["engaged"] == 2
    # Alertmanager repeats notifications: engaging again is idempotent.
    client.post("/v1/killswitch/alertmanager", json=payload)
    engaged = httpx.get(daemon.url + "/v1/killswitch").json()["engaged"]
    assert len(engaged) == 2
    scoped = next(k for k in engaged if k["scope"])
    assert scoped["scope"] == {"app": "batch-jobs"} and scoped["reason"] == "fleet spend above $500/h"
    assert scoped["source"] == "alertmanager:abc123"
    resolved = {**payload, "status": "resolved", "alerts": [{**alert, "status": "resolved"}]}
    assert client.post("/v1/killswitch/alertmanager", json=resolved).json()["lifted"] == 1
    left = httpx.get(daemon.url + "/v1/killswitch").json()["engaged"]
    assert [k["scope"] for k in left] == [{}]
    assert client.post("/v1/killswitch/alertmanager", json={"nope": 1}).status_code == 400


def test_registry_api_for_rules(daemon) -> None:
    """What the rules engine calls in-process: engage by source, lift_by_source."""
    registry = daemon.daemon.killswitches
    ks = registry.engage({"user": "u1"}, "user budget", "rule:user-daily")
    assert registry.engage({"user": "u1"}, "again", "rule:user-daily").id == ks.id
    assert registry.state().engaged[0].matches("any-app", "openai", "gpt-4o", "u1")
    assert registry.lift_by_source("rule:user-daily") == 1
    assert registry.state().engaged == []
