"""Turning fleet mode on: nothing fleet-related is imported without a DSN, on any path; the CLI's
``--fleet`` commands go through the local daemon and stay light (no psycopg) with one."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from costwatch.daemon.server import RunningDaemon, build_daemon, start_in_thread
from costwatch.settings import DaemonSettings
from tests.daemon.test_cli_startup import HEAVY, _imported_modules
from tests.support.postgres import PostgresServer

ROOT = Path(__file__).resolve().parents[2]
FLEET_MODULES = ("psycopg", "psycopg_pool", "costwatch.daemon.fleet")


def test_a_daemon_without_a_dsn_imports_nothing_of_fleet_mode(tmp_path: Path) -> None:
    """The daemon as `costwatch daemon` builds it, every route exercised once, in a fresh interpreter."""
    code = textwrap.dedent(
        f"""
        import sys, httpx
        from costwatch.cli.parser import build_parser
        from costwatch.cli.settings import load_settings
        from costwatch.daemon.server import build_daemon, start_in_thread
        args = build_parser().parse_args(["daemon", "--port", "0", "--rules", {str(tmp_path / "none")!r}])
        settings = load_settings(args, rules=args.rules, fleet_dsn=args.fleet_dsn)
        assert settings.fleet_dsn is None
        d = start_in_thread(build_daemon(settings))
        h = {{"Authorization": "Bearer " + d.token}}
        for path in ("/", "/metrics", "/healthz", "/v1/status", "/v1/killswitch", "/v1/budgets"):
            httpx.get(d.url + path, headers=h).raise_for_status()
        httpx.post(d.url + "/v1/sql", headers=h, json={{"sql": "SELECT 1"}}).raise_for_status()
        assert httpx.post(d.url + "/v1/sql?fleet=1", headers=h, json={{"sql": "SELECT 1"}}).status_code == 409
        d.stop()
        print("LOADED", *[m for m in {FLEET_MODULES!r} if m in sys.modules])
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("COSTWATCH_")}
    env.update(COSTWATCH_STATE_DIR=str(tmp_path), PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["LOADED"], result.stdout


def test_dsn_from_env_config_and_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from costwatch.cli.parser import build_parser
    from costwatch.cli.settings import load_settings

    for key in list(os.environ):
        if key.upper().startswith("COSTWATCH_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("COSTWATCH_STATE_DIR", str(tmp_path))
    args = build_parser().parse_args(["daemon"])
    settings = load_settings(args, fleet_dsn=args.fleet_dsn)
    assert settings.fleet_dsn is None
    assert settings.node  # the host name by default
    config = tmp_path / "config.toml"
    config.write_text("fleet_dsn = 'host=db-from-config'\nnode = 'n-config'\n")
    monkeypatch.setenv("COSTWATCH_CONFIG", str(config))
    settings = load_settings(args, fleet_dsn=args.fleet_dsn)
    assert (settings.fleet_dsn, settings.node) == ("host=db-from-config", "n-config")
    monkeypatch.setenv("COSTWATCH_FLEET_DSN", "host=db-from-env")
    monkeypatch.setenv("COSTWATCH_NODE", "n-env")
    settings = load_settings(args, fleet_dsn=args.fleet_dsn)
    assert (settings.fleet_dsn, settings.node) == ("host=db-from-env", "n-env")
    args = build_parser().parse_args(["daemon", "--fleet-dsn", "host=db-from-flag"])
    settings = load_settings(args, fleet_dsn=args.fleet_dsn)
    assert settings.fleet_dsn == "host=db-from-flag"
    assert "db-from" not in repr(settings)  # a DSN may hold a password


@pytest.fixture
def fleet_daemon(postgres: PostgresServer, tmp_path: Path) -> Iterator[RunningDaemon]:
    settings = DaemonSettings(
        state_dir=tmp_path, port=0, rules=tmp_path / "no-rules", fleet_dsn=postgres.dsn, node="cli-node"
    )
    daemon = start_in_thread(build_daemon(settings))
    yield daemon
    daemon.stop()


def test_cli_fleet_commands_go_through_the_daemon_and_stay_light(
    fleet_daemon: RunningDaemon, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("COSTWATCH_")}
    env.update(COSTWATCH_STATE_DIR=str(tmp_path), COSTWATCH_URL=fleet_daemon.url, PYTHONPATH=str(ROOT))
    outputs = []
    for args in (
        ("kill", "--fleet", "--scope", "app=svc", "--reason", "fleet stop"),
        ("status",),
        (
            "sql",
            "--fleet",
            "--format",
            "csv",
            "SELECT scope->>'app' AS app, reason FROM costwatch.killswitches",
        ),
        ("resume", "--fleet", "--scope", "app=svc"),
    ):
        modules, result = _imported_modules(env, *args)
        assert result.returncode == 0, result.stderr
        # `sql` prints CSV with the local path's writer (it imports duckdb, as without --fleet).
        heavy = FLEET_MODULES if args[0] == "sql" else (*HEAVY, *FLEET_MODULES)
        assert not [m for m in heavy if m in modules], (args, [m for m in heavy if m in modules])
        outputs.append(result.stdout)
    assert "FLEET kill switch engaged" in outputs[0]
    assert "fleet: node cli-node, ledger connected; replication lag 0 events" in outputs[1]
    assert "kill switch ENGAGED: scope app=svc" in outputs[1]
    assert outputs[2] == "app,reason\nsvc,fleet stop\n"
    assert "lifted 1 FLEET kill switch(es)" in outputs[3]
    assert fleet_daemon.daemon.killswitches.state().engaged == []


def _documented_setup() -> tuple[list[str], list[str]]:
    """docs/fleet.md A6's SQL: (before the first daemon, after it), passwords filled in."""
    import re

    text = (ROOT / "docs" / "fleet.md").read_text()
    block = re.search(r"## A6\..*?```sql\n(.*?)```", text, re.S).group(1)  # type: ignore[union-attr]
    before, after = block.split("-- after the first daemon")
    after = after.split("\n", 1)[1]

    def statements(sql: str) -> list[str]:
        lines = [line.split("--")[0] for line in sql.splitlines()]
        return [s.strip().replace("'…'", "'pw'") for s in "\n".join(lines).split(";") if s.strip()]

    return statements(before), statements(after)


def test_the_documented_roles_work(postgres: PostgresServer, tmp_path: Path) -> None:
    """Set up as docs/fleet.md says: the writer role runs the daemon, the reader answers fleet SQL."""
    import httpx
    import psycopg

    before, after = _documented_setup()
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        for statement in before:
            conn.execute(statement)  # type: ignore[arg-type]
    writer = postgres.dsn_for("costwatch_writer", "costwatch")
    settings = DaemonSettings(state_dir=tmp_path / "w", port=0, fleet_dsn=writer, node="documented")
    daemon = start_in_thread(build_daemon(settings, rules=False, leases=False, spend_page=False))
    try:
        assert daemon.daemon.fleet.ledger_id is not None  # the writer created and migrated the schema
    finally:
        daemon.stop()
    with psycopg.connect(postgres.dsn_for("postgres", "costwatch"), autocommit=True) as conn:
        for statement in after:
            conn.execute(statement)  # type: ignore[arg-type]
    reader = postgres.dsn_for("costwatch_reader", "costwatch")
    settings = DaemonSettings(
        state_dir=tmp_path / "w", port=0, fleet_dsn=writer, fleet_sql_dsn=reader, node="documented"
    )
    daemon = start_in_thread(build_daemon(settings, rules=False, leases=False, spend_page=False))
    try:
        h = {"Authorization": f"Bearer {daemon.token}"}
        event = '[{"id": "0193a1b2-0000-7000-8000-000000000001", "call_id": "c", "ts_start": 1764806400.0,'
        event += ' "ts_end": 1764806401.0, "provider": "openai", "operation": "chat", "app": "docs",'
        event += (
            ' "model": "gpt-4o-mini", "usage_source": "provider", "input_tokens": 10, "output_tokens": 2}]'
        )
        assert httpx.post(daemon.url + "/v1/events", headers=h, content=event).status_code == 200
        deadline = time.monotonic() + 15
        while daemon.daemon.fleet.replicator.measure_lag().lag_events:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # A partition created after the grants (this event's month) is readable through the parent.
        rows = httpx.post(
            daemon.url + "/v1/sql?fleet=1",
            headers=h,
            json={"sql": "SELECT app, node FROM costwatch.usage_events"},
        ).json()["rows"]
        assert rows == [["docs", "documented"]]
        who = httpx.post(
            daemon.url + "/v1/sql?fleet=1", headers=h, json={"sql": "SELECT current_user"}
        ).json()["rows"]
        assert who == [["costwatch_reader"]]
    finally:
        daemon.stop()


def test_apps_never_import_fleet_modules(tmp_path: Path) -> None:
    code = "import sys, costwatch.autoinstrument, costwatch; print('LOADED', *[m for m in %r if m in sys.modules])"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("COSTWATCH_")}
    env.update(COSTWATCH_STATE_DIR=str(tmp_path), PYTHONPATH=str(ROOT), COSTWATCH_FLEET_DSN="host=never-used")
    result = subprocess.run(
        [sys.executable, "-c", code % (FLEET_MODULES,)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["LOADED"], result.stdout
