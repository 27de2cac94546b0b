"""POST /v1/events against a real loopback server: costs, dedupe, validation, auth, limits."""

from __future__ import annotations

import socket
import time

import httpx
import msgspec
import pytest

from costwatch.daemon.batch import id_ranges
from costwatch.events import encode_many, new_event_id
from costwatch.settings import PriceOverride
from tests.daemon.conftest import make_event, post_events, sql

# Hand ledger from genai-prices' published rates (USD per million tokens):
#   gpt-4o-mini: input 0.15, cached input 0.075, output 0.60 (no cache-write rate -> input rate)
#   claude-sonnet-4: input 3, cache read 0.30, cache write 3.75, output 15
# A: 10_000 in (4_000 cached), 2_000 out -> (6000*0.15 + 4000*0.075 + 2000*0.6) / 1e6
COST_A = (900 + 300 + 1200) / 1e6  # 0.0024
# B: 20_000 in (8_000 cache read, 2_000 cache write), 1_000 out (300 reasoning)
COST_B = (10_000 * 3 + 8_000 * 0.30 + 2_000 * 3.75 + 1_000 * 15) / 1e6  # 0.0549


def ledger_events() -> list:
    a = make_event(model="gpt-4o-mini", input_tokens=10_000, cached_input_tokens=4_000, output_tokens=2_000)
    b = make_event(
        provider="anthropic",
        operation="messages",
        model="claude-sonnet-4-20250514",
        input_tokens=20_000,
        cached_input_tokens=8_000,
        cache_write_tokens=2_000,
        output_tokens=1_000,
        reasoning_tokens=300,
        app="other-app",
    )
    return [a, b]


def test_tier_cache_lifetime_and_provider_cost_stored(client: httpx.Client) -> None:
    """What the invoice prices lands in its columns, priced at its rates (issue 21)."""
    flex = make_event(model="gpt-5", service_tier="flex", input_tokens=10_000, cached_input_tokens=2_000,
                      output_tokens=1_000)  # fmt: skip
    cache = make_event(provider="anthropic", operation="messages", model="claude-opus-4-8", input_tokens=5_000,
                       cache_write_tokens=3_000, cache_write_5m_tokens=1_000, cache_write_1h_tokens=2_000,
                       output_tokens=100, service_tier="standard", speed="fast", inference_geo="us")  # fmt: skip
    routed = make_event(
        model="gpt-4o-mini", input_tokens=1_000, output_tokens=200, provider_cost_usd=0.000285
    )
    assert post_events(client, [flex, cache, routed]).json()["accepted"] == 3
    rows = {
        row[0]: row[1:]
        for row in sql(
            client,
            "SELECT id, service_tier, speed, inference_geo, cache_write_5m_tokens, cache_write_1h_tokens,"
            " provider_cost_usd, round(cost_usd, 12), round(computed_cost_usd, 12), cost_source, priced"
            " FROM usage_events",
        )
    }
    # gpt-5 flex $0.625 / $0.0625 / $5: 8000*0.625 + 2000*0.0625 + 1000*5 = 10125 uUSD
    assert rows[flex.id] == ["flex", None, None, None, None, None, 0.010125, 0.010125, "computed", True]
    # Opus 4.8 fast x1.1 (US-only): $11 in / $13.75 5m / $22 1h / $55 out:
    # 2000*11 + 1000*13.75 + 2000*22 + 100*55 = 85250 uUSD
    assert rows[cache.id] == [
        "standard",
        "fast",
        "us",
        1_000,
        2_000,
        None,
        0.08525,
        0.08525,
        "computed",
        True,
    ]
    # The router's cost wins; ours beside it: 1000*0.15 + 200*0.6 = 270 uUSD
    assert rows[routed.id] == [None, None, None, None, None, 0.000285, 0.000285, 0.00027, "provider", True]


