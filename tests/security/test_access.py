"""No one in where they don't belong: the token on every write and SQL route, loopback by default,
the SQL sandbox against the escapes tests/daemon/test_sql.py does not list, `costwatch sql` too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.routing import BaseRoute, Mount, Route

from costwatch.daemon.server import Daemon, DaemonCore, build_daemon
from costwatch.events import encode_many
from costwatch.settings import DEFAULT_HOST, DaemonSettings
from tests.daemon.conftest import make_event
from tests.security.conftest import InProcess, in_process_daemon
from tests.support.processes import ROOT, DaemonProcess, clean_env, free_port

# Reads anyone on the host may do (documented in docs/api.md); everything else needs the token.
PUBLIC = {
    ("GET", "/"),
    ("HEAD", "/"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/v1/killswitch"),
    ("GET", "/spend-page/queries.json"),
}


@pytest.fixture(scope="module")
def full_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    """The daemon's app as `costwatch daemon` builds it (services, leases and spend-page routes)."""
    state = tmp_path_factory.mktemp("access")
    d = in_process_daemon(state)
    d.daemon.close()  # rebuild with the CLI's extra routes, on the same state dir
    settings = DaemonSettings(state_dir=state, port=0)
    daemon = build_daemon(settings)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=daemon.app), base_url="http://127.0.0.1:7707"
    )
    full = InProcess(daemon, d.loop, client)
    try:
        yield full
    finally:
        full.loop.run_until_complete(client.aclose())
        full.loop.close()
        daemon.close()


def _routes(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str]]:
    for route in routes:
        if isinstance(route, Route):
            for method in sorted(route.methods or {"GET"}):
                yield method, prefix + route.path
        elif isinstance(route, Mount):
            yield "GET", prefix + route.path + "/{path}"  # static files: read-only by construction


def test_every_write_and_sql_route_refuses_missing_or_wrong_token(full_app: InProcess) -> None:
    routes = sorted(set(_routes(full_app.daemon.app.routes)))
    public = PUBLIC | {("HEAD", p) for _, p in PUBLIC}
    guarded = [(m, p) for m, p in routes if (m, p) not in public and not p.startswith("/spend-page/{")]
    writes = {(m, p) for m, p in guarded if m not in ("GET", "HEAD")}
    # The ones that matter most must be in the enumeration (a renamed route must not slip out).
    assert {("POST", "/v1/events"), ("POST", "/v1/sql"), ("POST", "/v1/killswitch"),
            ("POST", "/v1/admin/export"), ("POST", "/v1/admin/reprice")} <= writes  # fmt: skip
    before = full_app.rows()
    for method, path in guarded:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic " + full_app.daemon.token},
                        {"Authorization": "Bearer " + full_app.daemon.token + "x"}):  # fmt: skip
            body = encode_many([make_event()]) if path == "/v1/events" else b'{"sql": "SELECT 1"}'
            r = full_app.call(method, path, headers=headers, content=body if method == "POST" else None)
            assert r.status_code == 401, (method, path, headers, r.status_code, r.text)
            assert r.headers.get("www-authenticate") == "Bearer"
    assert full_app.rows() == before
    # Static files are read-only: no method but GET/HEAD gets through.
    r = full_app.call("POST", "/spend-page/index.html", content=b"x")
    assert r.status_code in (404, 405)


def test_every_route_refuses_a_rebinding_host(full_app: InProcess) -> None:
    """DNS rebinding: a page on evil.example resolved to 127.0.0.1 sends its own name as Host.

    Even with the right token (a page could not have it, but the check must not depend on that)
    no route answers, reads or writes: 421 and one JSON line naming the host and the setting.
    """
    routes = sorted(set(_routes(full_app.daemon.app.routes)))
    assert {("GET", "/metrics"), ("GET", "/healthz"), ("GET", "/v1/killswitch"), ("GET", "/"),
            ("POST", "/v1/events"), ("POST", "/v1/killswitch")} <= set(routes)  # fmt: skip
    before = full_app.rows()
    auth = {"Authorization": "Bearer " + full_app.daemon.token}
    for host in (
        "evil.example:7707",
        "evil.example",
        "127.0.0.1.evil.example",
        "localhost.evil.example:7707",
    ):
        for method, path in routes:
            url = path.replace("{path}", "index.html")
            if path == "/v1/events":
                body = encode_many([make_event()])
            elif path == "/v1/killswitch":
                body = b'{"action": "engage", "reason": "rebinding"}'
            else:
                body = b'{"sql": "SELECT 1"}'
            r = full_app.call(
                method, url, headers={**auth, "Host": host}, content=body if method == "POST" else None
            )
            assert r.status_code == 421, (host, method, path, r.status_code, r.text)
            if method == "HEAD":
                continue
            error = r.json()["error"]
            assert repr(host) in error and "COSTWATCH_ALLOWED_HOSTS" in error and "\n" not in error
    assert full_app.rows() == before
    assert full_app.call("GET", "/v1/killswitch").json()["engaged"] == []
    # The same requests addressed to loopback names are answered.
    for host in ("127.0.0.1:7707", "localhost:7707", "[::1]:7707"):
        assert full_app.call("GET", "/metrics", headers={"Host": host}).status_code == 200
        assert full_app.call("GET", "/", headers={"Host": host}).status_code == 200


def test_public_routes_take_no_writes(full_app: InProcess) -> None:
    for method, path in PUBLIC:
        if method != "GET":
            continue
        r = full_app.call("POST", path, content=b"{}")
        assert r.status_code == 405 or r.status_code == 401, (path, r.status_code)


def test_defaults_are_loopback() -> None:
    assert DEFAULT_HOST == "127.0.0.1"
    assert DaemonSettings(state_dir=Path("/nonexistent")).host == "127.0.0.1"


