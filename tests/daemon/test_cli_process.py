"""`costwatch daemon` as a real subprocess stopped by SIGTERM, and the CLI with and without it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from costwatch.events import encode_many
from tests.daemon.conftest import make_event

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("COSTWATCH_")}
    # As README says: the daemon gets --port, every client COSTWATCH_URL.
    e.update(COSTWATCH_STATE_DIR=str(tmp_path), COSTWATCH_URL=f"http://127.0.0.1:{_free_port()}")
    e["PYTHONPATH"] = str(ROOT)
    return e


def _port(env: dict[str, str]) -> str:
    return env["COSTWATCH_URL"].rsplit(":", 1)[1]


def cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "costwatch.cli", *args],
        env=env,
        cwd=env["COSTWATCH_STATE_DIR"],  # not the repo: its ./alerts would be loaded as rules
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def daemon_proc(env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    log = tmp_path / "daemon.log"  # a file, not a pipe nobody reads (a full pipe would block the daemon)
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "costwatch.cli",
                "daemon",
                "--db",
                str(tmp_path / "cw.duckdb"),
                "--port",
                _port(env),
            ],
            env=env,
            cwd=tmp_path,
            stdout=sink,
            stderr=sink,
            text=True,
        )
    url = env["COSTWATCH_URL"]
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=0.5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"daemon did not start: {log.read_text()}")
        time.sleep(0.05)
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_daemon_process_lifecycle(env: dict[str, str], tmp_path: Path, daemon_proc) -> None:
    url = env["COSTWATCH_URL"]
    token = (tmp_path / "token").read_text().strip()
    assert (tmp_path / "token").stat().st_mode & 0o777 == 0o600
    events = [
        make_event(input_tokens=1000, output_tokens=100, ts=1_767_225_600.0 + i * 3600) for i in range(30)
    ]
    r = httpx.post(
        url + "/v1/events", content=encode_many(events), headers={"Authorization": f"Bearer {token}"}
    )
    assert r.json()["accepted"] == 30

    # `costwatch sql` goes through the running daemon (it holds the file lock); with --db naming the
    # file that daemon serves, too (and says so).
    out = cli(
        env, "sql", "SELECT count(*) AS n, sum(input_tokens) AS t FROM usage_events", "--format", "json"
    )
    assert json.loads(out.stdout) == [{"n": 30, "t": 30_000}]
    out = cli(
        env,
        "sql",
        "SELECT count(*) AS n FROM usage_events",
        "--db",
        str(tmp_path / "cw.duckdb"),
        "--format",
        "csv",
    )
    assert out.stdout == "n\n30\n"
    assert f"served by the daemon at {url}" in out.stderr
    bad = cli(env, "sql", "DELETE FROM usage_events", check=False)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr

    cli(env, "kill", "--scope", "app=test-app", "--reason", "runaway loop", "--for", "1h")
    status = cli(env, "status").stdout
    assert f"daemon: running at {url}" in status and "events stored: 30" in status
    assert f"database: {tmp_path / 'cw.duckdb'}" in status
    assert "estimated usage: 0 events ($0.00 of this month's spend)" in status
    assert "ENGAGED: scope app=test-app" in status and "runaway loop" in status
    export_dir = tmp_path / "export-live"
    cli(env, "export", "--parquet", str(export_dir))
    assert len(list(export_dir.glob("date=*/usage_events.parquet"))) == 2
    assert "repriced 30 events" in cli(env, "reprice", "--since", "2025-12-31").stdout

    daemon_proc.send_signal(signal.SIGTERM)
    assert daemon_proc.wait(timeout=20) == 0

    # The file reopens; the data and the kill switch survived; the CLI reads the file directly.
    db = str(tmp_path / "cw.duckdb")
    out = cli(
        env,
        "sql",
        "SELECT count(*) AS n, sum(cost_usd) > 0 AS priced FROM usage_events",
        "--db",
        db,
        "--format",
        "json",
    )
    assert json.loads(out.stdout) == [{"n": 30, "priced": True}]
    assert f"offline: read {db} directly" in out.stderr
    status = cli(env, "status", "--db", str(tmp_path / "cw.duckdb")).stdout
    assert f"daemon: not consulted (offline read of {db})" in status and "runaway loop" in status
    relative = cli(env, "status", "--db", "cw.duckdb").stdout  # the CLI runs in tmp_path: shown absolute
    assert f"daemon: not consulted (offline read of {db})" in relative
    assert "estimated usage: 0 events" in status  # the file's summary has it too
    # Without --db nothing falls back to the file: the daemon is down, and the commands say so.
    for args in (
        ("status",),
        ("sql", "SELECT 1"),
        ("export", "--parquet", str(tmp_path / "x")),
        ("reprice",),
    ):
        down = cli(env, *args, check=False)
        assert down.returncode == 1 and f"no daemon answered at {url}" in down.stderr, (args, down.stderr)
        assert down.stderr.count("\n") == 1 and "Traceback" not in down.stderr
    export_dir = tmp_path / "export"
    cli(env, "export", "--parquet", str(export_dir), "--db", str(tmp_path / "cw.duckdb"))
    files = sorted(export_dir.glob("date=*/usage_events.parquet"))
    assert [f.parent.name for f in files] == ["date=2026-01-01", "date=2026-01-02"]
    assert sum(pq.read_table(f).num_rows for f in files) == 30
    assert "repriced 30 events (30 priced)" in cli(env, "reprice", "--db", db).stdout  # directly on the file
    resumed = cli(env, "resume", "--scope", "app=test-app", "--db", str(tmp_path / "cw.duckdb"))
    assert "lifted 1" in resumed.stdout
    offline = cli(env, "kill", "--reason", "offline stop", "--db", db)  # daemon down: written to the file
    assert (
        f"engaged in {db}" in offline.stdout and "apps learn it only once a daemon serves" in offline.stdout
    )
    assert "ENGAGED: scope global" in cli(env, "status", "--db", db).stdout
    assert "lifted 1" in cli(env, "resume", "--all", "--db", db).stdout


def test_sql_without_daemon_and_errors(env: dict[str, str], tmp_path: Path) -> None:
    missing = cli(env, "sql", "SELECT 1", "--db", str(tmp_path / "none.duckdb"), check=False)
    assert missing.returncode == 1 and "no database" in missing.stderr and "Traceback" not in missing.stderr
    invalid = cli(env, "daemon", "--port", "99999", check=False)
    assert invalid.returncode == 2 and "port" in invalid.stderr and invalid.stderr.count("\n") == 1
    usage = cli(env, "kill", "--scope", "nonsense", "--reason", "x", check=False)
    assert usage.returncode == 2 and "KEY=VALUE" in usage.stderr


def test_acknowledged_events_survive_sigkill(env: dict[str, str], tmp_path: Path, daemon_proc) -> None:
    """A 2xx means committed: kill -9 right after the reply loses nothing (the WAL replays)."""
    url = env["COSTWATCH_URL"]
    headers = {"Authorization": f"Bearer {(tmp_path / 'token').read_text().strip()}"}
    accepted = 0
    for _ in range(5):
        events = [make_event(input_tokens=7, output_tokens=1) for _ in range(500)]
        accepted += httpx.post(url + "/v1/events", content=encode_many(events), headers=headers).json()[
            "accepted"
        ]
    daemon_proc.kill()
    daemon_proc.wait(timeout=10)
    db = str(tmp_path / "cw.duckdb")
    out = cli(
        env,
        "sql",
        "SELECT count(*) AS n, sum(input_tokens) AS t FROM usage_events",
        "--db",
        db,
        "--format",
        "json",
    )
    assert json.loads(out.stdout) == [{"n": accepted, "t": 7 * accepted}] and accepted == 2500


def test_invalid_settings_from_env_and_config_file(env: dict[str, str], tmp_path: Path) -> None:
    bad_env = cli({**env, "COSTWATCH_SQL_TIMEOUT_S": "-1"}, "daemon", check=False)
    assert bad_env.returncode == 2 and "sql_timeout_s" in bad_env.stderr and bad_env.stderr.count("\n") == 1
    config = tmp_path / "cw.toml"
    config.write_text('max_batch_events = "lots"\n')
    bad_file = cli(env, "daemon", "--config", str(config), check=False)
    assert bad_file.returncode == 2 and "max_batch_events" in bad_file.stderr
    config.write_text("no_such_setting = 1\n")
    unknown = cli(env, "daemon", "--config", str(config), check=False)
    assert unknown.returncode == 2 and "no_such_setting" in unknown.stderr
