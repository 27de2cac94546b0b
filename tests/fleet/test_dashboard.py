"""dashboards/costwatch-fleet-ledger.json: every query runs on the real ledger, as the read-only role,
after the substitutions Grafana's PostgreSQL data source makes ($__timeFilter, $__timeGroupAlias,
multi-value variables), and the spend it shows is the spend the daemons recorded."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.fleet.test_replication import Node, _wait
from tests.support.postgres import PostgresServer

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "costwatch-fleet-ledger.json"
INTERVAL_S = 3600


def panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def _quoted(values: list[str]) -> str:
    return ",".join("'" + v.replace("'", "''") + "'" for v in values)


def render(sql: str, variables: dict[str, list[str] | str], start: datetime, end: datetime) -> str:
    """What Grafana sends: variables interpolated (multi-value: quoted, comma-separated), then macros."""
    for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        sql = sql.replace(f"${name}", value if isinstance(value, str) else _quoted(value))
    sql = sql.replace("$__interval", f"{INTERVAL_S}s")
    sql = re.sub(
        r"\$__timeFilter\((\w+)\)",
        lambda m: f"{m.group(1)} BETWEEN '{start.isoformat()}' AND '{end.isoformat()}'",
        sql,
    )
    sql = re.sub(
        r"\$__timeGroupAlias\((\w+),\s*\d+s\)",
        lambda m: f'floor(extract(epoch from {m.group(1)})/{INTERVAL_S})*{INTERVAL_S} AS "time"',
        sql,
    )
    assert "$" not in sql, sql
    return sql


@pytest.fixture(scope="module")
def ledger(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    a = Node(postgres, tmp_path_factory.mktemp("dash-a"), "dash-a").start()
    b = Node(postgres, tmp_path_factory.mktemp("dash-b"), "dash-b").start()
    try:
        a.post(40, user="ann", model="gpt-4o-mini")
        a.post(10, user="bob", model="gpt-4o")
        b.post(30, user="ann", model="gpt-4o")
        _wait(lambda: a.replicated() == 50 and b.replicated() == 30, what="replication")
        assert a.client is not None
        a.client.post(
            "/v1/killswitch?fleet=1", json={"action": "engage", "reason": "dash", "scope": {"app": "app-1"}}
        )
        with psycopg.connect(postgres.dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO costwatch.budgets VALUES ('cap', 'global', 'd', 10, 'usd', now()) ON CONFLICT DO NOTHING"
            )
            conn.execute(
                "INSERT INTO costwatch.budget_slices VALUES ('cap', 'global', 'd', 'dash-a', 2, 1,"
                " now() + interval '1 min', now()) ON CONFLICT DO NOTHING"
            )
            for statement in (
                "DO $$ BEGIN CREATE ROLE costwatch_reader LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
                "GRANT USAGE ON SCHEMA costwatch TO costwatch_reader",
                "GRANT SELECT ON ALL TABLES IN SCHEMA costwatch TO costwatch_reader",
            ):
                conn.execute(statement)  # type: ignore[arg-type]
            expected = conn.execute("SELECT sum(cost_usd), count(*) FROM costwatch.usage_events").fetchone()
        yield {"usd": expected[0], "calls": expected[1]}  # type: ignore[index]
    finally:
        b.stop()
        a.stop()


def _variables(conn: psycopg.Connection, **chosen: list[str] | str) -> dict[str, list[str] | str]:
    """Each query variable's options, from its own query (the 'All' selection), then overrides."""
    out: dict[str, list[str] | str] = {}
    for var in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        if var["type"] == "query":
            out[var["name"]] = [r[0] for r in conn.execute(var["query"]).fetchall()]
        elif var["type"] == "textbox":
            out[var["name"]] = ""
    out.update(chosen)
    return out


def test_every_panel_query_runs_as_the_reader(ledger: dict[str, Any], postgres: PostgresServer) -> None:
    now = datetime.now(timezone.utc)
    start, end = now - timedelta(days=1), now + timedelta(minutes=1)
    with psycopg.connect(postgres.dsn_for("costwatch_reader"), autocommit=True) as conn:
        variables = _variables(conn)
        assert set(variables["node"]) >= {"dash-a", "dash-b"}
        results: dict[str, tuple[list[str], list[tuple[Any, ...]]]] = {}
        for panel in panels():
            (target,) = panel["targets"]
            assert target["datasource"]["type"] == "grafana-postgresql-datasource"
            cur = conn.execute(render(target["rawSql"], variables, start, end))  # type: ignore[arg-type]
            columns = [d.name for d in cur.description or []]
            rows = cur.fetchall()
            assert rows, panel["title"]
            if target["format"] == "time_series":
                assert columns[:2] == ["time", "metric"], panel["title"]
            results[panel["title"]] = (columns, rows)
    assert results["Spend"][1][0][0] == pytest.approx(ledger["usd"])
    assert results["Calls"][1][0][0] == ledger["calls"]
    by_node = {}
    for _, node, usd in results["Spend by node"][1]:
        by_node[node] = by_node.get(node, 0) + usd
    assert sum(by_node.values()) == pytest.approx(ledger["usd"])
    users = {r[0]: r[2] for r in results["Top users"][1]}
    assert users == {"ann": 70, "bob": 10}
    assert [r[0] for r in results["Replication"][1]][:2] == ["dash-a", "dash-b"]
    assert results["Fleet kill switches engaged"][1][0][1] == "dash"
    assert results["Fleet hard budgets"][1][0][:6] == ("cap", "global", "d", 10.0, 1.0, 2.0)


def test_filters_narrow_the_spend(ledger: dict[str, Any], postgres: PostgresServer) -> None:
    now = datetime.now(timezone.utc)
    spend = next(p for p in panels() if p["title"] == "Calls")["targets"][0]["rawSql"]
    with psycopg.connect(postgres.dsn_for("costwatch_reader"), autocommit=True) as conn:
        calls = {}
        for label, chosen in {
            "node": {"node": ["dash-b"]},
            "user": {"user": "bob"},
            "model": {"model": ["gpt-4o"]},
        }.items():
            sql = render(
                spend, _variables(conn, **chosen), now - timedelta(days=1), now + timedelta(minutes=1)
            )
            calls[label] = conn.execute(sql).fetchone()[0]  # type: ignore[index,arg-type]
    assert calls == {"node": 30, "user": 10, "model": 40}
