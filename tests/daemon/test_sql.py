"""The read-only SQL path: every escape refused with one line, data intact, limits hold."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from costwatch.daemon.database import open_database
from costwatch.daemon.server import Daemon, DaemonCore, start_in_thread
from costwatch.daemon.sql import QueryError, run_query
from costwatch.settings import DaemonSettings
from tests.daemon.conftest import make_event, post_events, sql

ESCAPES = [
    "DROP TABLE usage_events",
    "DELETE FROM usage_events",
    "UPDATE usage_events SET cost_usd = 0",
    "INSERT INTO killswitches SELECT * FROM killswitches",
    "CREATE TABLE evil AS SELECT 1",
    "CREATE OR REPLACE VIEW spend_by_day AS SELECT 1",
    "COPY usage_events TO '/tmp/costwatch-stolen.csv'",
    "COPY (SELECT * FROM usage_events) TO '/tmp/costwatch-stolen.parquet' (FORMAT parquet)",
    "ATTACH '/tmp/costwatch-evil.duckdb' AS evil",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "SET lock_configuration = false",
    "PRAGMA enable_external_access",
    "CALL pragma_version()",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_parquet('http://127.0.0.1:1/x.parquet')",
    "SELECT * FROM 'https://example.com/data.csv'",
    "SELECT 1; DROP TABLE usage_events",
    "SELECT 1; SELECT 2",
    "WITH x AS (SELECT 1) DELETE FROM usage_events",
    "CHECKPOINT",
    "EXPORT DATABASE '/tmp/costwatch-exported'",
    "DETACH DATABASE costwatch",
    "USE system",
    "VACUUM",
    "BEGIN TRANSACTION",
    "EXPLAIN ANALYZE DELETE FROM usage_events",  # passes the statement check; the READ ONLY txn holds
    "EXPLAIN ANALYZE CREATE TABLE evil AS SELECT 1",
    "SELECT * FROM query('DROP TABLE usage_events')",
    "SELECT * FROM glob('/etc/*')",
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """One daemon with three events for all escape attempts (a restart per case costs ~0.4 s)."""
    d = start_in_thread(Daemon(DaemonCore(DaemonSettings(state_dir=tmp_path_factory.mktemp("sql"), port=0))))
    with httpx.Client(base_url=d.url, headers={"Authorization": f"Bearer {d.token}"}, timeout=30) as c:
        events = [make_event(input_tokens=100, output_tokens=10) for _ in range(3)]
        assert post_events(c, events).status_code == 200
        yield c
    d.stop()


@pytest.mark.parametrize("query", ESCAPES)
def test_escape_refused(shared: httpx.Client, query: str) -> None:
    client = shared
    response = client.post("/v1/sql", json={"sql": query})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error and "\n" not in error
    assert sql(client, "SELECT count(*), sum(input_tokens) FROM usage_events") == [[3, 300]]
    assert sql(client, "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'evil'") == [[0]]
    assert sql(client, "SELECT current_setting('enable_external_access')") == [[False]]


def test_select_forms_allowed(client: httpx.Client) -> None:
    assert post_events(client, [make_event(input_tokens=1, output_tokens=1)]).status_code == 200
    for query in [
        "SELECT count(*) FROM usage_events",
        "WITH t AS (SELECT * FROM usage_events) SELECT count(*) FROM t",
        "FROM spend_by_model",
        "EXPLAIN SELECT * FROM usage_events",
        "DESCRIBE usage_events",
        "SELECT * FROM latency_by_model",
    ]:
        assert client.post("/v1/sql", json={"sql": query}).status_code == 200, query


def test_csv_format(client: httpx.Client) -> None:
    r = client.post("/v1/sql", json={"sql": "SELECT 1 AS a, 'x' AS b", "format": "csv"})
    assert r.status_code == 200 and r.text == "a,b\n1,x\n"


def test_row_cap_and_timeout(start_daemon) -> None:
    d = start_daemon(sql_max_rows=10, sql_timeout_s=0.5)
    with httpx.Client(base_url=d.url, headers={"Authorization": f"Bearer {d.token}"}, timeout=30) as c:
        r = c.post("/v1/sql", json={"sql": "SELECT * FROM range(1000)"}).json()
        assert r["row_count"] == 10 and r["truncated"] is True
        slow = "SELECT count(*) FROM range(100000000000) a WHERE a.range % 7 = 3"
        r2 = c.post("/v1/sql", json={"sql": slow})
        assert r2.status_code == 400 and "time limit" in r2.json()["error"]
        assert c.post("/v1/sql", json={"sql": "SELECT 42"}).json()["rows"] == [[42]]


def test_read_only_file_sandbox(tmp_path) -> None:
    """Without the daemon the CLI opens the file read-only with the same sandbox."""
    path = tmp_path / "x.duckdb"
    open_database(path).close()
    con = open_database(path, read_only=True)
    try:
        assert run_query(con, "SELECT count(*) FROM usage_events").rows == [(0,)]
        for query in ["DELETE FROM usage_events", "SELECT * FROM read_csv('/etc/passwd')", "SET threads = 8"]:
            with pytest.raises(QueryError):
                run_query(con, query)
    finally:
        con.close()


def test_timezone_setting_applies_to_every_query(start_daemon) -> None:
    """`spend_by_day` and ad-hoc SQL see days in the configured zone, not the cursor's default UTC."""
    daemon = start_daemon(timezone="America/New_York")
    with httpx.Client(base_url=daemon.url, headers={"Authorization": f"Bearer {daemon.token}"}) as c:
        assert sql(c, "SELECT current_setting('TimeZone')") == [["America/New_York"]]
        # 2026-01-02 03:00 UTC is still 2026-01-01 in New York.
        assert post_events(c, [make_event(ts=1767322800.0)]).status_code == 200
        assert sql(c, "SELECT CAST(day AS VARCHAR) FROM spend_by_day") == [["2026-01-01"]]
