"""Fleet SQL (read-only) and the fleet kill switch between two daemons sharing one ledger."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.fleet.test_replication import Node, _ledger, _wait
from tests.support.postgres import PostgresServer

READER_SETUP = [
    # What docs/fleet.md tells an operator to run (the reader role of fleet SQL and Grafana).
    "CREATE ROLE costwatch_reader LOGIN",
    "GRANT USAGE ON SCHEMA costwatch TO costwatch_reader",
    "GRANT SELECT ON ALL TABLES IN SCHEMA costwatch TO costwatch_reader",
]


@pytest.fixture(scope="module")
def pair(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, Node]]:
    a = Node(postgres, tmp_path_factory.mktemp("a"), "node-a", sql_timeout_s=1.0).start()
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:  # the schema exists once a daemon started
        for statement in READER_SETUP:
            conn.execute(statement)  # type: ignore[arg-type]
    b = Node(
        postgres,
        tmp_path_factory.mktemp("b"),
        "node-b",
        sql_timeout_s=1.0,
        fleet_sql_dsn=postgres.dsn_for("costwatch_reader"),
    ).start()
    try:
        yield a, b
    finally:
        b.stop()
        a.stop()


def _sql(node: Node, query: str, **body: object) -> tuple[int, dict]:
    assert node.client is not None
    reply = node.client.post("/v1/sql?fleet=1", json={"sql": query, **body})
    return reply.status_code, (
        reply.json() if reply.headers["content-type"].startswith("application/json") else {"text": reply.text}
    )


def test_fleet_sql_sees_every_node(pair: tuple[Node, Node]) -> None:
    a, b = pair
    a.post(30)
    b.post(20)
    _wait(lambda: a.replicated() == 30 and b.replicated() == 20, what="both nodes replicated")
    for node in (a, b):  # on the writer DSN (a) and on the reader role (b): the same answer
        status, body = _sql(
            node, "SELECT node, count(*) AS n FROM costwatch.usage_events GROUP BY node ORDER BY node"
        )
        assert status == 200, body
        assert body["columns"] == ["node", "n"]
        assert body["rows"] == [["node-a", 30], ["node-b", 20]]
        assert body["types"] == ["text", "int8"]
    assert b.client is not None
    csv = b.client.post("/v1/sql?fleet=1", json={"sql": "SELECT 1 AS one, 'x' AS two", "format": "csv"})
    assert csv.text == "one,two\n1,x\n"


@pytest.mark.parametrize(
    "query",
    [
        "DELETE FROM costwatch.usage_events",
        "SELECT 1; DELETE FROM costwatch.usage_events",
        "COMMIT; DELETE FROM costwatch.usage_events",
        "UPDATE costwatch.killswitches SET reason = 'x'",
        "CREATE TABLE costwatch.evil (x int)",
    ],
)
def test_fleet_sql_cannot_write(pair: tuple[Node, Node], query: str, postgres: PostgresServer) -> None:
    for node in pair:
        before = _ledger(postgres, "SELECT count(*) FROM costwatch.usage_events")
        status, body = _sql(node, query)
        assert status == 400, body
        assert _ledger(postgres, "SELECT count(*) FROM costwatch.usage_events") == before
    assert _ledger(postgres, "SELECT to_regclass('costwatch.evil')") == [(None,)]


def test_the_reader_role_itself_cannot_write(postgres: PostgresServer, pair: tuple[Node, Node]) -> None:
    with (
        psycopg.connect(postgres.dsn_for("costwatch_reader"), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("DELETE FROM costwatch.usage_events")


def test_fleet_sql_has_a_time_limit(pair: tuple[Node, Node]) -> None:
    started = time.perf_counter()
    status, body = _sql(pair[0], "SELECT pg_sleep(10)")
    assert status == 400
    assert "time limit" in body["error"]
    assert time.perf_counter() - started < 5


def test_fleet_kill_switch_reaches_the_other_daemon_and_lifts(
    pair: tuple[Node, Node], postgres: PostgresServer
) -> None:
    a, b = pair
    assert a.client is not None and b.client is not None
    reply = a.client.post(
        "/v1/killswitch?fleet=1",
        json={"action": "engage", "scope": {"app": "chat"}, "reason": "fleet budget"},
    )
    assert reply.status_code == 200, reply.text

    def engaged(node: Node) -> list[dict]:
        assert node.client is not None
        return node.client.get("/v1/killswitch").json()["engaged"]

    _wait(lambda: engaged(b), timeout=3, what="node-b to engage")
    (ks,) = engaged(b)
    assert ks["scope"] == {"app": "chat"}
    assert ks["source"].startswith("fleet:")
    assert "fleet budget" in ks["reason"]
    assert len(engaged(a)) == 1
    assert _ledger(postgres, "SELECT count(*) FROM costwatch.killswitches WHERE lifted_at IS NULL") == [(1,)]
    # A local resume does not lift a fleet switch for long: the next sync engages it again.
    b.client.post("/v1/killswitch", json={"action": "lift", "all": True})
    _wait(lambda: engaged(b), timeout=3, what="node-b to re-engage the fleet switch")

    reply = b.client.post("/v1/killswitch?fleet=1", json={"action": "lift", "scope": {"app": "chat"}})
    assert reply.json()["lifted"] == 1
    _wait(lambda: not engaged(a) and not engaged(b), timeout=3, what="both to lift")


def test_fleet_kill_switch_expires(pair: tuple[Node, Node]) -> None:
    a, b = pair
    assert a.client is not None and b.client is not None
    a.client.post("/v1/killswitch?fleet=1", json={"action": "engage", "reason": "short", "for_s": 1})
    _wait(lambda: b.client.get("/v1/killswitch").json()["engaged"], timeout=3, what="engaged")  # type: ignore[union-attr]
    _wait(lambda: not b.client.get("/v1/killswitch").json()["engaged"], timeout=5, what="expired")  # type: ignore[union-attr]


def test_without_fleet_mode_the_fleet_routes_say_so(tmp_path: Path) -> None:
    from costwatch.daemon.server import Daemon, DaemonCore, start_in_thread
    from costwatch.settings import DaemonSettings

    running = start_in_thread(Daemon(DaemonCore(DaemonSettings(state_dir=tmp_path, port=0))))
    try:
        import httpx

        with httpx.Client(base_url=running.url, headers={"Authorization": f"Bearer {running.token}"}) as c:
            reply = c.post("/v1/sql?fleet=1", json={"sql": "SELECT 1"})
            assert reply.status_code == 409
            assert "fleet mode is off" in reply.json()["error"]
            reply = c.post("/v1/killswitch?fleet=1", json={"action": "engage", "reason": "x"})
            assert reply.status_code == 409
            assert "fleet" not in c.get("/v1/status").json()
    finally:
        running.stop()


def test_polling_catches_a_switch_written_without_notify(
    pair: tuple[Node, Node], postgres: PostgresServer
) -> None:
    """A missed notification (here: a row written by hand, no NOTIFY) arrives at the next poll."""
    a, b = pair
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO costwatch.killswitches (scope, reason, source) VALUES ('{\"model\": \"gpt-x\"}', 'by hand', 'sql')"
        )
        # And one a daemon cannot apply (no such scope key): it is skipped, the other is not.
        conn.execute(
            "INSERT INTO costwatch.killswitches (scope, reason, source) VALUES ('{\"planet\": \"mars\"}', 'bad', 'sql')"
        )
    try:
        for node in (a, b):
            assert node.client is not None
            _wait(lambda n=node: n.client.get("/v1/killswitch").json()["engaged"], timeout=3, what="polled")  # type: ignore[misc]
            assert [k["scope"] for k in node.client.get("/v1/killswitch").json()["engaged"]] == [
                {"model": "gpt-x"}
            ]
    finally:
        with psycopg.connect(postgres.dsn, autocommit=True) as conn:
            conn.execute("UPDATE costwatch.killswitches SET lifted_at = now() WHERE lifted_at IS NULL")
    _wait(lambda: not b.client.get("/v1/killswitch").json()["engaged"], timeout=3, what="lifted by the poll")  # type: ignore[union-attr]
