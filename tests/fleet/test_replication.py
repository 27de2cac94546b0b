"""Ledger replication into a real PostgreSQL: complete, idempotent, resumable, and never in the way.

One server for the module; each test uses its own daemon (its own DuckDB) and node name.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from costwatch.daemon.fleet import FleetService
from costwatch.daemon.server import RunningDaemon, build_daemon, start_in_thread
from costwatch.settings import DaemonSettings
from tests.daemon.conftest import make_event, post_events
from tests.support.postgres import PostgresServer


def _wait(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _ledger(pg: PostgresServer, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


class Node:
    """A daemon in this process with fleet mode on, and an HTTP client for it."""

    def __init__(self, pg: PostgresServer, state: Path, name: str, **extra: Any) -> None:
        self.pg, self.state, self.name, self.extra = pg, state, name, extra
        self.running: RunningDaemon | None = None
        self.client: httpx.Client | None = None

    def start(self) -> Node:
        settings = DaemonSettings(
            state_dir=self.state,
            port=0,
            fleet_dsn=self.pg.dsn,
            node=self.name,
            fleet_interval_s=0.05,
            fleet_poll_s=0.5,
            fleet_connect_timeout_s=1,
            **self.extra,
        )
        self.running = start_in_thread(build_daemon(settings, rules=False, leases=False, spend_page=False))
        self.client = httpx.Client(
            base_url=self.running.url, headers={"Authorization": f"Bearer {self.running.token}"}, timeout=30
        )
        return self

    @property
    def fleet(self) -> FleetService:
        assert self.running is not None
        return self.running.daemon.fleet

    def post(self, n: int, **fields: Any) -> list[str]:
        assert self.client is not None
        events = [
            make_event(app=f"app-{i % 3}", input_tokens=100, output_tokens=10, **fields) for i in range(n)
        ]
        reply = post_events(self.client, events)
        assert reply.status_code == 200, reply.text
        return [e.id for e in events]

    def replicated(self) -> int:
        return _ledger(self.pg, "SELECT count(*) FROM costwatch.usage_events WHERE node = %s", [self.name])[
            0
        ][0]

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.running is not None:
            self.running.stop()
            self.running = None


@pytest.fixture
def node(postgres: PostgresServer, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Node]:
    n = Node(postgres, tmp_path / "state", request.node.name[:40]).start()
    try:
        yield n
    finally:
        n.stop()


def test_events_reach_the_ledger_once_with_their_node(node: Node, postgres: PostgresServer) -> None:
    ids = node.post(250)
    _wait(lambda: node.replicated() == 250, what="250 rows in the ledger")
    rows = _ledger(
        postgres,
        "SELECT id, node, app, input_tokens, tags, ts_start, seq FROM costwatch.usage_events WHERE node = %s",
        [node.name],
    )
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert {r[1] for r in rows} == {node.name}
    assert {r[2] for r in rows} == {"app-0", "app-1", "app-2"}
    assert all(r[3] == 100 and r[4] == {} for r in rows)
    # The partition of this month holds them; the next month's exists ahead of time.
    month = rows[0][5]
    parts = {
        r[0] for r in _ledger(postgres, "SELECT relname FROM pg_class WHERE relname LIKE 'usage_events_2%%'")
    }
    assert f"usage_events_{month.year:04d}_{month.month:02d}" in parts
    # The watermark is persisted in DuckDB, keyed by the ledger's id.
    assert node.running is not None
    wm = node.running.daemon.store.read(
        lambda c: c.execute("SELECT ledger, seq FROM fleet_watermarks").fetchall()
    )
    assert wm == [(node.fleet.ledger_id, max(r[6] for r in rows))]
    # Status and metrics say it is caught up.
    assert node.client is not None
    status = node.client.get("/v1/status").json()["fleet"]
    assert status["node"] == node.name
    assert status["replication"]["connected"] is True
    assert status["replication"]["lag_events"] == 0
    metrics = node.client.get("/metrics").text
    assert "costwatch_fleet_replication_lag_events 0.0" in metrics
    assert "costwatch_fleet_replicated_events_total 250.0" in metrics
    nodes = _ledger(postgres, "SELECT last_seq, events FROM costwatch.nodes WHERE node = %s", [node.name])
    assert nodes == [(max(r[6] for r in rows), 250)]


def test_resending_from_an_old_watermark_duplicates_nothing(node: Node) -> None:
    node.post(100)
    _wait(lambda: node.replicated() == 100, what="100 rows")
    # As after a crash between the Postgres commit and the watermark write: ship everything again.
    assert node.running is not None
    node.running.daemon.store.call(lambda c: c.execute("UPDATE fleet_watermarks SET seq = 0"))
    node.fleet.replicator.status.watermark = 0
    node.fleet.replicator.kick()
    node.post(5)
    _wait(
        lambda: node.fleet.replicator.measure_lag().lag_events == 0 and node.replicated() == 105,
        what="catch-up",
    )
    time.sleep(0.3)
    assert node.replicated() == 105


def test_postgres_down_then_restarted_loses_and_duplicates_nothing(
    node: Node, postgres: PostgresServer
) -> None:
    node.post(50)
    _wait(lambda: node.replicated() == 50, what="first rows")
    postgres.stop("immediate")  # a crash
    try:
        # DuckDB keeps serving: ingest, SQL, status, all while the ledger is gone.
        started = time.perf_counter()
        for _ in range(4):
            node.post(50)
        ingest_s = time.perf_counter() - started
        assert node.client is not None
        local = node.client.post("/v1/sql", json={"sql": "SELECT count(*) FROM usage_events"}).json()
        assert local["rows"] == [[250]]
        status = _wait(
            lambda: (
                (s := node.client.get("/v1/status").json()["fleet"]["replication"])["connected"] is False
                and s
            ),  # type: ignore[union-attr]
            what="replication to notice the outage",
        )
        _wait(lambda: node.fleet.replicator.measure_lag().lag_events == 200, what="lag of 200 events")
        assert status["last_error"]
        assert ingest_s < 5, ingest_s
        # Fleet writes and queries say the ledger is gone, and nothing changes locally.
        reply = node.client.post("/v1/killswitch?fleet=1", json={"action": "engage", "reason": "x"})
        assert reply.status_code == 503, reply.text
        assert "fleet ledger did not take it" in reply.json()["error"]
        assert node.client.get("/v1/killswitch").json()["engaged"] == []
        reply = node.client.post("/v1/sql?fleet=1", json={"sql": "SELECT 1"})
        assert reply.status_code == 400 and "did not answer" in reply.json()["error"], reply.text
    finally:
        postgres.start()
    _wait(lambda: node.replicated() == 250, timeout=30, what="catch-up after the restart")
    _wait(lambda: node.fleet.replicator.measure_lag().lag_events == 0, what="lag back to 0")
    dupes = _ledger(postgres, "SELECT count(*) - count(DISTINCT id) FROM costwatch.usage_events")
    assert dupes == [(0,)]


def test_a_slow_ledger_holds_only_replication(node: Node, postgres: PostgresServer) -> None:
    node.post(20)
    _wait(lambda: node.replicated() == 20, what="first rows")
    with psycopg.connect(postgres.dsn) as blocker:
        # Writes to the ledger wait behind this lock, as behind a slow or overloaded server.
        blocker.execute("LOCK TABLE costwatch.usage_events IN EXCLUSIVE MODE")
        started = time.perf_counter()
        for _ in range(5):
            node.post(40)
        assert time.perf_counter() - started < 5
        time.sleep(1.0)
        # The batch in flight is not acknowledged: the lag shows it, in status and /metrics alike.
        assert node.client is not None
        assert node.client.get("/v1/status").json()["fleet"]["replication"]["lag_events"] == 200
        assert "costwatch_fleet_replication_lag_events 200.0" in node.client.get("/metrics").text
        blocker.rollback()
    _wait(lambda: node.replicated() == 220, timeout=30, what="the blocked batch to land")
    _wait(lambda: node.fleet.replicator.measure_lag().lag_events == 0, what="lag back to 0")


def test_every_column_arrives_unchanged(node: Node, postgres: PostgresServer) -> None:
    """Awkward text (quotes, commas, newlines, empty vs NULL), tags, floats and timestamps survive COPY."""
    from costwatch.daemon.fleet.schema import LEDGER_COLUMNS

    assert node.client is not None
    events = [
        make_event(
            user='a,"b"\nc\\d',
            tags={"team": 'x "y", z', "empty": ""},
            input_tokens=123,
            output_tokens=45,
            latency_ms=0.1 + 0.2,
            request_model="",
            trace_id=None,
        ),
        make_event(model="no-such-model", input_tokens=1, output_tokens=1),  # unpriced: cost NULL
    ]
    assert post_events(node.client, events).status_code == 200
    _wait(lambda: node.replicated() == 2, what="2 rows")
    columns = [c for c in LEDGER_COLUMNS if c != "node"]
    select = ", ".join('"user"' if c == "user" else c for c in columns)
    assert node.running is not None
    local = node.running.daemon.store.read(
        lambda cur: cur.execute(f"SELECT {select} FROM usage_events").fetchall()
    )
    remote = _ledger(postgres, f"SELECT {select} FROM costwatch.usage_events WHERE node = %s", [node.name])
    # Sorted here: the server's collation may order ids differently from DuckDB's byte order.
    local, remote = sorted(local, key=lambda r: r[0]), sorted(remote, key=lambda r: r[0])
    assert [r[0] for r in local] == sorted(e.id for e in events)
    assert len(local) == len(remote) == 2
    for lrow, rrow in zip(local, remote, strict=True):
        for name, lv, rv in zip(columns, lrow, rrow, strict=True):
            assert lv == rv, (name, lv, rv)
    by_id = {r[0]: r for r in remote}
    awkward, unpriced = by_id[events[0].id], by_id[events[1].id]
    assert awkward[columns.index("user")] == 'a,"b"\nc\\d'
    assert awkward[columns.index("request_model")] == ""
    assert awkward[columns.index("trace_id")] is None
    assert awkward[columns.index("tags")] == {"team": 'x "y", z', "empty": ""}
    assert unpriced[columns.index("cost_usd")] is None