def test_costs_match_hand_ledger(client: httpx.Client) -> None:
    events = ledger_events() * 1  # two distinct events
    events += [
        make_event(model="gpt-4o-mini", input_tokens=10_000, cached_input_tokens=4_000, output_tokens=2_000)
    ]
    response = post_events(client, events)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == 3 and body["duplicates"] == 0 and body["rejected"] == []
    assert body["killswitch"] == {"engaged": [], "version": body["killswitch"]["version"]}
    rows = sql(
        client,
        "SELECT provider, sum(cost_usd), sum(input_tokens), sum(cached_input_tokens),"
        " sum(cache_write_tokens),"
        " sum(output_tokens), bool_and(priced), any_value(price_source), any_value(price_version)"
        " FROM usage_events GROUP BY 1 ORDER BY 1",
    )
    anthropic, openai = rows
    assert anthropic[1] == pytest.approx(COST_B, rel=1e-12)
    assert openai[1] == pytest.approx(2 * COST_A, rel=1e-12)
    assert anthropic[2:6] == [20_000, 8_000, 2_000, 1_000]
    assert openai[2:6] == [20_000, 8_000, None, 4_000]
    assert openai[6] is True and openai[7] == "genai-prices" and openai[8].startswith("genai-prices 0.")
    split = sql(
        client, "SELECT input_cost_usd, output_cost_usd FROM usage_events WHERE provider = 'anthropic'"
    )
    assert split[0][0] == pytest.approx((30_000 + 2_400 + 7_500) / 1e6)
    assert split[0][1] == pytest.approx(15_000 / 1e6)


def test_unknown_model_and_missing_usage_are_null_never_zero(client: httpx.Client) -> None:
    unknown = make_event(model="totally-new-model-9", input_tokens=100, output_tokens=10)
    missing = make_event(usage_source="missing")
    assert post_events(client, [unknown, missing]).status_code == 200
    rows = sql(
        client, "SELECT model, usage_source, cost_usd, priced, price_source FROM usage_events ORDER BY 2"
    )
    assert rows == [
        ["gpt-4o-mini", "missing", None, False, None],
        ["totally-new-model-9", "provider", None, False, None],
    ]
    text = client.get("/metrics").text
    line = 'costwatch_unpriced_events_total{model="totally-new-model-9",provider="openai"} 1.0'
    assert line in text


def test_price_overrides_win(start_daemon) -> None:
    overrides = [
        PriceOverride(model="in-house-llm", provider="custom", input_per_mtok=2, output_per_mtok=8),
        PriceOverride(model="gpt-4o-mini", input_per_mtok=1, output_per_mtok=4, cached_input_per_mtok=0.5),
    ]
    d = start_daemon(prices=overrides)
    with httpx.Client(base_url=d.url, headers={"Authorization": f"Bearer {d.token}"}) as c:
        events = [
            make_event(
                provider="custom", model="in-house-llm", input_tokens=1_000_000, output_tokens=500_000
            ),
            make_event(model="gpt-4o-mini", input_tokens=1_000, cached_input_tokens=400, output_tokens=100),
        ]
        assert post_events(c, events).status_code == 200
        rows = sql(c, "SELECT model, cost_usd, price_source, price_version FROM usage_events ORDER BY model")
    assert rows[0][0] == "gpt-4o-mini" and rows[0][2:] == ["override", "override"]
    assert rows[0][1] == pytest.approx((600 * 1 + 400 * 0.5 + 100 * 4) / 1e6)
    assert rows[1][0] == "in-house-llm" and rows[1][1] == pytest.approx(2 + 4)


def test_duplicates_are_counted_not_stored(client: httpx.Client) -> None:
    events = ledger_events()
    first = post_events(client, events).json()
    again = post_events(client, [*events, events[0]]).json()
    assert (first["accepted"], first["duplicates"]) == (2, 0)
    assert (again["accepted"], again["duplicates"]) == (0, 3)
    assert sql(client, "SELECT count(*), count(DISTINCT id) FROM usage_events") == [[2, 2]]
    assert "costwatch_ingest_duplicates_total 3.0" in client.get("/metrics").text


def test_a_resend_with_another_ts_start_is_a_duplicate(client: httpx.Client) -> None:
    """Dedupe is by id alone: a copy whose ts_start moved (hours, or a non-UUIDv7 id) is not stored."""
    now = time.time()
    event = make_event(ts=now - 3 * 3600)
    foreign = make_event(id="client-chosen-id-1", ts=now - 60)
    assert post_events(client, [event, foreign]).json()["accepted"] == 2
    moved = msgspec.structs.replace(event, ts_start=now, ts_end=now + 1)
    moved_foreign = msgspec.structs.replace(foreign, ts_start=now - 7200, ts_end=now - 7199)
    fresh = make_event(ts=now)
    again = post_events(client, [moved, fresh, moved_foreign]).json()
    assert (again["accepted"], again["duplicates"]) == (1, 2)
    assert sql(client, "SELECT count(*), count(DISTINCT id) FROM usage_events") == [[3, 3]]


