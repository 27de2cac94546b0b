"""Disk full, a read-only database, a database locked by another process: the daemon says so clearly
(one line and a non-zero exit at startup, or /healthz + metrics while running), keeps what it
acknowledged and leaves a file DuckDB opens with every acknowledged row in it.

Disk full and read-only use a small tmpfs (needs root / CAP_SYS_ADMIN; skipped with the reason
otherwise): as root, file permissions alone would not stop the daemon.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import httpx
import pytest

from costwatch.events import encode_many
from tests.daemon.conftest import make_event
from tests.support.processes import ROOT, DaemonProcess, clean_env, free_port

pytestmark = pytest.mark.slow


def _mount(target: Path, options: str) -> None:
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], check=True, capture_output=True
    )


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    target = tmp_path / "fs"
    target.mkdir()
    try:
        _mount(target, "size=3m")
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {exc}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def _daemon_cmd(state: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "costwatch.cli",
        "daemon",
        "--db",
        str(state / "costwatch.duckdb"),
        "--port",
        str(port),
    ]


def _stored_ids(db: Path) -> set[str]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {r[0] for r in con.execute("SELECT id FROM usage_events").fetchall()}
    finally:
        con.close()


def test_disk_full_refuses_with_503_keeps_acknowledged_rows(small_fs: Path, tmp_path: Path) -> None:
    state = small_fs / "state"
    daemon = DaemonProcess(state)
    acknowledged: set[str] = set()
    statuses: dict[int, int] = {}
    errors: set[str] = set()
    try:
        daemon.start()
        health = httpx.get(daemon.url + "/healthz", timeout=5)
        assert health.status_code == 503 and any("disk almost full" in r for r in health.json()["reasons"])
        with daemon.client() as client:
            for _ in range(400):  # until the 3 MB are gone and then some
                events = [make_event(input_tokens=1, output_tokens=1, user="u" * 200) for _ in range(200)]
                r = client.post("/v1/events", content=encode_many(events))
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    acknowledged.update(e.id for e in events)
                else:
                    errors.add(r.json()["error"])
                if statuses.get(503, 0) >= 5:
                    break
            assert statuses.get(503, 0) >= 5, statuses  # the disk did fill up
            assert all(e.startswith("could not store the events") for e in errors), errors
            health = httpx.get(daemon.url + "/healthz", timeout=5).json()
            assert health["status"] == "degraded"
            assert any(r.startswith("last commit failed") for r in health["reasons"]), health
            metrics = httpx.get(daemon.url + "/metrics", timeout=5).text
            assert "\ncostwatch_store_healthy 0.0\n" in metrics
            # The daemon still serves reads while the disk is full.
            assert daemon.sql("SELECT count(*) AS n FROM usage_events")[0]["n"] == len(acknowledged)
        daemon.stop()
    finally:
        daemon.stop()
    # Give it room again: the file opens and holds exactly what was acknowledged.
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True)
    assert acknowledged and _stored_ids(daemon.db) == acknowledged
    print(f"\ndisk full: {len(acknowledged)} events acknowledged and kept, replies {statuses}")


def test_read_only_database_fails_at_startup_in_one_line(small_fs: Path) -> None:
    state = small_fs / "state"
    daemon = DaemonProcess(state)
    try:
        daemon.start()
        with daemon.client() as client:
            events = [make_event() for _ in range(10)]
            assert client.post("/v1/events", content=encode_many(events)).status_code == 200
    finally:
        daemon.stop()
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    result = subprocess.run(
        _daemon_cmd(state, free_port()),
        env=clean_env(COSTWATCH_STATE_DIR=str(state)),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(ROOT),
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("costwatch: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "read-only" in lines[0].lower() or "cannot open" in lines[0], lines
    print(f"\nread-only startup: {lines[0]}")
    subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
    assert _stored_ids(daemon.db) == {e.id for e in events}


HOLDER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("holding", flush=True)
time.sleep(60)
"""


def test_db_locked_by_another_process_fails_at_startup_in_one_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    daemon = DaemonProcess(state)
    try:
        daemon.start()
        with daemon.client() as client:
            events = [make_event() for _ in range(5)]
            assert client.post("/v1/events", content=encode_many(events)).status_code == 200
    finally:
        daemon.stop()
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLDER), str(daemon.db)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        started = time.monotonic()
        result = subprocess.run(
            _daemon_cmd(state, free_port()),
            env=clean_env(COSTWATCH_STATE_DIR=str(state)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert time.monotonic() - started < 30
    finally:
        holder.kill()
        holder.wait(10)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("costwatch: ") and "locked by another process" in lines[0]
    print(f"\nlocked startup: {lines[0]}")
    assert _stored_ids(daemon.db) == {e.id for e in events}
