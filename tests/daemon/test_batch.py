"""The ingest path's columnar batch and the writer around it: same rows, same dedupe, bounded WAL."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import msgspec
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from costwatch.daemon import store as store_mod
from costwatch.daemon.batch import (
    _timestamps,
    distinct_ids,
    events_table,
    id_ranges,
    priced_table,
    range_bounds,
    with_ingested_at,
)
from costwatch.daemon.store import Store
from costwatch.events import EVENT_FIELDS, new_event_id
from costwatch.pricing import Pricer
from tests.daemon.conftest import make_event


def _every_field(**overrides: object):
    now = time.time()
    values = dict(
        call_id="call-7", provider="anthropic", operation="messages", host="h1", pid=4242,
        server_address="api.anthropic.com", request_model="claude-sonnet-4", response_model="claude-sonnet-4-20250514",
        model="claude-sonnet-4-20250514", stream=True, http_status=200, error_class=None, input_tokens=20_000,
        output_tokens=1_000, cached_input_tokens=8_000, cache_write_tokens=2_000, reasoning_tokens=300,
        usage_source="provider", latency_ms=812.5, ttft_ms=120.25, retry_attempt=2, user="u-1",
        tags={"team": "core", "feature": "search"}, trace_id="0af7651916cd43dd8448eb211c80319c",
        span_id="b7ad6b7169203331", blocked=False, block_reason=None, ratelimit_remaining_requests=99,
        ratelimit_remaining_tokens=9_000, ratelimit_limit_requests=100, ratelimit_limit_tokens=10_000,
        service_tier="standard", speed="fast", inference_geo="us", cache_write_5m_tokens=500,
        cache_write_1h_tokens=1_500, provider_cost_usd=0.25, ts=now,
    )  # fmt: skip
    values.update(overrides)
    return make_event(**values)


def test_every_field_is_set_in_the_fixture() -> None:
    event = _every_field(error_class="rate_limit", block_reason="budget", blocked=True)
    unset = [f for f in EVENT_FIELDS if getattr(event, f) in (None, {}) and f != "schema_version"]
    assert unset == []


def test_priced_batch_is_the_table_the_writer_built_before() -> None:
    """Event columns, then the prices appended one by one, then ``ingested_at``: the old construction."""
    pricer = Pricer()
    events = [
        _every_field(),
        _every_field(error_class="rate_limit", block_reason="budget", blocked=True, usage_source="estimated"),
        make_event(),  # defaults: NULL tokens, no tags
        make_event(model="no-such-model", input_tokens=5, output_tokens=1),
        make_event(model="", response_model="gpt-4o-mini", input_tokens=10, output_tokens=1),
    ]
    at = 1_767_225_600.123456
    old = events_table(events)
    for name, column in pricer.price_table(old).items():
        old = old.append_column(name, column)
    old = old.append_column("ingested_at", _timestamps([at] * len(events)))
    new = with_ingested_at(priced_table(events, pricer), at)
    assert new.schema == old.schema
    assert new.equals(old)


def test_every_field_round_trips_through_the_store(tmp_path: Path) -> None:
    event = _every_field(error_class="rate_limit", block_reason="budget", blocked=True)
    store = Store(tmp_path / "r.duckdb", Pricer())
    try:
        assert store.submit([event]).result(10).accepted == 1
        row = store.read(
            lambda cur: cur.sql(f"SELECT {', '.join(EVENT_FIELDS)} FROM usage_events").to_arrow_table()
        ).to_pylist()[0]
    finally:
        store.close()
    expected = msgspec.structs.asdict(event)
    for name in ("ts_start", "ts_end"):
        assert abs(row.pop(name).timestamp() - expected.pop(name)) < 1e-6
    row["tags"] = dict(row["tags"])
    assert row == expected


def test_dedupe_across_batches_within_one_and_across_merged_requests(tmp_path: Path) -> None:
    store = Store(tmp_path / "d.duckdb", Pricer())
    try:
        first = [make_event() for _ in range(5)]
        assert store.submit(first).result(10) == store_mod.IngestResult(5, 0)
        fresh = make_event()
        again = store.submit([first[0], fresh, first[3], fresh]).result(10)
        assert again == store_mod.IngestResult(1, 3)  # two stored copies and one repeat in the batch
        # Requests queued while the writer is busy are merged into one commit: the second
        # request's copy of the first's event is a duplicate there too.
        gate = threading.Event()
        blocker = threading.Thread(target=store.call, args=(lambda cur: gate.wait(5),))
        blocker.start()
        shared, only_b = make_event(), make_event()
        a = store.submit([shared, make_event()])
        b = store.submit([only_b, shared, first[1]])
        gate.set()
        blocker.join()
        assert a.result(10) == store_mod.IngestResult(2, 0)
        assert b.result(10) == store_mod.IngestResult(1, 2)
        rows = store.read(
            lambda cur: cur.execute("SELECT count(*), count(DISTINCT id) FROM usage_events").fetchone()
        )
        assert rows == (9, 9)
    finally:
        store.close()


def test_metrics_count_only_what_was_stored(tmp_path: Path) -> None:
    seen: list[int] = []
    store = Store(
        tmp_path / "m.duckdb", Pricer(), on_commit=lambda table, seconds: seen.append(table.num_rows)
    )
    try:
        event = make_event()
        store.submit([event, make_event()]).result(10)
        store.submit([event]).result(10)  # a duplicate alone: nothing stored
    finally:
        store.close()
    assert seen == [2, 0]


def _wal(path: Path) -> int:
    wal = Path(str(path) + ".wal")
    return wal.stat().st_size if wal.exists() else 0


def test_writer_checkpoints_every_checkpoint_rows_without_a_pause(tmp_path: Path, monkeypatch) -> None:
    """The rows committed since the last checkpoint stay bounded under non-stop ingest."""
    monkeypatch.setattr(store_mod, "IDLE_CHECKPOINT_S", 3600.0)  # no idle checkpoint in this test
    path = tmp_path / "c.duckdb"
    store = Store(path, Pricer(), checkpoint_rows=1_000)
    try:
        assert store.submit([make_event() for _ in range(600)]).result(10).accepted == 600
        assert _wal(path) > 0  # under the threshold: still in the WAL
        assert store.submit([make_event() for _ in range(600)]).result(10).accepted == 600
        deadline = time.monotonic() + 10  # the checkpoint runs right after the acknowledgement
        while _wal(path) > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _wal(path) == 0
        assert store.submit([make_event()]).result(10).accepted == 1
        count = store.read(lambda cur: cur.execute("SELECT count(*) FROM usage_events").fetchone()[0])
        assert count == 1_201
    finally:
        store.close()


def test_default_checkpoint_threshold_is_applied(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.duckdb", Pricer())
    try:
        assert store.checkpoint_rows == store_mod.CHECKPOINT_ROWS
    finally:
        store.close()


def test_a_batch_that_cannot_be_built_is_refused_not_queued(tmp_path: Path) -> None:
    class Broken(Pricer):
        def price_table(self, table: pa.Table) -> dict[str, pa.Array]:
            raise ValueError("no prices today")

    store = Store(tmp_path / "b.duckdb", Broken())
    try:
        future = store.submit([make_event()])
        try:
            future.result(5)
        except ValueError as exc:
            assert "no prices today" in str(exc)
        else:
            raise AssertionError("the submit should have failed")
        assert store.pending_events == 0
    finally:
        store.close()


_ids = st.one_of(
    st.builds(
        lambda ago: new_event_id(1_767_225_600 - ago), st.sampled_from([0, 0.5, 60, 700, 3600, 86_400 * 30])
    ),
    st.sampled_from(["a-client-id", "zz", "0190abcd-not-a-uuid", "zzzzzzzz-0000-7000-8000-000000000000"]),
    st.text("0123456789abcdef-7", min_size=1, max_size=40),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_ids, max_size=60))
def test_range_bounds_give_the_same_ranges_as_every_id(ids: list[str]) -> None:
    distinct = distinct_ids(pa.array(ids, pa.string()))
    every = sorted(set(ids))
    assert distinct.to_pylist() == every
    assert id_ranges(range_bounds(distinct)) == id_ranges(every)


def test_a_small_commit_waits_briefly_for_more_requests(tmp_path: Path, monkeypatch) -> None:
    """Each commit has a fixed cost, so requests arriving within the linger share one commit."""
    monkeypatch.setattr(store_mod, "MERGE_LINGER_S", 1.0)  # long enough to be certain in a test
    commits: list[int] = []
    store = Store(
        tmp_path / "l.duckdb", Pricer(), on_commit=lambda table, seconds: commits.append(table.num_rows)
    )
    try:
        first = store.submit([make_event() for _ in range(3)])
        second = store.submit([make_event() for _ in range(2)])
        assert (first.result(10).accepted, second.result(10).accepted) == (3, 2)
        assert commits == [5]
        big = store.submit([make_event() for _ in range(store_mod._MERGE_TARGET_EVENTS)])
        assert big.result(10).accepted == store_mod._MERGE_TARGET_EVENTS  # large enough: no wait
        assert commits == [5, store_mod._MERGE_TARGET_EVENTS]
    finally:
        store.close()