def test_id_ranges_cluster_uuid7_times_and_keep_other_ids_in_one_range() -> None:
    now = time.time()
    live = sorted(new_event_id(now + i / 1000) for i in range(50))
    replayed = sorted(new_event_id(now - 86_400 + i) for i in range(5))
    other = ["a-client-id", "z-client-id"]
    ranges = id_ranges(sorted([*live, *replayed, *other]))
    assert ranges == [(replayed[0], replayed[-1]), (live[0], live[-1]), ("a-client-id", "z-client-id")]
    many = sorted(new_event_id(now - 86_400 * i) for i in range(20))  # capped: never more than 8
    ranges = id_ranges(many)
    assert len(ranges) == 8 and ranges[0][0] == many[0] and ranges[-1][1] == many[-1]
    assert all(any(lo <= i <= hi for lo, hi in ranges) for i in many)


def test_bad_events_rejected_by_index_good_ones_stored(client: httpx.Client) -> None:
    good = make_event(input_tokens=5, output_tokens=5)
    bad_type = encode_many([make_event(input_tokens=5)]).replace(
        b'"input_tokens":5', b'"input_tokens":"five"'
    )
    body = (
        b"["
        + encode_many([good])[1:-1]
        + b","
        + bad_type[1:-1]
        + b',{"id":"no-call-id","ts_start":1,"ts_end":2,"provider":"x","operation":"chat"}'
        + b"]"
    )
    response = client.post("/v1/events", content=body)
    assert response.status_code == 422
    reply = response.json()
    assert reply["accepted"] == 1
    rejected = {r["index"]: r for r in reply["rejected"]}
    assert set(rejected) == {1, 2}
    assert "input_tokens" in rejected[1]["error"]
    assert "call_id" in rejected[2]["error"] and rejected[2]["id"] == "no-call-id"
    assert sql(client, "SELECT id FROM usage_events") == [[good.id]]
    assert "costwatch_ingest_rejected_total 2.0" in client.get("/metrics").text


def test_ts_end_before_start_is_rejected(client: httpx.Client) -> None:
    event = make_event(ts=1_700_000_000.0)
    body = encode_many([event]).replace(b'"ts_end":1700000000.5', b'"ts_end":1600000000.0')
    response = client.post("/v1/events", content=body)
    assert response.status_code == 422
    assert "ts_end" in response.json()["rejected"][0]["error"]


def test_ndjson_by_content_type_and_sniffing(client: httpx.Client) -> None:
    events = [make_event(input_tokens=1, output_tokens=1) for _ in range(3)]
    lines = b"\n".join(encode_many([e])[1:-1] for e in events) + b"\n"
    r1 = client.post("/v1/events", content=lines, headers={"Content-Type": "application/x-ndjson"})
    more = [make_event(input_tokens=1, output_tokens=1) for _ in range(2)]
    r2 = client.post("/v1/events", content=b"\n".join(encode_many([e])[1:-1] for e in more))
    assert (r1.status_code, r1.json()["accepted"]) == (200, 3)
    assert (r2.status_code, r2.json()["accepted"]) == (200, 2)
    bad = client.post("/v1/events", content=b'{"id": 1}\n' + encode_many([make_event()])[1:-1])
    assert bad.status_code == 422 and bad.json()["rejected"][0]["index"] == 0 and bad.json()["accepted"] == 1


def test_not_json_is_one_line_400(client: httpx.Client) -> None:
    response = client.post("/v1/events", content=b"[not json")
    assert response.status_code == 400
    assert "\n" not in response.json()["error"]


