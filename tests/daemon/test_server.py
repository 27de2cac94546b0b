"""Startup/shutdown wiring: background services hook, loopback check, lock conflict."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from costwatch.daemon.server import Daemon, DaemonCore, is_loopback, start_in_thread
from costwatch.settings import DaemonSettings

ROOT = Path(__file__).resolve().parents[2]


class Recorder:
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def start(self) -> None:
        self.log.append(f"start {self.name}")

    def shutdown(self) -> None:
        self.log.append(f"stop {self.name}")


def test_background_services_start_and_stop_in_order(tmp_path: Path) -> None:
    log: list[str] = []
    core = DaemonCore(DaemonSettings(state_dir=tmp_path, port=0))
    rules = Recorder(log, "rules")
    daemon = Daemon(core, rules=rules, services=[Recorder(log, "a"), Recorder(log, "b")])  # type: ignore[arg-type]
    assert daemon.rules is rules and daemon.killswitches is core.killswitches
    running = start_in_thread(daemon)
    try:
        assert log == ["start rules", "start a", "start b"]
    finally:
        running.stop()
    assert log == ["start rules", "start a", "start b", "stop b", "stop a", "stop rules"]


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10")


def test_second_daemon_on_same_file_fails_in_one_line(daemon, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSTWATCH_")}
    env.update(COSTWATCH_STATE_DIR=str(tmp_path), PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "costwatch.cli", "daemon", "--port", "0", "--host", "0.0.0.0"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert "not loopback" in lines[0]  # the non-loopback warning comes first
    assert lines[-1].startswith("costwatch: ") and "locked by another process" in lines[-1]
    assert "Traceback" not in result.stderr


def test_keep_alive_replies_are_not_delayed_by_nagle(daemon) -> None:
    """The listening socket must be IPPROTO_TCP so asyncio sets TCP_NODELAY (else ~40 ms per reply)."""
    import socket
    import time

    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as s:
        timings = []
        for _ in range(9):
            started = time.perf_counter()
            s.sendall(b"GET /v1/killswitch HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            data = b""
            while not data.endswith(b"}"):
                data += s.recv(65536)
            timings.append(time.perf_counter() - started)
    assert sorted(timings)[4] < 0.02, timings


def test_extra_routes_come_first(tmp_path: Path) -> None:
    import httpx
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def page(request: object) -> PlainTextResponse:
        return PlainTextResponse("spend page")

    core = DaemonCore(DaemonSettings(state_dir=tmp_path, port=0))
    running = start_in_thread(Daemon(core, routes=[Route("/", page)]))
    try:
        assert httpx.get(running.url + "/").text == "spend page"
        assert httpx.get(running.url + "/healthz").json()["status"] == "ok"
    finally:
        running.stop()