@pytest.mark.slow
def test_non_loopback_bind_warns_and_still_needs_the_token(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path / "state", "--host", "0.0.0.0")
    try:
        daemon.start()
        log = daemon.log.read_text()
        assert "warning: listening on 0.0.0.0, not loopback" in log
        assert "need allowed_hosts (COSTWATCH_ALLOWED_HOSTS)" in log  # the Host check's setting
        r = httpx.post(daemon.url + "/v1/events", content=encode_many([make_event()]), timeout=10)
        assert r.status_code == 401
        r = httpx.post(daemon.url + "/v1/sql", json={"sql": "SELECT 1"}, timeout=10)
        assert r.status_code == 401
        assert (daemon.state_dir / "token").stat().st_mode & 0o777 == 0o600
    finally:
        daemon.stop()


# -- SQL: what tests/daemon/test_sql.py::ESCAPES does not already cover --------------------------------
MORE_ESCAPES = [
    "SELECT getenv('HOME')",
    "SELECT * FROM read_blob('/etc/passwd')",
    "SELECT * FROM read_json_auto('/etc/hostname')",
    "SELECT * FROM sniff_csv('/etc/passwd')",
    "SELECT * FROM parquet_metadata('/etc/passwd')",
    "SELECT * FROM duckdb_secrets()",
    "SELECT * FROM which_secret('s3://bucket/x', 's3')",
    "CREATE SECRET s (TYPE s3, KEY_ID 'x', SECRET 'y')",
    "RESET enable_external_access",
    "SET GLOBAL enable_external_access = true",
    "SELECT 1; SET enable_external_access = true",
    "PRAGMA threads = 64",
    "CALL duckdb_settings()",
    "FORCE INSTALL httpfs",
    "IMPORT DATABASE '/tmp'",
    "CREATE MACRO evil(x) AS x",
    "CREATE TEMP TABLE t AS SELECT 1",
    "SELECT * FROM read_csv('/proc/self/environ')",
    "SELECT * FROM 'file:///etc/passwd'",
    "SELECT * FROM read_parquet(['/etc/passwd'])",
    "EXPLAIN ANALYZE COPY usage_events TO '/tmp/cw-escape.csv'",
    "SELECT * FROM glob('/root/*')",
]


def test_more_sql_escapes_refused(asgi_daemon: InProcess) -> None:
    d = asgi_daemon
    d.call("POST", "/v1/events", content=encode_many([make_event(input_tokens=5) for _ in range(2)]))
    rows = d.rows()
    for query in MORE_ESCAPES:
        r = d.call("POST", "/v1/sql", json={"sql": query})
        assert r.status_code == 400, (query, r.text)
        error = r.json()["error"]
        assert error and "\n" not in error
    assert d.rows() == rows
    assert d.scalar("SELECT count(*) FROM duckdb_tables() WHERE temporary") == 0
    assert d.scalar("SELECT current_setting('enable_external_access')") is False
    assert not Path("/tmp/cw-escape.csv").exists()


def test_duckdb_settings_leak_no_secret(asgi_daemon: InProcess) -> None:
    """`duckdb_settings()` is readable (harmless paths and limits) but carries no token or key."""
    r = asgi_daemon.call("POST", "/v1/sql", json={"sql": "SELECT name, value FROM duckdb_settings()"})
    assert r.status_code == 200
    text = r.text
    assert asgi_daemon.daemon.token not in text
    assert "sk-" not in text and "Bearer" not in text


CLI_ESCAPES = [
    "DROP TABLE usage_events",
    "COPY usage_events TO '/tmp/cw-cli-escape.csv'",
    "ATTACH '/tmp/cw-cli-escape.duckdb' AS evil",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT 1; DELETE FROM usage_events",
    "INSTALL httpfs",
    "SET enable_external_access = true",
]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "costwatch.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.slow
def test_costwatch_sql_cli_is_sandboxed_with_and_without_daemon(tmp_path: Path) -> None:
    state = tmp_path / "state"
    daemon = DaemonProcess(state, port=free_port())
    env = clean_env(COSTWATCH_STATE_DIR=str(state), COSTWATCH_URL=daemon.url)
    try:
        daemon.start()
        with daemon.client() as c:
            assert (
                c.post("/v1/events", content=encode_many([make_event() for _ in range(3)])).status_code == 200
            )
        for query in CLI_ESCAPES:  # through the running daemon
            out = _cli(env, "sql", query)
            assert out.returncode == 1 and out.stderr.startswith("costwatch: "), (query, out.stderr)
            assert "Traceback" not in out.stderr
    finally:
        daemon.stop()
    db = str(daemon.db)
    for query in CLI_ESCAPES:  # the file opened directly, read-only
        out = _cli(env, "sql", query, "--db", db)
        assert out.returncode == 1 and "Traceback" not in out.stderr, (query, out.stderr)
    count = _cli(env, "sql", "SELECT count(*) AS n FROM usage_events", "--db", db, "--format", "json")
    assert json.loads(count.stdout) == [{"n": 3}]
    assert not Path("/tmp/cw-cli-escape.csv").exists() and not Path("/tmp/cw-cli-escape.duckdb").exists()


def test_token_file_created_0600_by_a_fresh_daemon(tmp_path: Path) -> None:
    """(tests/daemon/test_ingest.py::test_token_file_is_private checks the in-thread daemon.)"""
    old = os.umask(0)  # even a permissive umask must not widen it
    try:
        daemon = Daemon(DaemonCore(DaemonSettings(state_dir=tmp_path / "s", port=0)))
        daemon.close()
    finally:
        os.umask(old)
    assert (tmp_path / "s" / "token").stat().st_mode & 0o777 == 0o600
    assert time.time() > 0 and ROOT.exists()