@pytest.mark.parametrize("header", [None, "Bearer wrong-token", "Basic abc", "Bearer"])
def test_token_required(daemon, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    events = [make_event(input_tokens=1, output_tokens=1)]
    r = httpx.post(daemon.url + "/v1/events", content=encode_many(events), headers=headers)
    assert r.status_code == 401 and "token" in r.json()["error"]
    for path, body in [("/v1/sql", {"sql": "SELECT 1"}), ("/v1/killswitch", {"action": "lift"})]:
        assert httpx.post(daemon.url + path, json=body, headers=headers).status_code == 401
    good = {"Authorization": f"Bearer {daemon.token}"}
    rows = httpx.post(daemon.url + "/v1/sql", json={"sql": "SELECT count(*) FROM usage_events"}, headers=good)
    assert rows.json()["rows"] == [[0]]


def test_token_file_is_private(daemon, tmp_path) -> None:
    token_file = tmp_path / "token"
    assert token_file.read_text().strip() == daemon.token
    assert token_file.stat().st_mode & 0o777 == 0o600


def test_huge_body_refused_before_it_is_read(start_daemon) -> None:
    d = start_daemon(max_body_bytes=64 * 1024)
    # Announce 10 MB but send only the headers: a 413 must come back without the body.
    with socket.create_connection(("127.0.0.1", d.port), timeout=5) as s:
        s.sendall(
            b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {d.token}\r\nContent-Length: 10000000\r\n\r\n".encode()
        )
        started = time.monotonic()
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert time.monotonic() - started < 2
    # Chunked (no Content-Length): refused by the streaming cap.
    chunks = (b"[" + b" " * 16384 for _ in range(16))
    r = httpx.post(
        d.url + "/v1/events", content=chunks, headers={"Authorization": f"Bearer {d.token}"}, timeout=10
    )
    assert r.status_code == 413 and "max_body_bytes" in r.json()["error"]


def test_too_many_events_is_413(start_daemon) -> None:
    d = start_daemon(max_batch_events=5)
    events = [make_event(input_tokens=1, output_tokens=1) for _ in range(6)]
    r = httpx.post(
        d.url + "/v1/events", content=encode_many(events), headers={"Authorization": f"Bearer {d.token}"}
    )
    assert r.status_code == 413 and "max_batch_events" in r.json()["error"]


def test_client_dropped_header_counts(client: httpx.Client) -> None:
    r = post_events(
        client, [make_event()], headers={"x-costwatch-dropped": "queue_full=7, spool_full=2,junk"}
    )
    assert r.status_code == 200
    text = client.get("/metrics").text
    assert 'costwatch_client_dropped_events_total{reason="queue_full"} 7.0' in text
    assert 'costwatch_client_dropped_events_total{reason="spool_full"} 2.0' in text


def test_concurrent_posts_group_commit(client: httpx.Client, daemon) -> None:
    """Parallel POSTs and SQL reads: every event stored once, reads never fail or go backwards."""
    import concurrent.futures

    batches = [[make_event(input_tokens=10, output_tokens=1) for _ in range(200)] for _ in range(20)]
    headers = {"Authorization": f"Bearer {daemon.token}"}

    def send(batch: list) -> int:
        return httpx.post(daemon.url + "/v1/events", content=encode_many(batch), headers=headers).json()[
            "accepted"
        ]

    def read_counts() -> list[int]:
        with httpx.Client(base_url=daemon.url, headers=headers) as c:
            return [sql(c, "SELECT count(*) FROM usage_events")[0][0] for _ in range(15)]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        reader = pool.submit(read_counts)
        accepted = sum(pool.map(send, batches))
        counts = reader.result()
    assert accepted == 4000
    assert counts == sorted(counts) and all(c % 200 == 0 for c in counts)  # whole requests only
    assert sql(client, "SELECT count(*), sum(input_tokens) FROM usage_events") == [[4000, 40_000]]


def test_healthz(client: httpx.Client, daemon) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "reasons": []}
    daemon.daemon.store.last_error = "disk I/O error"
    r = client.get("/healthz")
    assert r.status_code == 503 and r.json()["status"] == "degraded"
    assert any("disk I/O error" in reason for reason in r.json()["reasons"])


def test_backpressure_503_when_writer_is_behind(client: httpx.Client, daemon) -> None:
    store = daemon.daemon.store
    with store._pending_lock:
        store.pending_events += 10**9
    try:
        r = post_events(client, [make_event()])
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
    finally:
        with store._pending_lock:
            store.pending_events -= 10**9
    assert post_events(client, [make_event()]).status_code == 200
    assert sql(client, "SELECT count(*) FROM usage_events") == [[1]]


def test_tags_user_and_timestamps_round_trip(client: httpx.Client) -> None:
    event = make_event(ts=1_767_225_600.25, tags={"feature": "search", "team": "core"}, user="u-42")
    assert post_events(client, [event, make_event()]).status_code == 200
    rows = sql(
        client,
        "SELECT tags['feature'], \"user\", epoch(ts_start), epoch(ts_end) FROM usage_events"
        " WHERE \"user\" = 'u-42'",
    )
    assert rows == [["search", "u-42", 1_767_225_600.25, 1_767_225_600.75]]
    assert sql(client, "SELECT count(*) FROM usage_events WHERE cardinality(tags) = 0") == [[1]]
